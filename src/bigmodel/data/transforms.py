"""Image transforms in torch on one ``(C, H, W)`` float tensor, random ones drawn from the example RNG.

Each random transform takes the ``numpy.random.Generator`` the loop gives ``task.encode`` for that
example (seeded from (seed, epoch, index)), so augmentation is reproducible and resumes exactly.
torchvision is not a dependency (no CPU build for this torch); these follow its conventions
(bilinear resizing with antialiasing, zero padding for random crops, jitter factors drawn uniformly
from [1 - s, 1 + s]).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, *size)``, ``bilinear`` or ``bicubic`` with antialiasing (a no-op at the
    same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x[None], size=tuple(size), mode=interpolation, antialias=True, align_corners=False)[0]
    return out.clamp(0, 1) if interpolation == "bicubic" else out  # bicubic overshoots at edges


def resize_shorter(x: torch.Tensor, shorter: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Scale so the shorter side is ``shorter`` pixels, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    scale = shorter / min(h, w)
    return resize(x, (max(1, round(h * scale)), max(1, round(w * scale))), interpolation)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred ``size`` window (zero-padded first where the image is smaller)."""
    x = _pad_to(x, size)
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[:, top : top + size[0], left : left + size[1]]


def random_crop(
    x: torch.Tensor, size: tuple[int, int], padding: int, rng: np.random.Generator
) -> torch.Tensor:
    """Pad every side with ``padding`` zeros, then take a ``size`` window at a random position."""
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    x = _pad_to(x, size)
    h, w = x.shape[-2:]
    top, left = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
    return x[:, top : top + size[0], left : left + size[1]]


def random_resized_crop(
    x: torch.Tensor, size: tuple[int, int], rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """A random window covering ``scale`` of the area with aspect ``ratio`` (log-uniform), resized to
    ``size`` (the Inception-style crop); falls back to the centre crop after 10 tries."""
    h, w = x.shape[-2:]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        ch, cw = round((area / aspect) ** 0.5), round((area * aspect) ** 0.5)
        if 0 < ch <= h and 0 < cw <= w:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return resize(x[:, top : top + ch, left : left + cw], size)
    side = min(h, w)
    return resize(center_crop(x, (side, side)), size)


def random_flip(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Mirror left-right with probability 1/2."""
    return x.flip(-1) if rng.random() < 0.5 else x


def color_jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and (for RGB) saturation each scaled by a factor from [1 - s, 1 + s], in a
    random order, clamped to [0, 1]."""
    if strength <= 0:
        return x
    grey = x.mean(0, keepdim=True) if x.shape[0] == 1 else _luma(x)
    steps = ["brightness", "contrast"] + (["saturation"] if x.shape[0] == 3 else [])
    for step in rng.permutation(steps):
        factor = float(rng.uniform(max(0.0, 1 - strength), 1 + strength))
        if step == "brightness":
            x = x * factor
        elif step == "contrast":
            x = (x - grey.mean()) * factor + grey.mean()
        else:
            x = (x - grey) * factor + grey
        x = x.clamp(0, 1)
        grey = x.mean(0, keepdim=True) if x.shape[0] == 1 else _luma(x)
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel."""
    mean = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def _luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 grey of an RGB image, ``(1, H, W)``."""
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    dh, dw = max(0, size[0] - h), max(0, size[1] - w)
    if dh or dw:
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
    return x


def draw_mix(rng: np.random.Generator, mixup: float, cutmix: float, size: tuple[int, int]) -> dict | None:
    """One example's share of a mixed batch (mixup, Zhang et al. 2018; CutMix, Yun et al. 2019), drawn
    from its own RNG so a resumed run mixes the same way: ``{"lam", "box"}`` — ``lam`` the weight this
    example keeps, ``box`` ``(top, bottom, left, right)`` for CutMix or ``None`` for mixup. ``mixup`` and
    ``cutmix`` are the Beta(α, α) parameters (0 = off); with both on, each example picks one with
    probability 1/2. The partner it mixes with is chosen at collation (``mix_batch``)."""
    kinds = [k for k, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not kinds:
        return None
    kind = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
    lam = float(rng.beta(mixup, mixup) if kind == "mixup" else rng.beta(cutmix, cutmix))
    if kind == "mixup":
        return {"lam": lam, "box": None}
    h, w = size
    cut_h, cut_w = round(h * np.sqrt(1 - lam)), round(w * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    # the box is clipped at the borders: the weight is the share of pixels actually kept
    return {"lam": 1.0 - (bottom - top) * (right - left) / (h * w), "box": (top, bottom, left, right)}


def mix_batch(x: torch.Tensor, draws: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each image of ``x`` ``(B, C, H, W)`` with its partner, the next one in the batch (the last with
    the first, as a rolled batch): blend by ``lam`` (mixup) or paste the partner's pixels into ``box``
    (CutMix). Returns the mixed images, each partner's index and each example's ``lam``; the loss is
    ``lam · CE(own label) + (1 - lam) · CE(partner's label)``. A batch of one is left as it is."""
    n = len(x)
    partner = torch.roll(torch.arange(n), -1)
    lam = torch.tensor([d["lam"] if n > 1 else 1.0 for d in draws], dtype=torch.float32)
    if n == 1:
        return x, partner, lam
    out = x.clone()
    for i, draw in enumerate(draws):
        other = x[int(partner[i])]
        if draw["box"] is None:
            out[i] = draw["lam"] * x[i] + (1 - draw["lam"]) * other
        else:
            top, bottom, left, right = draw["box"]
            out[i, :, top:bottom, left:right] = other[:, top:bottom, left:right]
    return out, partner, lam
