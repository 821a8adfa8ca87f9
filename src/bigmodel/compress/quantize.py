"""Int8 quantization on CPU (post-training, or quantization-aware training), applied from outside with
module swaps.

Methods (``quantize: {method: ...}`` in a recipe's ``compress:`` list, or the plain functions):

- ``dynamic_int8`` (:func:`quantize_dynamic`): ``nn.Linear`` (per-output-channel int8 weights) and
  ``nn.LSTM``/``nn.GRU`` (per-tensor) run int8 matrix products, the activations quantized on the fly
  with one range per tensor (the whole batch: an example's result depends slightly on its batch
  mates); no calibration. The speed route for Linear-heavy encoders (BERT/MiniLM) at small batches.
- ``static_int8`` (:func:`quantize_static`): post-training static quantization for CNNs. Conv + BatchNorm
  (+ ReLU) are fused where the model holds them as consecutive children (each fusion is kept only if
  the model's output on a calibration batch is unchanged, so a module whose ``forward`` does not apply
  its children in order is left alone); then every Conv/Linear becomes an *island*: quantize its input,
  run the int8 kernel, dequantize its output. Activation ranges come from calibration batches (the
  engine's default qconfig: a histogram observer per activation, per-channel weights). Islands keep
  any model's own ``forward`` (control flow included) working, at the price of a quantize/dequantize
  per layer.
- ``qat_int8`` (:func:`quantize_aware_train`): quantization-aware training for the same CNNs, ending in
  exactly ``static_int8``'s modules. The same checked fusion (BatchNorm folded into the conv first, so
  fine-tuning trains the folded conv) and the same islands, but each island gets torch.ao's QAT qconfig
  for the engine (``prepare_qat``: fake-quantized input, weights per channel and output, ranges as
  moving averages of min/max, gradients straight through the rounding); the model is then trained
  with the training loop (``finetune: {epochs, lr}``, as prune's, into ``<stage folder>/finetune``)
  and converted. Saving and :func:`rebuild` are static_int8's. Measured on digits (tests/compress/
  test_qat.py): it loses nothing against static_int8; on data that small both lose under a point.
- ``weight_only_int8`` (:func:`weight_only_int8`): Linear weights stored as int8 + one fp32 scale per
  output row, converted to fp32 inside the product; activations stay fp32, so it is closer to fp32
  than ``dynamic_int8``. A *size* route for decoders (GPT, Llama): 4x smaller Linear weights; greedy
  decoding at batch 1 measured 1.0-1.3x the speed of fp32 (noisy machine), ``dynamic_int8`` ~2x
  (bench/compress.py, section quantize_decoder).

``embeddings: true`` also stores every ``nn.Embedding`` table as int8 rows + a scale per row
(:class:`Int8Embedding`, dequantized on lookup): a text model's vocabulary table is a large share of
its size.

The route, and why (torch 2.13, torchao 0.18, measured on this x86 CPU, one thread, a 384->1536->384
MLP on 128 tokens): ``torch.ao.quantization`` is marked deprecated in torch 2.13 (a DeprecationWarning
pointing to torchao's ``quantize_`` and PT2E) but is still shipped and working, and its eager dynamic
int8 Linear (fbgemm/x86 kernels) was 3.5x faster than fp32; torchao 0.18's
``Int8DynamicActivationInt8WeightConfig`` was 1.65x and its ``Int8WeightOnlyConfig`` 0.6x (slower) in
eager mode — torchao's CPU speed comes with ``torch.compile``, which this toolkit does not use to
serve. torchao's int4 weight-only needs the ``mslk`` kernel package (not installable here) and
core torch's ``_weight_int4pack_mm_for_cpu`` / ``_weight_int8pack_mm`` ran 40-90x slower than fp32
matmul on 128 rows of fp32 activations, so there is no int4 *stage* here. At decode time (1-16 rows,
bf16 activations) the same kernels are the fastest route: see compress/fast_decode.py. FX graph
mode (``prepare_fx``) was the generic static route, but it cannot trace a model whose ``forward``
branches on tensors (our CNN does), and PT2E export moved to torchao; the island scheme above needs
neither tracing nor export. When ``torch.ao.quantization`` is removed, the dynamic and static methods
move to torchao; ``weight_only_int8`` and the int8 embeddings are our own modules and do not depend on
it. The quantized engine is set explicitly (``x86`` by default; ``qnnpack`` is slower than fp32 on x86).
Activations use the full 8 bits where the CPU has VNNI/AMX (:func:`full_range_safe`; torch.ao's x86
default is 7 bits, to avoid int16 saturation on older CPUs); model.json records the choice.

Saving: safetensors holds no quantized tensors, so :func:`quantized_state` writes every quantized
weight as its int8 (or uint8) values, scale(s), zero point(s) and channel axis as plain tensors, and
:func:`load` rebuilds the fp32 model from ``family`` + ``config``, replays the module swaps recorded in
``transform.quantize`` and puts the saved values back, so the rebuilt model computes exactly what the
quantized one did.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn
from torch.nn import functional as F

from bigmodel.compress.options import Finetune, parse_stage_options
from bigmodel.compress.surgery import replace_modules
from bigmodel.errors import RecipeError
from bigmodel.models.registry import build_config, family_of, get_family

FORMAT = 1  # transform.quantize's format version
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def _ao():
    """``torch.ao.quantization``, imported without its deprecation warning (the route is chosen on
    purpose; see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.ao.quantization as ao

    return ao


@contextlib.contextmanager
def _quiet():
    """torch.ao's deprecation and observer warnings silenced for one call (the route is deliberate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*(reduce_range|quantized tensor|must run observer)")
        yield


# --- options -----------------------------------------------------------------------------------------


class Options(BaseModel):
    """``quantize:`` stage options."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["dynamic_int8", "static_int8", "qat_int8", "weight_only_int8"] = Field(
        "dynamic_int8",
        description="dynamic_int8: Linear/LSTM/GRU for encoders; static_int8: calibrated, for CNNs; "
        "qat_int8: static_int8's modules, fine-tuned with fake quantization first; "
        "weight_only_int8: int8 Linear weights for decoders (4x smaller, closest to fp32)",
    )
    finetune: Finetune | None = Field(
        None, validate_default=True, description="qat_int8 only (and required there): {epochs, lr}"
    )
    embeddings: bool = Field(True, description="store nn.Embedding tables as int8 rows + a scale per row")
    calibration_batches: int = Field(8, ge=1, le=10_000, description="train batches observed (static_int8)")
    calibration_batch_size: int = Field(32, ge=1, le=4096, description="examples per calibration batch")
    engine: Literal["x86", "fbgemm"] = Field("x86", description="torch's quantized engine")

    @field_validator("finetune", mode="after")
    @classmethod
    def _finetune_for_qat_only(cls, value: Finetune | None, info: ValidationInfo) -> Finetune | None:
        method = info.data.get("method")
        if method == "qat_int8" and value is None:
            raise ValueError("qat_int8 trains with fake quantization: give finetune: {epochs: N, lr: ...}")
        if method is not None and method != "qat_int8" and value is not None:
            raise ValueError(f"only qat_int8 fine-tunes; {method} does not train (drop finetune)")
        return value


def parse_options(options: dict, where: str = "compress[?].quantize") -> Options:
    """``options`` validated; a problem is a RecipeError naming ``<where>.<field>``, the value and
    what is allowed."""
    return parse_stage_options(Options, options, where)


def set_engine(engine: str = "x86") -> None:
    """Select torch's quantized kernels explicitly (the default may be ``qnnpack``, slow on x86)."""
    if engine not in torch.backends.quantized.supported_engines:
        raise RecipeError(
            f"quantize.engine: {engine!r} is not available in this torch build; available: "
            f"{', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')}."
        )
    torch.backends.quantized.engine = engine


# --- our own int8 modules (plain tensors: safetensors holds them as they are) -----------------------


def _per_row_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: ``(int8 (R, C), fp32 scale (R,))`` with ``weight ~ int8 * scale``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Embedding(nn.Module):
    """An ``nn.Embedding`` table held as int8 rows and one fp32 scale per row; a lookup dequantizes only
    the rows it reads. ``weight`` gives the dequantized table for code that reads it."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        module = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        module.weight_int8, module.weight_scale = _per_row_int8(embedding.weight)
        return module

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` (...) -> (..., embedding_dim) fp32."""
        return self.weight_int8[ids].float() * self.weight_scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row"


class Int8WeightOnlyLinear(nn.Module):
    """``y = (x @ W_int8^T) * scale + b``: int8 weights with one fp32 scale per output feature;
    activations stay fp32. ``weight`` gives the dequantized matrix for code that reads it."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8WeightOnlyLinear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.weight_int8, module.weight_scale = _per_row_int8(linear.weight)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in) -> (..., out); the scale applied to the output, not to the (out, in) matrix."""
        y = F.linear(x, self.weight_int8.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per row"


def _is_plain_embedding(path: str, module: nn.Module) -> bool:
    # Subclasses count only if they keep nn.Embedding's lookup (a learned position table does).
    return isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward


def quantize_embeddings(model: nn.Module) -> list[str]:
    """Swap every ``nn.Embedding`` (and subclass keeping its lookup) for an :class:`Int8Embedding`, in
    place; returns the paths swapped. A table tied to an LM head is quantized here, the head separately
    (the tie is an fp32 training device; each side keeps its own int8 copy)."""
    return replace_modules(model, _is_plain_embedding, lambda _, m: Int8Embedding.from_embedding(m))


# --- the methods -------------------------------------------------------------------------------------


def full_range_safe() -> bool:
    """Whether int8 products may use the full 0..255 activation range on this CPU. torch.ao's x86
    kernels default to 7 bits (``reduce_range``) because, without VNNI, fbgemm sums u8 x s8 pairs in
    int16, which can saturate; with VNNI (or AMX) they accumulate in int32 and 8 bits are safe. On the
    MiniLM encoder 7 bits cost a lot: pooled-feature cosine to fp32 0.970 vs 0.992 with 8 bits."""
    return bool(torch.cpu._is_vnni_supported())


def _full_range_linear_class():
    from torch.ao.nn.quantized import dynamic as nnqd

    class FullRangeDynamicLinear(nnqd.Linear):
        """torch.ao's dynamic int8 Linear, activations quantized to 8 bits rather than 7 (see
        :func:`full_range_safe`); otherwise identical (same packed weights, same state)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
            return y.to(x.dtype)

        def _get_name(self) -> str:
            return "DynamicQuantizedLinear8bit"

    return FullRangeDynamicLinear


def _use_full_range(model: nn.Module) -> list[str]:
    """Swap every dynamic int8 Linear for its 8-bit-activation twin, same weights; returns the paths."""
    from torch.ao.nn.quantized import dynamic as nnqd

    cls = _full_range_linear_class()

    def factory(_: str, m: nn.Module) -> nn.Module:
        new = cls(m.in_features, m.out_features, bias_=m.bias() is not None, dtype=torch.qint8)
        new.set_weight_bias(m.weight(), m.bias())
        return new

    return replace_modules(model, lambda _, m: type(m) is nnqd.Linear, factory)


def quantize_dynamic(
    model: nn.Module, embeddings: bool = True, engine: str = "x86", full_range: bool | None = None
) -> nn.Module:
    """A dynamically quantized copy of ``model`` (eval mode): Linear layers with per-channel int8
    weights, LSTM/GRU with per-tensor int8 weights, activations quantized per tensor at run time (so
    an example's result depends slightly on the batch it runs in); embeddings as
    :class:`Int8Embedding` if ``embeddings``; Linear activations in 8 bits if ``full_range`` (default:
    :func:`full_range_safe`), else torch's 7. ``model`` is left as it was."""
    set_engine(engine)
    ao = _ao()
    model = copy.deepcopy(model).eval()
    if embeddings:
        quantize_embeddings(model)
    spec = {nn.Linear: ao.per_channel_dynamic_qconfig, nn.LSTM: ao.default_dynamic_qconfig,
            nn.GRU: ao.default_dynamic_qconfig}  # fmt: skip
    with _quiet():
        ao.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    if full_range_safe() if full_range is None else full_range:
        _use_full_range(model)
    return model


def weight_only_int8(model: nn.Module, embeddings: bool = True) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``nn.Linear`` layers hold int8 weights + per-row scales
    (:class:`Int8WeightOnlyLinear`), embeddings too if ``embeddings``. ``model`` is left as it was."""
    model = copy.deepcopy(model).eval()
    if embeddings:
        quantize_embeddings(model)
    replace_modules(
        model, lambda _, m: type(m) is nn.Linear, lambda _, m: Int8WeightOnlyLinear.from_linear(m)
    )
    return model


class QuantIsland(nn.Module):
    """One float module run in int8: quantize the input, the quantized kernel, dequantize the output."""

    def __init__(self, module: nn.Module):
        super().__init__()
        ao = _ao()
        self.quant, self.module, self.dequant = ao.QuantStub(), module, ao.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.module(self.quant(x)))


def _fusable_groups(model: nn.Module) -> list[list[str]]:
    """Consecutive children ``conv, batchnorm[, relu]`` or ``conv, relu`` (in registration order) as
    full dotted paths: candidates only (see :func:`_fuse_checked`)."""
    groups = []
    for parent_path, parent in model.named_modules():
        names = list(parent._modules)
        mods = [parent._modules[n] for n in names]
        i = 0
        while i < len(mods):
            conv = mods[i]
            if type(conv) not in CONVS:
                i += 1
                continue
            group = [names[i]]
            if i + 1 < len(mods) and type(mods[i + 1]) is NORMS[type(conv)]:
                group.append(names[i + 1])
            if i + len(group) < len(mods) and type(mods[i + len(group)]) is nn.ReLU:
                group.append(names[i + len(group)])
            if len(group) > 1:
                prefix = f"{parent_path}." if parent_path else ""
                groups.append([prefix + n for n in group])
            i += len(group)
    return groups


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _flat(v)]
    return []


def _same(a: Any, b: Any) -> bool:
    fa, fb = _flat(a), _flat(b)
    return len(fa) == len(fb) and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=1e-3, atol=1e-4)
        for x, y in zip(fa, fb, strict=True)
    )


def _fuse(model: nn.Module, groups: list[list[str]]) -> None:
    ao = _ao()
    with _quiet():
        ao.fuse_modules(model, groups, inplace=True)


def _fuse_checked(model: nn.Module, probe: Callable[[nn.Module], Any]) -> list[list[str]]:
    """Fuse the candidate groups whose fusion leaves ``probe(model)`` unchanged; returns those fused.
    (A module whose forward does not apply conv -> bn -> relu in order would change: left unfused.)
    All groups are tried at once first; only if that changes the output is each group tried alone."""
    groups = _fusable_groups(model)
    if not groups:
        return []
    with torch.no_grad():
        reference = probe(model)
        trial = copy.deepcopy(model)
        _fuse(trial, groups)
        if _same(probe(trial), reference):
            _fuse(model, groups)
            return groups
        kept = []
        for group in groups:
            trial = copy.deepcopy(model)
            _fuse(trial, [group])
            if _same(probe(trial), reference):
                _fuse(model, [group])
                kept.append(group)
    return kept


def _island_types() -> tuple[type, ...]:
    from torch.ao.nn import intrinsic as nni

    return (*CONVS, nn.Linear, nni.ConvReLU1d, nni.ConvReLU2d, nni.ConvReLU3d, nni.LinearReLU)


def _qconfig(engine: str, full_range: bool, qat: bool = False):
    """The engine's default qconfig, with 8-bit activations where the CPU's int8 products cannot
    saturate (see :func:`full_range_safe`). Static: a histogram observer per activation, per-channel
    weights. QAT: fake quantization with moving-average min/max ranges, per-channel symmetric weights;
    it converts to the same int8 modules."""
    ao = _ao()
    if qat:
        qconfig = ao.get_default_qat_qconfig(engine)
        if full_range:
            activation = ao.FusedMovingAvgObsFakeQuantize.with_args(
                observer=ao.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, reduce_range=False
            )
            qconfig = ao.QConfig(activation=activation, weight=qconfig.weight)
        return qconfig
    qconfig = ao.get_default_qconfig(engine)
    if full_range:
        qconfig = ao.QConfig(
            activation=ao.HistogramObserver.with_args(reduce_range=False), weight=qconfig.weight
        )
    return qconfig


def _add_islands(model: nn.Module, engine: str, full_range: bool, qat: bool = False) -> list[str]:
    types = _island_types()
    qconfig = _qconfig(engine, full_range, qat)

    def factory(_: str, module: nn.Module) -> nn.Module:
        island = QuantIsland(module)
        island.qconfig = qconfig
        return island

    # A fused module (ConvReLU2d) is a Sequential holding the original Conv2d: one island, not two.
    fused = [p for p, m in model.named_modules() if p and isinstance(m, nn.Sequential) and type(m) in types]

    def wanted(path: str, module: nn.Module) -> bool:
        return type(module) in types and not any(path.startswith(f + ".") for f in fused)

    return replace_modules(model, wanted, factory)


def _static_structure(model: nn.Module, fused: list[list[str]], engine: str, full_range: bool) -> list[str]:
    """Fusion, islands and observers (``prepare``) in place; returns the island paths."""
    ao = _ao()
    model.eval()
    if fused:
        _fuse(model, fused)
    paths = _add_islands(model, engine, full_range)
    with _quiet():
        ao.prepare(model, inplace=True)
    return paths


def _qat_structure(model: nn.Module, fused: list[list[str]], engine: str, full_range: bool) -> list[str]:
    """Fusion (BatchNorm folded into the conv, as static_int8 does), islands, and fake quantization
    (``prepare_qat``: qat Conv/Linear modules with fake-quantized weights and outputs, a fake-quantized
    input per island) in place; the model is left in train mode. Returns the island paths."""
    ao = _ao()
    model.eval()
    if fused:
        _fuse(model, fused)
    paths = _add_islands(model, engine, full_range, qat=True)
    model.train()
    with _quiet():
        ao.prepare_qat(model, inplace=True)
    return paths


def quantize_aware_train(
    model: nn.Module,
    train: Callable[[nn.Module], None],
    probe_input: Any,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    embeddings: bool = True,
    engine: str = "x86",
) -> tuple[nn.Module, list[list[str]]]:
    """Quantization-aware training: a copy of ``model`` with :func:`quantize_static`'s fusion and
    islands, each island fake-quantized (rounding to int8 is simulated in the forward pass, the
    gradient passes straight through), trained by ``train(model)``, then converted to the same int8
    modules :func:`quantize_static` produces (so :func:`rebuild` and saving are shared).

    Args:
        model: the fp32 model (left as it was).
        train: trains the prepared model in place (e.g. the training loop for some epochs).
        probe_input: one batch, to check each conv-bn-relu fusion leaves the output unchanged.
        forward: ``(model, batch) -> outputs``; e.g. ``task.forward``.
        embeddings: also int8 ``nn.Embedding`` tables (frozen during training).

    Returns:
        ``(quantized model, fused groups)``.
    """
    set_engine(engine)
    forward = forward or (lambda m, x: m(x))
    model = copy.deepcopy(model).eval()
    if embeddings:
        quantize_embeddings(model)
    fused = _fuse_checked(model, lambda m: forward(m, probe_input))
    _qat_structure(model, [], engine, full_range_safe())  # already fused
    train(model)
    model.cpu().eval()
    _convert(model)
    return model, fused


def _convert(model: nn.Module) -> None:
    with _quiet():
        _ao().convert(model, inplace=True)


def quantize_static(
    model: nn.Module,
    calibration_inputs: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    embeddings: bool = True,
    engine: str = "x86",
) -> tuple[nn.Module, list[list[str]]]:
    """A statically quantized copy of ``model`` (a CNN): conv-bn-relu fused where checked safe, every
    Conv/Linear an int8 island, activation ranges observed on ``calibration_inputs``.

    Args:
        model: the fp32 model (left as it was).
        calibration_inputs: batches as ``forward`` takes them (default: tensors for ``model(x)``).
        forward: ``(model, batch) -> outputs``; e.g. ``task.forward``.
        embeddings: also int8 ``nn.Embedding`` tables.

    Returns:
        ``(quantized model, fused groups)``; the groups are what :func:`rebuild` needs.
    """
    set_engine(engine)
    forward = forward or (lambda m, x: m(x))
    batches = list(calibration_inputs)
    if not batches:
        raise RecipeError("quantize: static_int8 needs at least one calibration batch; none were given.")
    model = copy.deepcopy(model).eval()
    if embeddings:
        quantize_embeddings(model)
    fused = _fuse_checked(model, lambda m: forward(m, batches[0]))
    _static_structure(model, [], engine, full_range_safe())  # already fused
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
    _convert(model)
    return model, fused


# --- saving as plain tensors, and rebuilding ----------------------------------------------------------


def _pack(name: str, qt: torch.Tensor) -> dict[str, torch.Tensor]:
    """A quantized tensor as plain ones: ``name`` (int8/uint8 values), ``name.scale``,
    ``name.zero_point`` and, per channel, ``name.axis``."""
    out = {name: qt.int_repr().contiguous()}
    if qt.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        out[f"{name}.scale"] = qt.q_per_channel_scales().double()
        out[f"{name}.zero_point"] = qt.q_per_channel_zero_points().int()  # 4 bytes a row
        out[f"{name}.axis"] = torch.tensor(qt.q_per_channel_axis())
    else:
        out[f"{name}.scale"] = torch.tensor(qt.q_scale(), dtype=torch.float64)
        out[f"{name}.zero_point"] = torch.tensor(qt.q_zero_point())
    return out


def _unpack(name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    values = tensors[name]
    scale, zero = tensors[f"{name}.scale"], tensors[f"{name}.zero_point"]
    if f"{name}.axis" in tensors:
        axis = int(tensors[f"{name}.axis"])
        return torch._make_per_channel_quantized_tensor(values, scale.double(), zero.long(), axis)
    return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero))  # dtype from values


def _weighted(model: nn.Module) -> dict[str, nn.Module]:
    """torch.ao's quantized modules that hold packed weights (Linear, Conv, dynamic Linear/RNN)."""
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams  # their Linear's inner holder

    return {
        p: m
        for p, m in model.named_modules()
        if p and hasattr(m, "set_weight_bias") and not isinstance(m, LinearPackedParams)
    }


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything a quantized model holds, as plain tensors safetensors can write: packed int8 weights
    unpacked (:func:`_pack`), the rest of ``state_dict()`` as it is (scales, zero points, fp32 layers,
    our int8 modules' buffers)."""
    out: dict[str, torch.Tensor] = {}
    weighted = _weighted(model)
    for path, module in weighted.items():
        if hasattr(module, "_weight_bias") and isinstance(module._weight_bias(), dict):  # dynamic RNN
            for kind, values in module._weight_bias().items():
                for name, t in values.items():
                    out.update(
                        _pack(f"{path}.{kind}.{name}", t) if t.is_quantized else {f"{path}.{kind}.{name}": t}
                    )
        else:
            out.update(_pack(f"{path}.weight", module.weight()))
            if module.bias() is not None:
                out[f"{path}.bias"] = module.bias().detach()
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not value.is_quantized and key not in out:
            out[key] = value.detach()
    # Tied parameters appear under several keys; safetensors refuses shared storage: copy.
    return {k: v.clone().contiguous() for k, v in out.items()}


def _restore(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put :func:`quantized_state`'s tensors back into a rebuilt model of the same structure."""
    used = set()
    for path, module in _weighted(model).items():
        if hasattr(module, "_weight_bias") and isinstance(module._weight_bias(), dict):
            saved = {}  # flat {weight_ih_l0: ..., bias_ih_l0: ...}, as their set_weight_bias takes it
            for kind, values in module._weight_bias().items():
                for name in values:
                    key = f"{path}.{kind}.{name}"
                    saved[name] = _unpack(key, tensors) if f"{key}.scale" in tensors else tensors[key]
                    used.update(k for k in tensors if k == key or k.startswith(key + "."))
            module.set_weight_bias(saved)
        else:
            key = f"{path}.weight"
            module.set_weight_bias(_unpack(key, tensors), tensors.get(f"{path}.bias"))
            used.update({key, f"{key}.scale", f"{key}.zero_point", f"{key}.axis", f"{path}.bias"})
    expected = {
        k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and not v.is_quantized
    }
    missing = sorted(k for k in expected if k not in tensors and k not in used)
    if missing:
        raise RecipeError(f"quantize: the saved tensors lack {missing[0]!r} (and {len(missing) - 1} more).")
    with torch.no_grad():
        for key in sorted(expected - used):
            owner_path, _, attr = key.rpartition(".")
            owner = model.get_submodule(owner_path)
            value = tensors[key]
            if attr in owner._parameters or attr in owner._buffers:
                target = getattr(owner, attr)
                if target is None or target.shape != value.shape or target.dtype != value.dtype:
                    setattr(owner, attr, value.clone()) if attr in owner._buffers else target.copy_(value)
                else:
                    target.copy_(value)
            else:  # torch.ao's quantized modules keep their output scale/zero point as Python numbers
                setattr(owner, attr, int(value) if attr == "zero_point" else float(value))
            used.add(key)
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise RecipeError(f"quantize: the saved tensor {unknown[0]!r} names nothing in the rebuilt model.")


def rebuild(model: nn.Module, transform: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Replay ``transform`` (what :func:`apply` recorded) on the fp32 ``model`` built from its config,
    then put ``tensors`` back: the saved quantized model, computing exactly what it did."""
    method, engine = transform["method"], transform.get("engine", "x86")
    model = model.eval()
    if method == "dynamic_int8":
        model = quantize_dynamic(model, transform["embeddings"], engine, transform.get("full_range", False))
    elif method == "weight_only_int8":
        model = weight_only_int8(model, transform["embeddings"])
    elif method in ("static_int8", "qat_int8"):  # QAT converts to static_int8's modules
        set_engine(engine)
        model = copy.deepcopy(model)
        if transform["embeddings"]:
            quantize_embeddings(model)
        _static_structure(
            model, [list(g) for g in transform["fused"]], engine, transform.get("full_range", False)
        )
        _convert(model)  # uncalibrated: every scale is overwritten below
    else:
        raise RecipeError(f"quantize: unknown method {method!r} in model.json's transform.quantize.")
    _restore(model, tensors)
    return model.eval()


# --- the stage -----------------------------------------------------------------------------------------


def _calibration(ctx, options: Options) -> list[dict]:
    """The first ``calibration_batches`` collated batches of the train split (in order: deterministic)."""
    records = ctx.splits.get("train") or ctx.splits.get("validation")
    if records is None or not len(records):
        raise RecipeError(
            f"{ctx.where('quantize')}.method: {options.method} needs the train split, which is empty."
        )
    size = options.calibration_batch_size
    n = min(len(records), options.calibration_batches * size)
    return [
        ctx.task.collate([ctx.task.encode(records[i], None) for i in range(start, min(start + size, n))])
        for start in range(0, n, size)
    ]


def _finetune(model: nn.Module, ctx, options: Finetune) -> None:
    """Train the fake-quantized ``model`` with the run's ``train`` section (epochs and lr from
    ``options``) into ``<stage folder>/finetune``; the stage keeps the model, not the optimizer state."""
    from bigmodel.training.checkpoint import finish_train_state
    from bigmodel.training.loop import fit

    if not len(ctx.splits.get("train") or []):
        raise RecipeError(
            f"{ctx.where('quantize')}.method: qat_int8 trains on the train split, which is empty."
        )
    folder = ctx.folder / "finetune"
    cfg = options.train_config(ctx.recipe.train)
    fit(model, ctx.task, ctx.splits["train"], ctx.splits.get("validation"), cfg, run_dir=folder,
        seed=ctx.seed, show_progress=ctx.progress)  # fmt: skip
    finish_train_state(folder, "none")


def _linear_weight_bytes(model: nn.Module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if type(m) is nn.Linear)


def _quantized_kind(module: nn.Module) -> str | None:
    """A readable name for an int8 module (torch.ao's reuse the float names: ``quantized.dynamic.Linear``),
    None for anything else (float modules, torch.ao's inner weight holders)."""
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    if isinstance(module, Int8Embedding | Int8WeightOnlyLinear):
        return type(module).__name__
    if isinstance(module, LinearPackedParams):
        return None
    for cls in type(module).__mro__:
        if cls.__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
            kind = cls.__module__.removeprefix("torch.ao.nn.").split(".modules")[0]
            return f"{kind}.{cls.__name__}" + (" (8-bit activations)" if cls is not type(module) else "")
    return None


def apply(ctx, options: dict):
    """The ``quantize`` stage: the quantized model, model.json's spec (the input's family + config and
    ``transform.quantize``), and its state as plain tensors."""
    from bigmodel.compress.stages import StageOutput

    where = ctx.where("quantize")
    opts = parse_options(options, where)
    model = ctx.model.eval()
    transform: dict[str, Any] = {"format": FORMAT, "method": opts.method, "engine": opts.engine,
                                 "embeddings": opts.embeddings, "full_range": full_range_safe()}  # fmt: skip
    notes = []
    if opts.method == "dynamic_int8":
        quantized = quantize_dynamic(model, opts.embeddings, opts.engine)
    elif opts.method == "weight_only_int8":
        quantized = weight_only_int8(model, opts.embeddings)
    elif opts.method == "static_int8":
        batches = _calibration(ctx, opts)
        quantized, fused = quantize_static(model, batches, ctx.task.forward, opts.embeddings, opts.engine)
        transform["fused"] = fused
        notes.append(f"calibrated on {len(batches)} train batches; fused {len(fused)} conv-bn-relu groups")
    else:
        probe = _calibration(ctx, opts.model_copy(update={"calibration_batches": 1}))[0]
        quantized, fused = quantize_aware_train(
            model, lambda m: _finetune(m, ctx, opts.finetune), probe, ctx.task.forward, opts.embeddings,
            opts.engine,
        )  # fmt: skip
        transform["fused"] = fused
        lr = opts.finetune.lr or ctx.recipe.train.optimizer.lr
        notes.append(
            f"quantization-aware training: {opts.finetune.epochs} epochs at lr {lr:g} with fake int8 "
            f"weights and activations; fused {len(fused)} conv-bn-relu groups (BatchNorm folded first)"
        )
    counts: dict[str, int] = {}
    for m in quantized.modules():
        name = _quantized_kind(m)
        if name:
            counts[name] = counts.get(name, 0) + 1
    if not any(not k.endswith(("Quantize", "DeQuantize")) for k in counts):
        raise RecipeError(
            f"{where}.method: {opts.method} found nothing to quantize in this model (it quantizes "
            f"nn.Linear{', nn.LSTM, nn.GRU' if opts.method == 'dynamic_int8' else ''}"
            f"{', Conv' if opts.method in ('static_int8', 'qat_int8') else ''}"
            f"{' and nn.Embedding' if opts.embeddings else ''}); use another method or drop the stage."
        )
    notes.append("quantized modules: " + ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())))
    if opts.method != "weight_only_int8":
        bits = "8 bits (this CPU has VNNI/AMX)" if transform["full_range"] else "7 bits (no VNNI: int16 sums)"
        notes.append(f"int8 activations use {bits}")
    family = family_of(getattr(model, "backbone", model)) or ctx.recipe.model.arch
    spec = {"family": family, "config": ctx.task.model_config(model), "transform": {"quantize": transform}}
    return StageOutput(quantized, spec, quantized_state(quantized), notes)


def load(spec: dict, tensors: dict[str, torch.Tensor], task) -> nn.Module:
    """The stage's model rebuilt from model.json (family + config + ``transform.quantize``) and
    model.safetensors, in eval mode. ``task`` None builds the bare family (a model made by the plain
    functions and saved with :func:`quantized_state`)."""
    family = get_family(spec["family"])
    if task is not None:
        model = task.build_model(family, dict(spec["config"]), None)
    else:
        model = family.model_cls(build_config(family, dict(spec["config"])))
    return rebuild(model, spec["transform"]["quantize"], tensors)
