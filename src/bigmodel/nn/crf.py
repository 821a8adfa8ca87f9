"""A linear-chain conditional random field over per-position tag scores (Lafferty et al. 2001).

A tagger's emissions ``(B, T, K)`` score each tag at each position independently; the CRF adds a
learned score for every tag-to-tag transition (and for starting and ending on a tag), so the whole
sequence is scored jointly (Lample et al. 2016 put one on a BiLSTM for NER). Training minimises the
negative log-likelihood of the gold sequence: ``log Z - score(gold)``, with the partition function
``Z`` summed by the forward algorithm; prediction is the Viterbi path. Both recurrences loop over time
and are vectorised over the batch and the tags.

Masks are left-aligned: ``mask[b, :n_b]`` is True for the ``n_b`` real positions of row ``b``. A row
of length 0 scores 0 and decodes to nothing.
"""

from __future__ import annotations

import torch
from torch import nn


class CRF(nn.Module):
    """Transition scores and the CRF's likelihood and decoding.

    Args:
        num_tags: K, the number of tags.

    Attributes:
        start: ``(K,)`` score of starting on each tag.
        end: ``(K,)`` score of ending on each tag.
        transitions: ``(K, K)``, ``transitions[i, j]`` = score of tag ``j`` right after tag ``i``.
    """

    def __init__(self, num_tags: int):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        # Zeros: the untrained CRF adds nothing, so training starts from the softmax tagger's scores.
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (B, T, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask must be {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        lengths = mask.sum(1)  # (B,)
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, positions[None, :] < lengths[:, None]):
            raise ValueError("mask must be left-aligned: True for the real positions, then False")
        return lengths

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The unnormalised score of ``tags`` ``(B, T)`` (any value at masked positions): ``(B,)``."""
        lengths = self._check(emissions, mask)
        B, T, K = emissions.shape  # (batch, time, tags)
        if T == 0:
            return emissions.new_zeros(B)
        real = mask.bool()
        tags = torch.where(real, tags, torch.zeros_like(tags))  # padding may hold -100
        weights = real.to(emissions.dtype)
        emitted = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1) * weights  # (B, T)
        moved = self.transitions[tags[:, :-1], tags[:, 1:]] * weights[:, 1:]  # (B, T-1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
        total = self.start[tags[:, 0]] + emitted.sum(1) + moved.sum(1) + self.end[last]
        return torch.where(lengths > 0, total, torch.zeros_like(total))

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log Z``: the log-sum-exp of the scores of all K^n tag sequences of each row, ``(B,)``."""
        lengths = self._check(emissions, mask)
        B, T, K = emissions.shape
        if T == 0:
            return emissions.new_zeros(B)
        real = mask.bool()
        alpha = self.start + emissions[:, 0]  # (B, K): log-sum of the paths ending in each tag
        for t in range(1, T):
            paths = alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1)  # (B, K_from, K_to)
            step = torch.logsumexp(paths, dim=1)  # (B, K_to)
            alpha = torch.where(real[:, t].unsqueeze(1), step, alpha)
        log_z = torch.logsumexp(alpha + self.end, dim=1)
        return torch.where(lengths > 0, log_z, torch.zeros_like(log_z))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the gold ``tags`` per row, ``(B,)`` (sum it for a summed loss)."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The Viterbi path (the highest-scoring tag sequence) of each row: ``(B, T)``, 0 at padding."""
        self._check(emissions, mask)
        B, T, K = emissions.shape
        if T == 0:
            return torch.zeros(B, 0, dtype=torch.long, device=emissions.device)
        real = mask.bool()
        best = self.start + emissions[:, 0]  # (B, K): best score of a path ending in each tag
        back = []  # back[t-1][b, j]: the best previous tag of tag j at position t
        for t in range(1, T):
            scores, previous = (best.unsqueeze(2) + self.transitions).max(dim=1)  # (B, K_to)
            best = torch.where(real[:, t].unsqueeze(1), scores + emissions[:, t], best)
            back.append(previous)
        current = (best + self.end).argmax(dim=1)  # (B,): the last real position's tag
        tags = torch.zeros(B, T, dtype=torch.long, device=emissions.device)
        for t in range(T - 1, 0, -1):
            # Past a row's end its best score did not move, so `current` waits for its last position.
            tags[:, t] = torch.where(real[:, t], current, tags[:, t])
            earlier = back[t - 1].gather(1, current.unsqueeze(1)).squeeze(1)
            current = torch.where(real[:, t], earlier, current)
        tags[:, 0] = current
        return tags * real
