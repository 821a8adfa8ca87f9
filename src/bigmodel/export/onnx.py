"""ONNX graphs of a model, checked in ONNX Runtime against PyTorch.

Route: ``torch.export`` captures the forward (:func:`bigmodel.export.program.capture`, dynamic axes as
``Dim.DYNAMIC``), then ``torch.onnx.export`` — the default dynamo exporter of torch >= 2.9, built on
onnxscript's torchlib — converts that program (opset 20) and optimises it. The TorchScript exporter
(``dynamo=False``) is deprecated and would trace again with its own rules; one capture serves both
the ``.pt2`` program and the ONNX file.

Decoders (:func:`export_decoder`) get graphs with their KV cache as explicit tensors:

- decoder-only (gpt, llama): ``prefill`` (the prompt -> last logits + the cache) and ``decode`` (one
  token + the cache -> last logits + the grown cache).
- encoder-decoder (t5, transformer): ``encoder`` (source -> encoder states), ``prefill`` (the start
  token + encoder states -> logits + self-attention cache + cross-attention keys/values) and
  ``decode`` (one token + both caches -> logits + the grown self-attention cache).

:class:`OnnxGenerator` decodes greedily with those graphs, ONNX Runtime and NumPy (no model code).
onnx, onnxruntime and onnxscript come with ``pip install bigmodel[export]``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel.errors import UserError
from bigmodel.export.program import (
    batch_axes,
    capture,
    check_inputs,
    describe_graph,
    family_of,
    max_difference,
    output_names,
    quiet,
    reason,
    run_reference,
    task_signature,
    trace_context,
)
from bigmodel.nn.attention import KVCache

DECODER_FORMAT = 1  # decoder.json's format
METADATA_KEY = "bigmodel"  # the ONNX metadata entry that describes the graph (describe_graph)


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"export: ONNX needs the '{module}' package; install it with pip install 'bigmodel[export]'."
        ) from None


def export_onnx(
    model: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | Path,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    trained: nn.Module | None = None,
) -> Path:
    """Write ``model(*example_inputs.values())`` as an ONNX file.

    Args:
        model: any module; exported in eval mode.
        example_inputs: graph input name -> example tensor, in the order the forward takes them.
        path: the ``.onnx`` file (weights inline; in a ``.data`` file beside it above 2 GB).
        dynamic: input name -> {axis: name} of the axes that may vary (None: axis 0 of every input,
            ``batch``). The ONNX inputs carry these names as symbolic dimensions.
        trained: the task's model, when ``model`` is it or wraps it (see ``trained`` of
            :func:`bigmodel.export.program.export_program`).

    The file's ``bigmodel`` metadata entry holds :func:`~bigmodel.export.program.describe_graph` as
    JSON (``export/runtime.py`` reads it to serve the graph in the model's place).

    Returns:
        ``path``. Graph outputs are named as :func:`bigmodel.export.program.output_names` says
        (``output`` for a lone tensor, a dict's keys).
    """
    _require("onnxscript")
    inputs = check_inputs(example_inputs)
    dynamic = batch_axes(inputs) if dynamic is None else dynamic
    program = capture(model, inputs, dynamic)
    described = describe_graph(program, list(inputs), model, trained)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet(), trace_context():
            onnx_program = torch.onnx.export(
                program,
                tuple(inputs.values()),
                input_names=list(inputs),
                output_names=output_names(program, list(inputs)),
                # With a program, only the axis names are read: they relabel the ONNX dimensions.
                dynamic_shapes=tuple(dict(dynamic.get(name, {})) or None for name in inputs),
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(described)
            onnx_program.save(path, external_data=None)  # inline below 2 GB, a .data file above
    except Exception as exc:  # the converter's refusals are its own exception types
        raise UserError(
            f"export: the {family_of(model)} model was traced but cannot be converted to ONNX "
            f"({reason(exc)})."
        ) from exc
    return path


def onnx_session(path: str | Path):
    """An ONNX Runtime session on the CPU for ``path``."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise UserError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}).") from None


def run_onnx(session, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run ``session`` on named tensors or arrays (extra names are ignored: an exporter may drop an
    input the graph never reads); returns {output name: array}."""
    wanted = [i.name for i in session.get_inputs()]
    missing = [n for n in wanted if n not in inputs]
    if missing:
        raise UserError(f"ONNX inputs: the graph needs {wanted}; missing {missing}.")
    feeds = {
        n: np.asarray(inputs[n].cpu() if isinstance(inputs[n], torch.Tensor) else inputs[n]) for n in wanted
    }
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as exc:  # onnxruntime's InvalidArgument, Fail, ... (a wrong dtype or shape)
        raise UserError(f"ONNX inputs: {str(exc).splitlines()[0]}") from None


def verify_onnx(
    path: str | Path, model: nn.Module, inputs: Mapping[str, torch.Tensor], atol: float = 1e-4
) -> float:
    """Run the ONNX file in ONNX Runtime (CPUExecutionProvider) and ``model`` in PyTorch on ``inputs``
    (any batch or length the dynamic axes allow); return the max absolute difference over all outputs.

    Raises:
        UserError: an output differs by more than ``atol`` (or is NaN), or has another shape.
    """
    inputs = check_inputs(inputs)
    got = run_onnx(onnx_session(path), inputs)
    return max_difference(list(got), list(got.values()), run_reference(model, inputs), atol)


def export_task_onnx(
    task, model: nn.Module, batch: dict, folder: str | Path, check_batch: dict | None = None
) -> dict[str, Path]:
    """A task's graphs in ``folder``: ``model.onnx`` (what ``task.export_signature`` names) and, for a
    model that decodes with a KV cache (causal_lm, seq2seq), ``decoder/`` (:func:`export_decoder`).

    Args:
        batch: from ``task.collate``: the example the graph is traced on.
        check_batch: another batch (other size and lengths) run in ONNX Runtime and PyTorch; must agree
            within 1e-4. None: ``batch`` itself.

    Returns:
        graph name -> path (``model``, and ``prefill``, ``decode``, ``encoder`` for decoders).
    """
    folder = Path(folder)
    module, inputs, dynamic = task_signature(task, model, batch)
    paths = {"model": export_onnx(module, inputs, folder / "model.onnx", dynamic, trained=model)}
    check = inputs if check_batch is None else task_signature(task, model, check_batch)[1]
    verify_onnx(paths["model"], module, check)
    if hasattr(model, "new_cache"):
        paths |= export_decoder(model, folder / "decoder")
    return paths


# --- decoders with their KV cache as graph inputs and outputs ----------------------------------------


def is_encoder_decoder(model: nn.Module) -> bool:
    """The protocol of models/generate.py: ``encode`` + ``decode`` is an encoder-decoder."""
    return hasattr(model, "encode") and hasattr(model, "decode")


def _num_layers(model: nn.Module) -> int:
    return len(model.new_cache())


class DecoderOnlyStep(nn.Module):
    """``(input_ids, past_key_0, past_value_0, ...) -> {logits, present_key_0, present_value_0, ...}``.

    ``input_ids`` ``(B, T)`` are the tokens after the ``P`` cached ones; past keys/values are
    ``(B, H_kv, P, D)`` per layer (none for the prefill), presents ``(B, H_kv, P + T, D)``; logits
    ``(B, V)`` are the last position's, what decoding reads.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> dict[str, torch.Tensor]:
        cache = self.model.new_cache()
        _fill(cache, past)
        logits = self.model(input_ids, cache=cache)[:, -1]  # (B, V)
        return {"logits": logits, **_presents(cache, "present")}


class EncoderStep(nn.Module):
    """``(input_ids, attention_mask) -> {encoder_out}`` ``(B, S, D)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"encoder_out": self.model.encode(input_ids, attention_mask)}


class EncoderDecoderStep(nn.Module):
    """One decoder step of an encoder-decoder.

    Prefill (no past): ``(decoder_input_ids, encoder_out, attention_mask) -> {logits, present_key_i,
    present_value_i, cross_key_i, cross_value_i}``: the cross-attention keys/values are projected once
    here. Decode: ``(decoder_input_ids, encoder_out, attention_mask, past_key_i, past_value_i...,
    cross_key_i, cross_value_i...) -> {logits, present_key_i, present_value_i}``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, decoder_input_ids: torch.Tensor, encoder_out: torch.Tensor, attention_mask: torch.Tensor, *past
    ) -> dict[str, torch.Tensor]:
        pairs = self.model.new_cache()  # [(self-attention, cross-attention)] per block
        own, cross = [p[0] for p in pairs], [p[1] for p in pairs]
        if past:
            half = len(past) // 2
            _fill(own, past[:half])
            _fill(cross, past[half:])
        logits = self.model.decode(decoder_input_ids, encoder_out, attention_mask.bool(), cache=pairs)[:, -1]
        out = {"logits": logits, **_presents(own, "present")}
        return out if past else {**out, **_presents(cross, "cross")}


def _fill(caches: list[KVCache], past: tuple[torch.Tensor, ...]) -> None:
    """Start each cache with its past keys and values (none: a prefill)."""
    if not past:
        return
    for cache, k, v in zip(caches, past[0::2], past[1::2], strict=True):
        cache.update(k, v)


def _presents(caches: list[KVCache], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for i, cache in enumerate(caches):
        out[f"{prefix}_key_{i}"], out[f"{prefix}_value_{i}"] = cache.keys, cache.values
    return out


def _kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def export_decoder(model: nn.Module, folder: str | Path) -> dict[str, Path]:
    """Write a generative model's decoding graphs and ``decoder.json`` (what :class:`OnnxGenerator`
    reads) into ``folder``; each graph is checked in ONNX Runtime against PyTorch (1e-4) on a batch
    and lengths other than its example's.

    Args:
        model: a decoder-only model (``forward(ids, cache=)``, ``new_cache``) or an encoder-decoder
            (``encode``, ``decode``, ``new_cache``), as models/generate.py drives them.
        folder: where the ``.onnx`` files go.

    Returns:
        graph name -> path: ``prefill``, ``decode`` and, for an encoder-decoder, ``encoder``.
    """
    if not hasattr(model, "new_cache"):
        raise UserError(
            f"export: the {family_of(model)} model has no KV cache (new_cache) to decode with; only "
            "generative families (gpt, llama, t5, transformer) have decoding graphs."
        )
    folder = Path(folder)
    config = model.config
    vocab = getattr(config, "tgt_vocab_size", None) or config.vocab_size  # what the decoder reads
    layers = _num_layers(model)
    if is_encoder_decoder(model):
        graphs = _encoder_decoder_graphs(model, vocab, layers)
        info = {"kind": "encoder-decoder", "decoder_start_token_id": config.decoder_start_token_id}
    else:
        graphs = _decoder_only_graphs(model, vocab, layers)
        info = {"kind": "decoder-only"}
    paths = {}
    for name, (module, example, dynamic, check) in graphs.items():
        paths[name] = export_onnx(module, example, folder / f"{name}.onnx", dynamic)
        verify_onnx(paths[name], module, check)
    eos = getattr(config, "eos_token_id", None)
    info = {"format": DECODER_FORMAT, **info, "num_layers": layers,
            "max_positions": getattr(config, "max_positions", None),
            "stop_tokens": [] if eos is None else [eos] if isinstance(eos, int) else list(eos),
            "pad_token_id": getattr(config, "pad_token_id", None),
            "graphs": {name: path.name for name, path in paths.items()}}  # fmt: skip
    (folder / "decoder.json").write_text(json.dumps(info, indent=2) + "\n")
    return paths


def _decoder_only_graphs(model: nn.Module, vocab: int, layers: int) -> dict[str, tuple]:
    """name -> (module, example inputs, dynamic axes, check inputs of another batch and length)."""
    step = DecoderOnlyStep(model)

    def prompt(batch: int, length: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.randint(0, vocab, (batch, length))}

    def with_past(batch: int, length: int) -> dict[str, torch.Tensor]:
        past = run_reference(step, prompt(batch, length))[1:]
        return {**prompt(batch, 1), **dict(zip(_kv_names("past", layers), past, strict=True))}

    past_axes = dict.fromkeys(_kv_names("past", layers), {0: "batch", 2: "past_length"})
    return {
        "prefill": (step, prompt(2, 5), {"input_ids": {0: "batch", 1: "length"}}, prompt(3, 4)),
        # One new token per step: its length is fixed at 1 (the next token), the cache grows.
        "decode": (step, with_past(2, 5), {"input_ids": {0: "batch"}, **past_axes}, with_past(3, 7)),
    }


def _encoder_decoder_graphs(model: nn.Module, vocab: int, layers: int) -> dict[str, tuple]:
    src_vocab = getattr(model.config, "vocab_size", vocab)
    start = model.config.decoder_start_token_id
    encoder, step = EncoderStep(model), EncoderDecoderStep(model)

    def source(batch: int, length: int) -> dict[str, torch.Tensor]:
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length - 2 :] = 0  # a padded row
        return {"input_ids": torch.randint(0, src_vocab, (batch, length)), "attention_mask": mask}

    def first(batch: int, length: int, decoded: int = 1) -> dict[str, torch.Tensor]:
        src = source(batch, length)
        (encoder_out,) = run_reference(encoder, src)
        ids = torch.randint(0, vocab, (batch, decoded))
        ids[:, 0] = start
        return {"decoder_input_ids": ids, "encoder_out": encoder_out, "attention_mask": src["attention_mask"]}

    def later(batch: int, length: int, decoded: int) -> dict[str, torch.Tensor]:
        inputs = first(batch, length, decoded)  # a cache of `decoded` positions (>= 2: not specialised)
        caches = run_reference(step, inputs)[1:]  # presents, then cross keys/values
        names = _kv_names("past", layers) + _kv_names("cross", layers)
        ids = torch.randint(0, vocab, (batch, 1))
        return {**inputs, "decoder_input_ids": ids, **dict(zip(names, caches, strict=True))}

    source_axes = {0: "batch", 1: "source_length"}
    memory = {"encoder_out": source_axes, "attention_mask": source_axes}
    caches = {
        **dict.fromkeys(_kv_names("past", layers), {0: "batch", 2: "past_length"}),
        **dict.fromkeys(_kv_names("cross", layers), {0: "batch", 2: "source_length"}),
    }
    return {
        "encoder": (encoder, source(2, 7), {"input_ids": source_axes, "attention_mask": source_axes},
                    source(3, 5)),
        # The first step feeds the start token alone, so its length is fixed at 1 too.
        "prefill": (step, first(2, 7), {"decoder_input_ids": {0: "batch"}, **memory}, first(3, 5)),
        "decode": (step, later(2, 7, 3), {"decoder_input_ids": {0: "batch"}, **memory, **caches},
                   later(3, 5, 4)),
    }  # fmt: skip


class OnnxGenerator:
    """Greedy decoding with the graphs :func:`export_decoder` wrote, in ONNX Runtime alone.

    Args:
        folder: holds ``decoder.json`` and the graphs it names.
    """

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        try:
            self.info = json.loads((folder / "decoder.json").read_text())
            self.sessions = {name: onnx_session(folder / file) for name, file in self.info["graphs"].items()}
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{folder}: not a folder of decoding graphs written by export_decoder ({exc})."
            ) from None
        self.layers = self.info["num_layers"]

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        max_new_tokens: int = 20,
        stop_tokens: list[int] | None = None,
    ) -> np.ndarray:
        """Greedy tokens, as ``models.generate.generate`` returns them.

        Args:
            input_ids: decoder-only, prompts ``(B, T)`` of equal length (no padding); encoder-decoder,
                the sources ``(B, S)``.
            attention_mask: encoder-decoder only, ``(B, S)``, 1 = real source token.
            max_new_tokens: tokens to add at most.
            stop_tokens: a row is finished once it emits one (then gets the model's pad id, else the
                first stop token, else 0); None = the model's eos; ``[]`` = never stop early.

        Returns:
            ``(B, T + n)`` (the prompt, then new tokens) or ``(B, 1 + n)`` (the decoder start token,
            then new tokens), ``n <= max_new_tokens``.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        stop = self.info["stop_tokens"] if stop_tokens is None else [int(t) for t in stop_tokens]
        pad = self.info["pad_token_id"]  # models.generate's rule: the model's pad, the first stop, or 0
        pad = pad if pad is not None else stop[0] if stop else 0
        if self.info["kind"] == "encoder-decoder":
            mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
            source = {"input_ids": input_ids, "attention_mask": mask}
            memory = {**run_onnx(self.sessions["encoder"], source), "attention_mask": mask}  # + encoder_out
            tokens = np.full((len(input_ids), 1), self.info["decoder_start_token_id"], dtype=np.int64)
            out = run_onnx(self.sessions["prefill"], {"decoder_input_ids": tokens, **memory})
            memory |= {n: a for n, a in out.items() if n.startswith("cross_")}  # projected once
            key = "decoder_input_ids"
        else:
            if attention_mask is not None:
                raise UserError(
                    "generate: decoder-only graphs take prompts of equal length, no attention mask."
                )
            limit = self.info.get("max_positions")
            if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
                raise UserError(
                    f"generate: {input_ids.shape[1]} prompt + {max_new_tokens} new tokens exceed the model's "
                    f"max_positions {limit}."
                )
            tokens, memory, key = input_ids, {}, "input_ids"
            out = run_onnx(self.sessions["prefill"], {key: tokens})
        unfinished = np.ones(len(tokens), dtype=bool)
        for step in range(max_new_tokens):
            new = np.where(unfinished, out["logits"].argmax(-1), pad)  # (B,)
            tokens = np.concatenate([tokens, new[:, None]], axis=1)
            unfinished &= ~np.isin(new, stop)
            if not unfinished.any() or step + 1 == max_new_tokens:
                break
            past = {"past" + n.removeprefix("present"): a for n, a in out.items() if n.startswith("present_")}
            out = run_onnx(self.sessions["decode"], {key: new[:, None], **memory, **past})
        return tokens
