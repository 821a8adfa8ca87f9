"""What every native model offers, whatever its family."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bigmodel.nn.attention import KVCache

# --- FLOP formulas FlopCounterMode lacks (torch 2.13) ------------------------------------------------


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # The CPU kernel, counted as FlopCounterMode counts the CUDA ones: QKᵀ and AV over the full T×S
    # score matrix (a causal mask is not discounted on any device).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _rnn_flops(input_shape, weights, *args, out_shape=None, **kwargs) -> int:
    # A fused RNN kernel multiplies every token (each time step of each row; packed or not, the input
    # is (..., features)) once by each of its weight matrices, input-to-hidden and hidden-to-hidden.
    tokens = math.prod(input_shape[:-1])
    return sum(2 * tokens * shape[0] * shape[1] for shape in weights if len(shape) == 2)


def _mkldnn_rnn_layer_flops(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return _rnn_flops(input_shape, [w_ih, w_hh])  # one layer, one direction per call


_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,  # LSTM on CPU (GRU, RNN run as mm ops)
    torch.ops.aten._cudnn_rnn: _rnn_flops,  # every recurrent cell on CUDA: all layers and directions
}


class Model(nn.Module):
    """Base of native models: holds its config dataclass, counts its parameters and FLOPs."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def flops(self, *inputs: Any, **kwargs: Any) -> int:
        """Forward FLOPs for this batch, ``self(*inputs, **kwargs)``; a training step costs ≈ 3×.

        Counted op by op with ``torch.utils.flop_counter.FlopCounterMode``, so every family gets an
        exact count of what it runs without a formula of its own: matrix multiplies (recurrent
        kernels included), convolutions and attention's ``QKᵀ`` and ``AV``, at 2 FLOPs per
        multiply-add. Elementwise ops, biases, norms, softmax and embedding lookups count as zero.

        gpt and bert also have ``flops_per_token``, the analytic PaLM formula used for MFU; it counts
        bias and norm parameters as matmul weights, so it reads a little higher (~0.4 % at width 256).

        The forward runs once in eval mode under ``no_grad``, so no dropout RNG is drawn and no
        BatchNorm statistics move; every submodule's train/eval mode is restored afterwards.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as counter:
                self(*inputs, **kwargs)
        finally:
            for m, training in modes:
                m.training = training
        return counter.get_total_flops()


# What each special token id outside the vocabulary means in an encoder-decoder model.
SEQ2SEQ_TOKEN_CONSEQUENCES = {
    "pad_token_id": "shifted labels (-100 -> pad) and finished generations would hold an id the decoder "
    "cannot embed",
    "eos_token_id": "the model never produces it, so generation never stops on it",
    "decoder_start_token_id": "the decoder cannot embed it, so forward and generation fail; encode is "
    "unaffected",
}


def warn_outside_vocab(config: Any, vocab_size: int, consequences: Mapping[str, str]) -> None:
    """Warn, never raise, for each special token id of ``config`` outside ``[0, vocab_size)``.

    Published configs carry such ids: a GPT-2 config trimmed to a smaller vocabulary keeps
    ``eos_token_id=50256``. transformers loads them with a warning, and so do we, because they change
    nothing the model computes on real tokens, only what generation or label shifting can meet.

    Args:
        config: the config dataclass (its fields are read by name).
        vocab_size: rows of the embedding the ids index.
        consequences: field name -> what an out-of-range value means for that field, for the message.
    """
    for name, consequence in consequences.items():
        token = getattr(config, name)
        if token is not None and not 0 <= token < vocab_size:
            warnings.warn(
                f"{type(config).__name__}: {name}={token} is outside the vocabulary [0, {vocab_size}); "
                f"kept as given, but {consequence}",
                UserWarning,
                stacklevel=4,  # the caller of Config(...): warn -> here -> __post_init__ -> __init__
            )


def maybe_checkpoint(module: nn.Module, *args: Any, enabled: bool) -> Any:
    """``module(*args)``; with ``enabled``, in training, its activations are recomputed in backward.

    Gradient (activation) checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
    Cost"): only the block's inputs are kept, and its forward runs again during the backward pass —
    less memory for about a third more compute. In eval mode or under ``no_grad`` nothing is saved
    for backward, so the module simply runs.

    Non-reentrant ``checkpoint`` stashes and restores the CPU and CUDA RNG states, so dropout draws
    the same masks on the replay and the gradients equal those without checkpointing.
    """
    if not (enabled and module.training and torch.is_grad_enabled()):
        return module(*args)
    if next(module.buffers(), None) is None or torch.compiler.is_compiling():
        # Compiled, the replay is a pure function in the backward graph (buffers update once, in the
        # forward graph), and Dynamo could not trace the context_fn below anyway.
        return checkpoint(module, *args, use_reentrant=False)
    # The eager replay must leave the module as the forward did: BatchNorm would otherwise update its
    # running statistics (and num_batches_tracked) a second time per step.
    return checkpoint(module, *args, use_reentrant=False, context_fn=lambda: _replay_keeps_buffers(module))


def _replay_keeps_buffers(module: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """``checkpoint``'s ``context_fn``: nothing around the forward, buffers restored after the replay."""
    return contextlib.nullcontext(), _restore_buffers(module)


@contextlib.contextmanager
def _restore_buffers(module: nn.Module) -> Iterator[None]:
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@torch.no_grad()
def predict_outputs(model: nn.Module, *inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model(*inputs)`` for every row, in eval mode, in batches of ``batch_size`` rows.

    ``inputs`` share their first (row) dimension: features, or token ids and an attention mask.
    """
    was_training = model.training
    model.eval()
    n = len(inputs[0])
    outputs = [model(*(t[i : i + batch_size] for t in inputs)) for i in range(0, n, batch_size)]
    model.train(was_training)
    return torch.cat(outputs)


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: ``[start, y_0, ..., y_{T-2}]``, ``-100`` replaced by the pad id.

    The same as Hugging Face ``T5PreTrainedModel._shift_right``.
    """
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


class EncoderDecoder(Model):
    """The encoder–decoder protocol that ``models/generate.py`` drives, written once.

    A subclass defines ``encode(input_ids, attention_mask)``, ``decode(decoder_input_ids,
    encoder_out, encoder_mask, cache)`` and a ``decoder`` with ``blocks``; its config has
    ``decoder_start_token_id`` and ``pad_token_id``.

    With ``num_decoder_layers=0`` the subclass builds no decoder (``self.decoder is None``) and no
    output head: an encoder-only model, whose only use is ``encode``. Building the unused decoder
    would leave parameters without gradients, which DDP refuses.
    """

    @property
    def encoder_only(self) -> bool:
        """True when built with ``num_decoder_layers=0``: no decoder, no head, only ``encode``."""
        return self.decoder is None

    def _require_decoder(self, method: str) -> None:
        if self.encoder_only:
            raise ValueError(
                f"{type(self).__name__}.{method}: this model is encoder-only (num_decoder_layers=0) and "
                "has no decoder; call encode(input_ids, attention_mask) for its hidden states"
            )

    def new_cache(self, max_length: int | None = None) -> list[tuple[KVCache, KVCache]]:
        """One ``(self-attention, cross-attention)`` KVCache pair per decoder block.

        Args:
            max_length: preallocate the self-attention caches for this many decoder positions.
        """
        self._require_decoder("new_cache")
        return [(KVCache(max_length), KVCache()) for _ in self.decoder.blocks]

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing on ``labels`` ``(B, T)``; see :func:`shift_right`."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, T, V)``. Without ``decoder_input_ids`` they are ``labels`` shifted right.

        The loss (cross-entropy against ``labels``, ignoring -100) belongs to the task.

        Raises:
            ValueError: the model is encoder-only (call ``encode``), or neither ``decoder_input_ids``
                nor ``labels`` is given.
        """
        self._require_decoder("forward")
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError(
                    f"{type(self).__name__}.forward needs decoder_input_ids or labels to shift right"
                )
            decoder_input_ids = self.shift_right(labels)
        encoder_out = self.encode(input_ids, attention_mask)  # (B, S, D)
        return self.decode(decoder_input_ids, encoder_out, attention_mask)  # (B, T, V)
