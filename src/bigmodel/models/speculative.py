"""Speculative greedy decoding: a small draft model proposes, the large model verifies in one pass.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding") and Chen et al.
2023, in the greedy case: the draft proposes ``k`` tokens one by one (cheap), the target reads them
all in one forward pass over its KV cache and keeps the longest prefix that equals its own argmax,
plus its own token at the first disagreement. Each round therefore emits between 1 and ``k + 1``
tokens, every one of them the target's greedy choice: the output is that of greedy decoding of the
target alone (up to float ties: the verify pass multiplies ``k + 1`` rows at once, which may round
differently from one row). Rejected positions are dropped by rolling both caches back
(:meth:`StaticDecoder.rollback`).

The target pays one pass per round instead of one per token; on a memory-bound CPU a pass over
``k + 1`` tokens costs little more than over one (the weights are read once either way), so the
speed-up is about the mean tokens per round times (target step) / (target step + k draft steps).

Batch 1 only: rows of a batch would accept different numbers of tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bigmodel.models.fast_generate import StaticDecoder
from bigmodel.models.generate import _EvalMode, _stop_and_pad


@dataclass
class SpeculativeStats:
    """What a speculative generation did.

    Attributes:
        rounds: target verification passes (after the prompt's).
        proposed: draft tokens proposed.
        accepted: proposed tokens the target kept.
    """

    rounds: int = 0
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0


def _strip_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative decoding takes one prompt (batch 1), got {input_ids.shape[0]}")
    if attention_mask is not None:
        input_ids = input_ids[:, attention_mask[0].bool()]  # a left-padded row alone is its real tokens
    if input_ids.shape[1] < 1:
        raise ValueError("decoder-only generation needs a prompt of at least one token")
    return input_ids


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    k: int = 4,
    stop_tokens: Iterable[int] | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding of ``target``, sped up by ``draft``'s proposals; the same tokens as
    ``greedy_generate(target, ...)``.

    Args:
        target: the decoder-only model whose greedy output is wanted.
        draft: a cheaper decoder-only model over the same vocabulary (a smaller one trained on the same
            data, a distilled or quantized copy).
        input_ids: ``(1, T)`` one prompt.
        attention_mask: ``(1, T)``; padding positions are dropped from the prompt.
        max_new_tokens: tokens to add at most.
        k: tokens the draft proposes per round (>= 1).
        stop_tokens: stop after one of these (kept); None = the target config's ``eos_token_id``.
        return_stats: also return :class:`SpeculativeStats`.

    Returns:
        LongTensor ``(1, T + n)`` (prompt then new tokens, ``n <= max_new_tokens``), and the stats if
        asked.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = _strip_padding(input_ids, attention_mask)
    stops, _ = _stop_and_pad(target, stop_tokens, None)
    stop_set, stats = set(stops), SpeculativeStats()
    tokens = prompt[0].tolist()
    T = len(tokens)
    if max_new_tokens == 0:
        return (prompt, stats) if return_stats else prompt
    with _EvalMode(target), _EvalMode(draft):
        big = StaticDecoder(target, 1, T + max_new_tokens, prompt.device)
        small = StaticDecoder(draft, 1, T + max_new_tokens, prompt.device)
        nxt = int(big.feed(prompt)[0, -1].argmax())  # the target's own next token: always kept
        while True:
            tokens.append(nxt)
            done = len(tokens) - T
            if nxt in stop_set or done >= max_new_tokens:
                break
            # Draft: catch up on what it has not read (the last round's tokens), then propose greedily.
            n = min(k, max_new_tokens - done)  # never propose past the budget (nor past the cache)
            pending = tokens[small.length :]
            proposals = []
            for _ in range(n):
                ids = torch.tensor([pending], device=prompt.device)
                pending = [int(small.feed(ids)[0, -1].argmax())]
                proposals.append(pending[0])
            # Target: one pass over the tokens it has not read plus the proposals; its argmax at each
            # position is what greedy decoding would emit there.
            start = big.length
            fed = tokens[start:] + proposals
            choice = big.feed(torch.tensor([fed], device=prompt.device), last=n + 1)[0].argmax(-1).tolist()
            accepted = 0
            while accepted < n and proposals[accepted] == choice[accepted]:
                accepted += 1
            stats.rounds += 1
            stats.proposed += n
            stats.accepted += accepted
            kept = proposals[:accepted]
            for i, tok in enumerate(kept):  # a stop token among the accepted ends the output there
                if tok in stop_set:
                    kept = kept[: i + 1]
                    break
            tokens.extend(kept)
            big.rollback(start + len(fed) - n + len(kept))  # drop the rejected proposals
            small.rollback(min(small.length, len(tokens)))
            if (kept and kept[-1] in stop_set) or len(tokens) - T >= max_new_tokens:
                break
            nxt = choice[accepted]
    out = torch.tensor([tokens], dtype=torch.long, device=prompt.device)
    return (out, stats) if return_stats else out
