"""Conv → norm → activation, the unit of every small CNN (and of ResNet stems)."""

from __future__ import annotations

from torch import nn

from bigmodel.nn.activations import activation


class ConvNormAct(nn.Sequential):
    """``Conv2d(bias=False when normed) → BatchNorm2d | Identity → activation``.

    Padding defaults to ``kernel_size // 2`` so odd kernels keep the spatial size at stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str = "batch",
        act: str = "relu",
        padding: int | None = None,
    ):
        if norm not in ("batch", "none"):
            raise ValueError(f"norm {norm!r} is not one of ['batch', 'none']")
        padding = kernel_size // 2 if padding is None else padding
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=norm == "none")
        self.norm = nn.BatchNorm2d(out_channels) if norm == "batch" else nn.Identity()
        self.act = activation(act)
