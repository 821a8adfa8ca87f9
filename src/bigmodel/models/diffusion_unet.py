"""A small U-Net that predicts the noise in a diffused image, given the time step and a class.

The denoiser of DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", appendix B): a
convolutional encoder-decoder with skip connections, residual blocks with GroupNorm and SiLU,
self-attention at chosen resolutions, and the time step added to every residual block as a learned
projection of its sinusoidal embedding. A class label (``num_classes > 0``) is embedded and added
to the time embedding; the extra embedding row ``num_classes`` means "no class", which classifier-
free guidance (Ho & Salimans 2022) uses for the unconditional prediction.

Each level after the first halves height and width with a stride-2 conv (odd sizes round up, so
28 → 14 → 7 → 4), and the decoder upsamples back to the size of the skip it joins, so any image size
works. The model returns ``eps`` of the input's shape; the diffusion itself (schedule, loss,
sampling) belongs to the task (tasks/image_generation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import Family


@dataclass
class DiffusionUNetConfig:
    """Diffusion U-Net hyper-parameters.

    Attributes:
        in_channels: image channels (1 grey, 3 RGB); the output has as many.
        num_classes: classes the model is conditioned on; 0 = unconditional.
        patch_size: ``p > 1`` folds each ``p×p`` patch of pixels into channels first (pixel unshuffle;
            the image is zero-padded to a multiple of ``p``) and unfolds the output back, so the
            network runs at ``1/p`` of the resolution: ~``p²`` times fewer FLOPs.
        channels: width of the first level.
        channel_mults: one entry per level: its width is ``channels * mult``.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_levels: indices of the levels with self-attention after each residual block
            (the middle block always has one).
        num_heads: attention heads (must divide every attended width).
        embed_dim: width of the time (and class) embedding; 0 = ``4 * channels``.
        norm_groups: GroupNorm groups (must divide every width).
        dropout: in each residual block, before its second conv.
        gradient_checkpointing: in training, recompute each block's activations in the backward
            pass instead of storing them (less memory, ~1/3 more compute).
    """

    in_channels: int = 1
    num_classes: int = 0
    patch_size: int = 1
    channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [2])
    num_heads: int = 4
    embed_dim: int = 0
    norm_groups: int = 8
    dropout: float = 0.1
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.channel_mults = [int(m) for m in self.channel_mults]
        self.attention_levels = [int(a) for a in self.attention_levels]
        for name in ("in_channels", "patch_size", "channels", "num_res_blocks", "num_heads", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0 (0 = 4 * channels), got {self.embed_dim}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(
                f"channel_mults must be a non-empty list of positive ints, got {self.channel_mults}"
            )
        bad = [a for a in self.attention_levels if not 0 <= a < len(self.channel_mults)]
        if bad:
            raise ValueError(
                f"attention_levels {bad} are not levels of channel_mults (0..{len(self.channel_mults) - 1})"
            )
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(f"norm_groups {self.norm_groups} does not divide the width {width}")
        for level in {*self.attention_levels, len(self.channel_mults) - 1}:
            if self.widths[level] % self.num_heads:
                raise ValueError(
                    f"num_heads {self.num_heads} does not divide the attended width {self.widths[level]}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def widths(self) -> list[int]:
        return [self.channels * m for m in self.channel_mults]

    @property
    def time_dim(self) -> int:
        return self.embed_dim or 4 * self.channels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time steps ``(B,) -> (B, dim)``, as the
    Transformer's positions (Vaswani et al. 2017): cosines then sines over geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))  # an odd width gets a zero column


class ResBlock(nn.Module):
    """``x + conv(drop(act(norm(conv(act(norm(x))) + proj(emb)))))``, with a 1×1 shortcut when the
    width changes."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # the time step shifts every channel
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions of a feature map, residual."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        # (B, heads, H*W, C/heads) each
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Level(nn.Module):
    """Residual blocks, each optionally followed by attention; ``forward`` runs one of them."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)  # (H, W) -> (ceil(H/2), ceil(W/2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))  # back to the skip's size


class DiffusionUNet(Model):
    """``eps = model(x_t, t, y)``: the noise in ``x_t`` ``(B, C, H, W)`` at time steps ``t`` ``(B,)``
    for classes ``y`` ``(B,)`` (``num_classes`` or None = no class)."""

    def __init__(self, config: DiffusionUNetConfig):
        super().__init__(config)
        c = config
        emb, groups = c.time_dim, c.norm_groups
        self.time_embed = nn.Sequential(nn.Linear(c.channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_embed = nn.Embedding(c.num_classes + 1, emb) if c.num_classes else None
        pixels = c.in_channels * c.patch_size**2  # channels of one folded patch
        self.stem = nn.Conv2d(pixels, c.channels, 3, padding=1)

        def block(in_ch: int, out_ch: int, level: int) -> Level:
            attn = AttentionBlock(out_ch, c.num_heads, groups) if level in c.attention_levels else None
            return Level(ResBlock(in_ch, out_ch, emb, groups, c.dropout), attn)

        widths, last = c.widths, len(c.widths) - 1
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [c.channels], c.channels  # widths of the encoder outputs the decoder joins
        for level, width in enumerate(widths):
            self.down.append(nn.ModuleList())
            for _ in range(c.num_res_blocks):
                self.down[level].append(block(ch, width, level))
                ch = width
                skips.append(ch)
            if level < last:
                self.downsample.append(Downsample(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([
            Level(ResBlock(ch, ch, emb, groups, c.dropout), AttentionBlock(ch, c.num_heads, groups)),
            Level(ResBlock(ch, ch, emb, groups, c.dropout), None),
        ])  # fmt: skip
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            self.up.append(nn.ModuleList())
            for _ in range(c.num_res_blocks + 1):
                self.up[-1].append(block(ch + skips.pop(), widths[level], level))
                ch = widths[level]
            if level > 0:
                self.upsample.append(Upsample(ch))
        self.out_norm = nn.GroupNorm(groups, ch)
        self.out = nn.Conv2d(ch, pixels, 3, padding=1)

    @property
    def feature_dim(self) -> int:
        """Width of the bottleneck (the middle blocks' features)."""
        return self.config.widths[-1]

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The time (+ class) embedding ``(B, embed)``; ``y`` None or ``num_classes`` means no class."""
        emb = self.time_embed(timestep_embedding(t, self.config.channels))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((len(t),), self.config.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.class_embed(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``(B, C, H, W)``."""
        ckpt = self.config.gradient_checkpointing
        emb = self.embed(t, y)  # (B, E)
        p, (H, W) = self.config.patch_size, x.shape[-2:]
        if p > 1:  # (B, C, H, W) -> (B, C*p*p, ceil(H/p), ceil(W/p))
            x = F.pixel_unshuffle(F.pad(x, (0, -W % p, 0, -H % p)), p)
        h = self.stem(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for blk in blocks:
                h = maybe_checkpoint(blk, h, emb, enabled=ckpt)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)  # (B, C, ceil(H/2), ceil(W/2))
                skips.append(h)
        for blk in self.mid:
            h = maybe_checkpoint(blk, h, emb, enabled=ckpt)
        for i, blocks in enumerate(self.up):
            for blk in blocks:
                h = maybe_checkpoint(blk, torch.cat([h, skips.pop()], dim=1), emb, enabled=ckpt)
            if i < len(self.upsample):
                h = self.upsample[i](h, skips[-1].shape[-2:])
        out = self.out(F.silu(self.out_norm(h)))
        if p > 1:
            out = F.pixel_shuffle(out, p)[..., :H, :W]
        return out


def _example_input(config: DiffusionUNetConfig, batch_size: int = 2) -> tuple:
    x = torch.randn(batch_size, config.in_channels, 9, 7)  # odd sizes: 9x7 -> 5x4 -> 3x2
    t = torch.randint(0, 1000, (batch_size,))
    y = torch.randint(0, config.num_classes + 1, (batch_size,)) if config.num_classes else None
    return (x, t, y)


FAMILY = Family(
    name="diffusion_unet",
    config_cls=DiffusionUNetConfig,
    model_cls=DiffusionUNet,
    presets={
        # ~1.1M parameters; 2x2 patches, so 28x28 grey images (Fashion-MNIST) run at 14 -> 7 -> 4 on a CPU.
        "diffusion-unet-small": {
            "patch_size": 2,
            "channels": 32,
            "channel_mults": [1, 2, 2],
            "num_res_blocks": 1,
            "attention_levels": [1],
        },
        "diffusion-unet-tiny": {
            "in_channels": 3,
            "num_classes": 3,
            "channels": 8,
            "channel_mults": [1, 2, 3],
            "num_res_blocks": 1,
            "attention_levels": [1],
            "num_heads": 2,
            "norm_groups": 4,
            "dropout": 0.1,
        },
    },  # fmt: skip
    tiny_presets=("diffusion-unet-tiny",),
    example_input=_example_input,
)
