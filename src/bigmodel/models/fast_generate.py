"""Fast greedy decoding for decoder-only models (gpt, llama): a static KV cache and last-position logits.

``models.generate.generate`` serves every option (sampling, penalties, encoder–decoders, beams); this
module does one thing, greedy decoding, with what a memory-bound decode step needs and no more:

- the KV cache is allocated once for the whole generation (``model.new_cache(max_length)``) and
  written in place, so a step neither re-allocates nor copies the growing keys/values;
- only the last position goes through the LM head (``model.head(model.features(...)[:, -1:])``): a
  prompt of T tokens costs one ``(B, V)`` row of logits, not ``(B, T, V)``;
- the attention mask lives in one pre-allocated ``(B, max_length)`` buffer, and is dropped entirely
  when the prompt has no padding (batch 1): positions then follow from the cache length;
- :class:`StaticDecoder` can roll its cache back, which speculative decoding needs
  (``models/speculative.py``).

The tokens equal ``generate(model, ..., do_sample=False)``'s: same stop and padding rules.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from bigmodel.models.generate import _EvalMode, _stop_and_pad


class StaticDecoder:
    """A decoder-only model plus its pre-allocated KV cache and attention mask, fed a few tokens at a time.

    Args:
        model: ``forward(input_ids, attention_mask, cache)``, ``new_cache(max_length)``; with
            ``features`` and ``head`` only the positions asked for reach the LM head.
        batch_size: rows ``B``.
        max_length: cached + new positions the decoder will ever hold.
        device: where the mask lives.
    """

    def __init__(
        self, model: nn.Module, batch_size: int, max_length: int, device: torch.device | str = "cpu"
    ):
        self.model, self.max_length = model, max_length
        self.cache = model.new_cache(max_length)
        self.mask = torch.ones(batch_size, max_length, dtype=torch.bool, device=device)
        self.masked = False  # whether any position is padding; if not, no mask is passed at all
        self.length = 0

    def feed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, last: int = 1
    ) -> torch.Tensor:
        """Append ``input_ids`` ``(B, T)`` to the cache; return the logits of its last ``last`` positions.

        Args:
            input_ids: new tokens after the cached ones.
            attention_mask: ``(B, T)`` True = real token, for these new tokens only (left padding of
                the prompt); None = all real.
            last: how many of the new positions need logits.

        Returns:
            ``(B, last, V)`` logits in the model's dtype.
        """
        T = input_ids.shape[1]
        end = self.length + T
        if end > self.max_length:
            raise ValueError(f"StaticDecoder of max_length={self.max_length} cannot take {self.length} + {T}")
        if attention_mask is not None and not bool(attention_mask.all()):
            self.mask[:, self.length : end] = attention_mask.bool()
            self.masked = True
        mask = self.mask[:, :end] if self.masked else None
        model = self.model
        if hasattr(model, "features") and hasattr(model, "head"):
            h = model.features(input_ids, attention_mask=mask, cache=self.cache)  # (B, T, C)
            logits = model.head(h[:, -last:])  # (B, last, V): the other positions never reach the head
        else:
            logits = model(input_ids, attention_mask=mask, cache=self.cache)[:, -last:]
        self.length = end
        return logits

    def rollback(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected speculative tokens): the buffers stay,
        their tails are overwritten by the next feed."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: the decoder holds {self.length} positions")
        for layer in self.cache:
            layer.length = length
        self.length = length


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    stop_tokens: Iterable[int] | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy decoding with a static KV cache; the tokens of ``generate(..., do_sample=False)``.

    Args:
        model: a decoder-only model (gpt, llama, or any with the same ``forward``/``new_cache``).
        input_ids: ``(B, T)`` prompts, left-padded when their lengths differ.
        attention_mask: ``(B, T)`` bool or 0/1, True = real token.
        max_new_tokens: tokens to add at most.
        stop_tokens: a row is finished once it emits one (kept); None = the config's ``eos_token_id``;
            ``()`` = never stop early.
        pad_token_id: fills finished rows (None: as ``generate``).

    Returns:
        LongTensor ``(B, T + n)``, prompt then new tokens, ``n <= max_new_tokens``.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, T = input_ids.shape
    if T < 1:
        raise ValueError("decoder-only generation needs a prompt of at least one token")
    stops, pad = _stop_and_pad(model, stop_tokens, pad_token_id)
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :T] = input_ids
    if max_new_tokens == 0:
        return out
    stop = torch.tensor(stops, dtype=torch.long, device=input_ids.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
    with _EvalMode(model):
        dec = StaticDecoder(model, B, T + max_new_tokens - 1, input_ids.device)
        logits = dec.feed(input_ids, attention_mask)[:, -1]  # (B, V)
        for i in range(max_new_tokens):
            tokens = torch.where(unfinished, logits.argmax(dim=-1), pad)  # (B,)
            out[:, T + i] = tokens
            if len(stops):
                unfinished &= ~torch.isin(tokens, stop)
                if not bool(unfinished.any()):
                    return out[:, : T + i + 1]
            if i + 1 < max_new_tokens:  # the last token is returned, never fed
                logits = dec.feed(tokens[:, None])[:, -1]
    return out
