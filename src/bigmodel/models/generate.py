"""Autoregressive decoding — greedy, sampling, beam search — for decoder-only and encoder–decoder models.

The model protocol (nothing else is assumed):

- decoder-only (gpt): ``model(input_ids, attention_mask=None, cache=None) -> logits (B, T, V)``, where
  ``attention_mask`` ``(B, S)`` covers the cached and the new tokens (True = real token) and ``cache``
  is what ``model.new_cache()`` returned, appended to by each call.
- encoder–decoder (t5, transformer): ``model.encode(input_ids, attention_mask) -> encoder_out``,
  ``model.decode(decoder_input_ids, encoder_out, encoder_mask=None, cache=None) -> logits (B, T, V)``,
  ``model.new_cache()``, and ``model.config.decoder_start_token_id``. A model with both ``encode`` and
  ``decode`` is treated as an encoder–decoder.

A cache may be any nesting of lists/tuples/dicts of objects with ``reorder(index)`` (``nn.KVCache``);
beam search reorders them all.

Semantics follow Hugging Face ``generate`` so results can be compared token for token: the logits
processors are HF's (``transformers/generation/logits_process.py``) — repetition penalty first, then,
when sampling only, temperature → top-k → top-p; finished rows are filled with ``pad_token_id``;
generation stops early once every row has finished. Decoder-only outputs are prompt + new tokens;
encoder–decoder outputs start with ``decoder_start_token_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# --- logits processors: pure functions of (B, V) scores ---------------------------------------------


def apply_repetition_penalty(
    logits: torch.Tensor, token_ids: torch.Tensor, penalty: float, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """Discourage tokens already in the sequence (Keskar et al. 2019, CTRL).

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when negative,
    once however often it occurs — HF's ``RepetitionPenaltyLogitsProcessor``.

    Args:
        logits: ``(B, V)`` scores.
        token_ids: ``(B, L)`` the sequence so far.
        penalty: > 1 penalises, < 1 rewards repetition, 1 is a no-op.
        ignore: ``(B, L)`` bool, positions not to count (left padding; HF's ``prompt_ignore_length``).
    """
    B, V = logits.shape
    ids = token_ids.clamp(max=V)  # ids the head cannot produce land in a dropped extra column
    if ignore is not None:
        ids = ids.masked_fill(ignore, V)
    seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device).scatter_(1, ids, True)[:, :V]
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the ``k`` highest scores (ties with the k-th kept too), set the rest to ``-inf``."""
    k = min(max(k, min_tokens_to_keep), logits.shape[-1])
    kth = torch.topk(logits, k)[0][..., -1, None]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the most probable tokens whose probabilities sum
    to at least ``p``, set the rest to ``-inf`` (HF ``TopPLogitsWarper``, ascending-sort formulation)."""
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - p)  # the low tail whose mass is at most 1 - p
    drop_sorted[..., -min_tokens_to_keep:] = False
    drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    ignore: torch.Tensor | None = None,
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """Apply HF's processors in HF's order; temperature, top-k and top-p only when sampling."""
    scores = logits
    if repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, token_ids, repetition_penalty, ignore)
    if do_sample:
        if temperature != 1.0:
            scores = scores / temperature
        if top_k:
            scores = top_k_filter(scores, top_k, min_tokens_to_keep)
        if top_p is not None and top_p < 1.0:
            scores = top_p_filter(scores, top_p, min_tokens_to_keep)
    return scores


def _check_options(temperature, top_k, top_p, repetition_penalty, max_new_tokens) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use do_sample=False for greedy)")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None = off), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


# --- one interface over both kinds of model ----------------------------------------------------------


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list | tuple):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _reorder_cache(cache: Any, index: torch.Tensor) -> None:
    if hasattr(cache, "reorder"):
        cache.reorder(index)
    elif isinstance(cache, list | tuple):
        for c in cache:
            _reorder_cache(c, index)
    elif isinstance(cache, dict):
        for c in cache.values():
            _reorder_cache(c, index)


class _Decoder:
    """Next-token logits for a growing batch of sequences, for either protocol, with or without cache.

    ``sequences`` is what the caller extends by one column per step: the prompt for a decoder-only
    model, ``[decoder_start_token_id]`` for an encoder–decoder. Only the columns not yet in the cache
    are fed to the model.
    """

    def __init__(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, use_cache: bool
    ):
        self.model, self.use_cache = model, use_cache
        self.encoder_decoder = hasattr(model, "encode") and hasattr(model, "decode")
        mask = None if attention_mask is None else attention_mask.bool()
        if self.encoder_decoder:
            start = getattr(model.config, "decoder_start_token_id", None)
            if start is None:
                raise ValueError("encoder-decoder generation needs model.config.decoder_start_token_id")
            self.encoder_out = model.encode(input_ids, mask)
            self.encoder_mask = mask
            self.mask = None  # decoder tokens are never padding
            self.sequences = torch.full(
                (input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device
            )
        else:
            if input_ids.shape[1] < 1:
                raise ValueError("decoder-only generation needs a prompt of at least one token")
            self.mask = mask
            self.sequences = input_ids.long()
        self.cache, self.fed = None, 0

    def expand(self, n: int) -> None:
        """Repeat every row ``n`` times, batch-major (row b's copies are rows b*n .. b*n+n-1)."""

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(n, dim=0)

        self.sequences = rep(self.sequences)
        self.mask = None if self.mask is None else rep(self.mask)
        if self.encoder_decoder:
            self.encoder_out = _map_tensors(self.encoder_out, rep)
            self.encoder_mask = None if self.encoder_mask is None else rep(self.encoder_mask)

    def ignore_mask(self) -> torch.Tensor | None:
        """Positions of ``sequences`` that are padding (left out of the repetition penalty)."""
        return None if self.mask is None else ~self.mask

    def next_logits(self) -> torch.Tensor:
        """Scores for the token after ``sequences``, ``(N, V)`` fp32."""
        seqs = self.sequences
        if self.use_cache:
            if self.cache is None:
                self.cache = self.model.new_cache()
            new, cache = seqs[:, self.fed :], self.cache
            self.fed = seqs.shape[1]
        else:
            new, cache = seqs, None
        if self.encoder_decoder:
            logits = self.model.decode(new, self.encoder_out, encoder_mask=self.encoder_mask, cache=cache)
        else:
            logits = self.model(new, attention_mask=self.mask, cache=cache)
        return logits[:, -1].float()  # a (N, V) slice: the (N, T, V) logits are not copied

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per row; it is a real token for the attention mask."""
        self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = F.pad(self.mask, (0, 1), value=True)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search), in the sequences, the mask and the cache."""
        self.sequences = self.sequences.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
        if self.cache is not None:
            _reorder_cache(self.cache, index)


def _stop_and_pad(model: nn.Module, stop_tokens: Iterable[int] | None, pad_token_id: int | None):
    config = getattr(model, "config", None)
    if stop_tokens is None:
        eos = getattr(config, "eos_token_id", None)
        stop_tokens = () if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    stop_tokens = [int(t) for t in stop_tokens]
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = stop_tokens[0] if stop_tokens else 0  # HF: pad with EOS when there is no pad
    return stop_tokens, int(pad_token_id)


class _EvalMode:
    """Run in eval mode (no dropout) and restore the model's mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# --- greedy and sampling -----------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_tokens: Iterable[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens per row, greedily or by sampling.

    Args:
        model: a decoder-only or encoder–decoder model (see the module docstring). Runs in eval mode;
            its mode is restored afterwards.
        input_ids: ``(B, T)`` prompts (decoder-only; left-pad a batch of different lengths) or
            encoder inputs (encoder–decoder).
        attention_mask: ``(B, T)`` bool or 0/1, True = real token.
        max_new_tokens: tokens to add at most.
        do_sample: sample from the processed distribution; otherwise take the argmax.
        temperature: divide the scores by this before sampling (sampling only, as in HF).
        top_k: keep the k best tokens (sampling only; None or 0 = off).
        top_p: nucleus mass to keep (sampling only; None or 1.0 = off).
        repetition_penalty: HF/CTRL penalty on tokens already present (1.0 = off); prompt padding
            is not counted.
        stop_tokens: a row is finished once it emits one of these (the token is kept). None = the
            model config's ``eos_token_id`` if any; ``()`` = never stop early.
        pad_token_id: fills finished rows; None = ``config.pad_token_id``, else the first stop
            token, else 0.
        use_cache: feed only new tokens through a KV cache; False recomputes the whole sequence each
            step (same tokens, slower; for checking).
        generator: the random source for sampling, for reproducible draws.

    Returns:
        LongTensor ``(B, T + n)`` (decoder-only: prompt then new tokens) or ``(B, 1 + n)``
        (encoder–decoder: ``decoder_start_token_id`` then new tokens), ``n <= max_new_tokens``.
    """
    _check_options(temperature, top_k, top_p, repetition_penalty, max_new_tokens)
    stop_tokens, pad = _stop_and_pad(model, stop_tokens, pad_token_id)
    with _EvalMode(model):
        dec = _Decoder(model, input_ids, attention_mask, use_cache)
        device = dec.sequences.device
        stop = torch.tensor(stop_tokens, dtype=torch.long, device=device)
        unfinished = torch.ones(dec.sequences.shape[0], dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            scores = process_logits(
                dec.next_logits(),
                dec.sequences,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                ignore=dec.ignore_mask(),
            )  # (B, V)
            if do_sample:
                probs = scores.softmax(dim=-1)
                tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                tokens = scores.argmax(dim=-1)
            tokens = torch.where(unfinished, tokens, pad)  # (B,)
            dec.append(tokens)
            if len(stop_tokens):
                unfinished &= ~torch.isin(tokens, stop)
                if not bool(unfinished.any()):
                    break
        return dec.sequences


# --- beam search -------------------------------------------------------------------------------------


def _gather_beams(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[b, index[b, j], ...]`` for ``t`` ``(B, K, ...)`` and ``index`` ``(B, J)``."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 20,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    repetition_penalty: float = 1.0,
    stop_tokens: Iterable[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Beam search (HF's vectorised algorithm, deterministic: no sampling).

    Each step scores every continuation of every live beam by its summed log-probability, keeps the
    best ``2·num_beams`` (so ``num_beams`` remain that did not just stop), moves those that emitted a
    stop token — or reached ``max_new_tokens`` — to the finished set, scored ``sum_logprobs /
    new_tokens ** length_penalty``, and continues with the best ``num_beams`` live ones.

    Args:
        model: an encoder–decoder or decoder-only model (see the module docstring).
        input_ids: ``(B, T)`` encoder inputs or prompts.
        attention_mask: ``(B, T)`` True = real token.
        num_beams: beams per input.
        max_new_tokens: tokens to add at most.
        length_penalty: exponent on the length in the finished score; > 0 favours longer outputs.
        early_stopping: HF's: True stops an input once ``num_beams`` beams finished; False stops it when
            the best live beam, at its current length, cannot beat the worst finished one;
            ``"never"`` assumes live beams may grow to ``max_new_tokens`` when ``length_penalty > 0``.
        num_return_sequences: best finished beams returned per input (<= ``num_beams``).
        repetition_penalty: as in :func:`generate`, on the log-probabilities (as HF).
        stop_tokens: finish a beam on these; None = the config's ``eos_token_id``.
        pad_token_id: fills positions after a shorter beam ends; None = as in :func:`generate`.
            (HF fills them with EOS instead whenever ``pad_token_id`` is 0.)
        use_cache: as in :func:`generate`; beams follow their parents with ``KVCache.reorder``.

    Returns:
        LongTensor ``(B * num_return_sequences, P + n)``, rows of one input adjacent, best first, where
        ``P`` is the prompt length (decoder-only) or 1 (encoder–decoder).
    """
    _check_options(1.0, None, None, repetition_penalty, max_new_tokens)
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, "
            f"got {num_beams} and {num_return_sequences}"
        )
    stop_tokens, pad = _stop_and_pad(model, stop_tokens, pad_token_id)
    with _EvalMode(model):
        dec = _Decoder(model, input_ids, attention_mask, use_cache)
        B, P = dec.sequences.shape
        K, device = num_beams, dec.sequences.device
        dec.expand(K)
        max_len = P + max_new_tokens
        stop = torch.tensor(stop_tokens, dtype=torch.long, device=device)
        keep = max(2, 1 + len(stop_tokens)) * K  # enough candidates that K survive any stops
        top_k_mask = torch.arange(keep, device=device) < K  # only the K best may finish
        batch_offset = torch.arange(B, device=device)[:, None] * K  # (B, 1)

        running = torch.full((B, K, max_len), pad, dtype=torch.long, device=device)
        running[:, :, :P] = dec.sequences.view(B, K, P)
        running_scores = torch.zeros(B, K, device=device)
        running_scores[:, 1:] = -1e9  # all beams start equal: expand only the first
        finished = running.clone()  # best finished hypotheses so far
        finished_scores = torch.full((B, K), -1e9, device=device)
        finished_len = torch.zeros(B, K, dtype=torch.long, device=device)
        is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
        improvable = torch.ones(B, 1, dtype=torch.bool, device=device)

        cur = P
        while cur < max_len:
            log_probs = F.log_softmax(dec.next_logits(), dim=-1)  # (B*K, V)
            if repetition_penalty != 1.0:
                log_probs = apply_repetition_penalty(
                    log_probs, dec.sequences, repetition_penalty, dec.ignore_mask()
                )
            V = log_probs.shape[-1]
            log_probs = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)

            # Best `keep` continuations over all beams of each input.
            cand_scores, cand_index = torch.topk(log_probs, keep)  # (B, keep)
            cand_parent, cand_token = cand_index // V, cand_index % V
            cand = _gather_beams(running, cand_parent)  # (B, keep, max_len)
            cand[:, :, cur] = cand_token
            stops = torch.isin(cand_token, stop) | (cur + 1 >= max_len)  # (B, keep)

            # Live beams for the next step: the best K that did not stop.
            live_scores = cand_scores + stops.float() * -1e9
            live = torch.topk(live_scores, K)[1]  # (B, K)
            running = _gather_beams(cand, live)
            running_scores = _gather_beams(live_scores, live)
            parent = _gather_beams(cand_parent, live)  # (B, K)

            # Finished set: merge in the candidates that just stopped, if they beat what is there.
            new_len = cur + 1 - P
            just_finished = stops & top_k_mask
            scored = cand_scores / (new_len**length_penalty)
            full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
            scored = scored + (full | ~improvable | ~just_finished).float() * -1e9
            merged_scores = torch.cat([finished_scores, scored], dim=1)
            best = torch.topk(merged_scores, K)[1]
            finished = _gather_beams(torch.cat([finished, cand], dim=1), best)
            finished_scores = _gather_beams(merged_scores, best)
            finished_len = _gather_beams(
                torch.cat([finished_len, torch.full_like(cand_token, new_len)], 1), best
            )
            is_finished = _gather_beams(torch.cat([is_finished, just_finished], dim=1), best)

            dec.reorder((parent + batch_offset).view(-1))
            dec.append(running[:, :, cur].reshape(-1))
            cur += 1

            # Can a live beam still beat the worst finished one? (HF's heuristic, see early_stopping.)
            hypothetical = max_len - P if early_stopping == "never" and length_penalty > 0 else cur - P
            best_live = running_scores[:, :1] / (hypothetical**length_penalty)
            worst_done = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], -1e9)
            improvable = improvable & (best_live > worst_done).any(dim=-1, keepdim=True)
            all_full = bool(is_finished.all()) and early_stopping is True
            if not bool(improvable.any()) or all_full or bool(stops.all()):
                break

        out = finished[:, :num_return_sequences].reshape(B * num_return_sequences, max_len)
        length = P + int(finished_len[:, :num_return_sequences].max())
        return out[:, :length]
