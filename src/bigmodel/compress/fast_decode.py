"""Linear layers that are fast where decoding spends its time: one row (or a few) at a time.

- :class:`GemvLinear` (:func:`gemv_layout`): float weights stored transposed, ``(in, out)``. At one
  row the product is a matrix-vector product bounded by memory bandwidth, and torch's CPU GEMV read
  the ``(in, out)`` layout 1.6-1.7x faster than ``nn.Linear``'s ``(out, in)`` (fp32, one thread: 40
  3072 x 768 matrices 34-36 vs 57 ms; GPT-2's 50257 x 768 head 13.9 vs 23.7 ms); this is why Hugging
  Face's GPT-2, whose Conv1D stores ``(in, out)``, decoded faster than our ``nn.Linear`` model. At 8
  and 32 rows it was ~15 % slower, and in bf16 the same: use it for batch-1 fp32 decoding.
- :class:`Int8DecodeLinear` / :class:`Int4DecodeLinear`: weight-only int8 / int4 (below).

Greedy decoding at batch 1 is memory-bound: each token reads every weight once, so int8 weights
(1 byte) can run up to 4x faster than fp32 (4 bytes) *if* the product reads the int8 bytes directly.
:class:`~bigmodel.compress.quantize.Int8WeightOnlyLinear` converts its int8 matrix to float on every
call, so it reads more than fp32 does and is not faster. Here the product is
``torch.ops.aten._weight_int8pack_mm`` (core torch's CPU kernel, the one gpt-fast uses), which reads
int8 weights and bf16 activations.

Measured on this CPU (one thread, a 3072 x 768 matrix): 1 row 0.125 ms (fp32 0.22, bf16 0.18); the
kernel is a loop over rows, not a GEMM, so at 32 rows it is 2x slower than bf16 and at 256 rows 2x
slower than fp32 (the kernel with fp32 activations was 10x slower still). Hence activations go through
the kernel in bf16, and inputs of more than :data:`MAX_KERNEL_ROWS` rows (a long prompt, a big batch)
take a dequantized bf16 matrix and an ordinary matmul instead. The kernel is used only when the input
width is a multiple of :data:`KERNEL_WIDTH_MULTIPLE`: in torch 2.13 other widths (36, say) returned
garbage or crashed the process; those layers take the dequantized route too (correct, not fast).

Precision: per-output-row symmetric int8 weights (as ``weight_only_int8``), activations rounded to
bf16 inside each product, results returned in the input's dtype.

:class:`Int4DecodeLinear` does the same with torch's int4 CPU kernel (``_weight_int4pack_mm_for_cpu``,
asymmetric 4-bit groups of 32..256 inputs): half int8's bytes and, at one row, a 2.4x faster kernel,
at the price of coarser weights. (quantize.py found these kernels 40-90x slower than fp32 at 128
rows with fp32 activations; at 1-16 rows with bf16 activations they are the fastest route here.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from bigmodel.compress.quantize import _per_row_int8
from bigmodel.compress.surgery import replace_modules

# Above this many rows the row-loop kernel loses to a bf16 GEMM on the dequantized matrix (see above).
MAX_KERNEL_ROWS = 16
# Input widths the kernel computes correctly (checked for 16..3072 in steps of 16; 36 failed).
KERNEL_WIDTH_MULTIPLE = 16


class Int8DecodeLinear(nn.Module):
    """``y = (bf16(x) @ W_int8^T) * scale + b`` through torch's int8 weight-only CPU kernel.

    Args:
        in_features: input width.
        out_features: output width (rows of the int8 weight).
        bias: keep an fp32 bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        # The kernel wants the scales in the activations' dtype; bf16 scales round like its bf16 output.
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.kernel = in_features % KERNEL_WIDTH_MULTIPLE == 0

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DecodeLinear:
        """Quantize ``linear``'s weight per output row; the bias is kept in fp32."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        weight_int8, scale = _per_row_int8(linear.weight)
        module.weight_int8, module.weight_scale = weight_int8, scale.to(torch.bfloat16)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``(out, in)`` matrix, fp32, for code that reads ``weight``."""
        return self.weight_int8.float() * self.weight_scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in) -> (..., out) in ``x``'s dtype."""
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        if self.kernel and rows.shape[0] <= MAX_KERNEL_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.weight_scale)  # (N, out)
        else:
            y = F.linear(rows, self.weight_int8.to(torch.bfloat16) * self.weight_scale[:, None])
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        route = "int8 kernel" if self.kernel else "dequantized (width not a multiple of 16)"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows, {route}"


class GemvLinear(nn.Module):
    """``y = x @ W^T + b`` with ``W^T`` stored contiguous, ``(in, out)``: the fast GEMV layout on CPU.

    Args:
        in_features: input width.
        out_features: output width.
        bias: keep a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_t", torch.zeros(in_features, out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> GemvLinear:
        """A copy of ``linear`` in the transposed layout (same dtype; a tied weight gets its own copy)."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.weight_t = linear.weight.detach().t().contiguous()
        if linear.bias is not None:
            module.bias = linear.bias.detach().clone()
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The ``(out, in)`` matrix, a view, for code that reads ``weight``."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in) -> (..., out)."""
        rows = x.reshape(-1, self.in_features)  # (N, in)
        y = rows @ self.weight_t if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight stored (in, out)"


def gemv_layout(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (eval mode) with every ``nn.Linear`` a :class:`GemvLinear`, for batch-1 float decoding.

    Args:
        model: a float model.
        inplace: edit ``model`` itself instead of a deep copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    replace_modules(model.eval(), is_plain_linear, lambda _, m: GemvLinear.from_linear(m))
    return model


def is_plain_linear(path: str, module: nn.Module) -> bool:
    """The predicate of :func:`int8_decode`: exactly ``nn.Linear`` (not a LoRA or quantized subclass)."""
    return type(module) is nn.Linear


def int8_decode(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (eval mode) with every ``nn.Linear`` an :class:`Int8DecodeLinear`.

    Embeddings stay as they are: a lookup reads one row per token, not the table. A head tied to the
    embedding gets its own int8 copy; the table keeps its float weights for the lookup.

    Args:
        model: a float model (fp32 or bf16).
        inplace: edit ``model`` itself instead of a deep copy.

    Returns:
        The quantized model.
    """
    if not inplace:
        model = copy.deepcopy(model)
    replace_modules(model.eval(), is_plain_linear, lambda _, m: Int8DecodeLinear.from_linear(m))
    return model


# --- int4 --------------------------------------------------------------------------------------------

# Group sizes torch's int4 CPU kernel takes; smaller groups are closer to float and slightly larger.
INT4_GROUP_SIZES = (32, 64, 128, 256)


def _per_group_uint4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit groups of ``group_size`` inputs: ``(q int32 (N, K) in 0..15, scales_and_zeros
    (K / group_size, N, 2))`` with ``w ~ (q - 8) * scale + zero``, the layout of torch's int4 kernel."""
    N, K = weight.shape
    w = weight.detach().float().view(N, K // group_size, group_size)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-12)  # (N, G, 1)
    q = torch.round((w - low) / scale).clamp(0, 15).to(torch.int32).view(N, K)
    zero = low + 8 * scale  # the kernel subtracts 8 from each value and adds the zero
    scales_and_zeros = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)
    return q, scales_and_zeros


class Int4DecodeLinear(nn.Module):
    """``y = bf16(x) @ W^T + b`` with ``W`` in asymmetric 4-bit groups, through torch's int4 CPU kernel
    (``_weight_int4pack_mm_for_cpu``).

    Half the bytes of int8 and a 2.4x faster kernel at one row (48 3072 x 768 matrices: 6.4 vs 15.6 ms,
    one thread); its cost grows with the rows (32 rows: 13x one row), so long prompts pay. Coarser than
    int8: a group of ``group_size`` weights shares 16 levels.

    Args:
        in_features: input width, a multiple of ``group_size``.
        out_features: output width.
        bias: keep an fp32 bias.
        group_size: inputs per (scale, zero) pair, one of :data:`INT4_GROUP_SIZES`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 32):
        super().__init__()
        if group_size not in INT4_GROUP_SIZES or in_features % group_size:
            raise ValueError(f"in_features {in_features} must be a multiple of group_size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        # The kernel takes whole tiles of 16 outputs: pad with zero rows (GPT-2's 50257), slice them off.
        padded = -(-out_features // 16) * 16
        q = torch.zeros(padded, in_features, dtype=torch.int32)
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
        groups = in_features // group_size
        self.register_buffer("scales_and_zeros", torch.zeros(groups, padded, 2, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4DecodeLinear:
        """Quantize ``linear``'s weight in groups of ``group_size`` inputs; the bias is kept in fp32."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        weight = linear.weight.detach()
        weight = F.pad(weight, (0, 0, 0, module.scales_and_zeros.shape[1] - weight.shape[0]))  # zero rows
        q, scales_and_zeros = _per_group_uint4(weight, group_size)
        module.weight_int4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)  # packed uint8
        module.scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in) -> (..., out) in ``x``'s dtype."""
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.weight_int4, self.group_size, self.scales_and_zeros
        )
        y = y[:, : self.out_features].to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        size = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{size}, int4 groups of {self.group_size}"


def int4_decode(model: nn.Module, group_size: int = 32, inplace: bool = False) -> nn.Module:
    """``model`` (eval mode) with every ``nn.Linear`` whose input width is a multiple of ``group_size``
    an :class:`Int4DecodeLinear` (the others stay float); embeddings stay as they are.

    Args:
        model: a float model.
        group_size: inputs per (scale, zero) pair.
        inplace: edit ``model`` itself instead of a deep copy.
    """
    if not inplace:
        model = copy.deepcopy(model)

    def fits(path: str, module: nn.Module) -> bool:
        return is_plain_linear(path, module) and module.in_features % group_size == 0

    replace_modules(model.eval(), fits, lambda _, m: Int4DecodeLinear.from_linear(m, group_size))
    return model
