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
