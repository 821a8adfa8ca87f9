"""A non-autoregressive acoustic model: symbols -> log-mel frames (FastSpeech, Ren et al. 2019), with
durations from a learned monotonic alignment ("One TTS Alignment to Rule Them All", Badlani et al.
2021; the search of Glow-TTS, Kim et al. 2020).

- ``encoder``: symbol embedding + sinusoidal positions, then FFT blocks (self-attention and a 1-D
  convolutional feed-forward, pre-norm) over the symbols ``(B, N, D)``.
- ``aligner``: keys from the symbol embeddings, queries from the target mel frames (small 1-D conv
  stacks); the soft alignment of frame t to symbol n is a softmax over n of ``-temperature *
  |q_t - k_n|²``, multiplied by a beta-binomial prior that favours the diagonal (and renormalised).
  It trains with the forward-sum loss (the task's; every monotonic path summed) and gives the HARD
  alignment by monotonic alignment search (:func:`monotonic_alignment_search`, Viterbi, in torch,
  vectorised over the batch): each frame to one symbol, in order, every symbol at least one frame.
- ``length regulator`` (:func:`length_regulator`): each symbol's encoding repeated for its frames, as
  a one-hot ``(B, T, N)`` path matrix times the encodings, so it is exact and has no Python loop.
- ``decoder``: sinusoidal frame positions + FFT blocks + a linear layer to ``n_mels``; optional
  ``postnet`` (residual 1-D convolutions).
- ``duration_predictor``: log durations from the DETACHED encoder outputs (its loss does not shape
  the encoder), two conv-ReLU-norm layers and a linear layer.

Training (``forward(input_ids, attention_mask, mels, mel_lengths)``): the decoder reads the encoder
outputs expanded with the hard durations of the alignment, so the mel loss never sees the soft one.
Inference (:meth:`FastSpeech.synthesise`): durations ``round(exp(log d) * speed)``, at least 1.

Padding never changes a real item's outputs: attention ignores padded keys, and every convolution's
input is zeroed at padded positions first (symbols beyond ``attention_mask``, frames beyond
``mel_lengths``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import Family
from bigmodel.nn.attention import MultiHeadAttention
from bigmodel.nn.norms import LayerNorm
from bigmodel.nn.positions import SinusoidalPositionalEmbedding

NEG_INF = float("-inf")


@dataclass
class FastSpeechConfig:
    """FastSpeech hyper-parameters.

    Attributes:
        vocab_size: symbols (the task's vocabulary; id 0 is padding).
        n_mels: mel bands of the output frames.
        embed_dim: width of symbols and frames inside the model.
        num_layers: encoder FFT blocks.
        num_decoder_layers: decoder FFT blocks.
        num_heads: attention heads (divides ``embed_dim``).
        ffn_dim: inner channels of each block's convolutional feed-forward.
        kernel_size: the feed-forward's first convolution's width (odd).
        dropout: on embeddings, sublayer outputs and predictor layers (not on attention probabilities).
        norm_eps: LayerNorm epsilon.
        max_positions: longest symbol or frame sequence (sinusoidal table rows).
        duration_channels: channels of the duration predictor's convolutions.
        aligner_dim: width of the aligner's keys and queries.
        aligner_temperature: scale of the negative squared distances (0.0005 as Badlani et al.).
        alignment_prior: multiply the soft alignment by a beta-binomial prior near the diagonal
            (faster, steadier alignment learning).
        postnet_layers: residual convolutions after the decoder (0: none).
        gradient_checkpointing: recompute each FFT block's activations in backward.
    """

    vocab_size: int = 64
    n_mels: int = 80
    embed_dim: int = 128
    num_layers: int = 2
    num_decoder_layers: int = 3
    num_heads: int = 2
    ffn_dim: int = 384
    kernel_size: int = 3
    dropout: float = 0.1
    norm_eps: float = 1e-5
    max_positions: int = 4000
    duration_channels: int = 128
    aligner_dim: int = 80
    aligner_temperature: float = 0.0005
    alignment_prior: bool = True
    postnet_layers: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        problems = [
            (self.vocab_size < 2, f"vocab_size must be >= 2 (id 0 is padding), got {self.vocab_size}"),
            (self.n_mels < 1, f"n_mels must be >= 1, got {self.n_mels}"),
            (self.embed_dim < 1, f"embed_dim must be >= 1, got {self.embed_dim}"),
            (self.num_heads < 1 or self.embed_dim % self.num_heads,
             f"num_heads {self.num_heads} must divide embed_dim {self.embed_dim}"),
            (self.num_layers < 0 or self.num_decoder_layers < 1,
             f"need num_layers >= 0 and num_decoder_layers >= 1, got {self.num_layers} and "
             f"{self.num_decoder_layers}"),
            (self.ffn_dim < 1 or self.duration_channels < 1 or self.aligner_dim < 1,
             "ffn_dim, duration_channels and aligner_dim must be >= 1"),
            (self.kernel_size < 1 or self.kernel_size % 2 == 0,
             f"kernel_size must be odd, got {self.kernel_size}"),
            (not 0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.max_positions < 1, f"max_positions must be >= 1, got {self.max_positions}"),
            (self.aligner_temperature <= 0,
             f"aligner_temperature must be > 0, got {self.aligner_temperature}"),
            (self.postnet_layers < 0, f"postnet_layers must be >= 0, got {self.postnet_layers}"),
        ]  # fmt: skip
        bad = [message for failed, message in problems if failed]
        if bad:
            raise ValueError("; ".join(bad))


class FastSpeechOutputs(NamedTuple):
    """What :class:`FastSpeech` returns.

    Attributes:
        mel: predicted frames ``(B, T, n_mels)`` (after the postnet, if any), zero at padded frames.
        mel_decoder: the decoder's frames before the postnet ``(B, T, n_mels)`` (``mel`` without one).
        log_durations: predicted log durations ``(B, N)`` (0 at padded symbols).
        durations: frames per symbol ``(B, N)`` long: the hard alignment's in training, the predicted
            ones in :meth:`FastSpeech.synthesise`.
        mel_lengths: real frames per item ``(B,)``.
        log_alignment: log soft alignment ``(B, T, N)`` (-inf at padded symbols; None in synthesis).
        hard_alignment: the one-hot monotonic path ``(B, T, N)`` (None in synthesis).
    """

    mel: torch.Tensor
    mel_decoder: torch.Tensor
    log_durations: torch.Tensor
    durations: torch.Tensor
    mel_lengths: torch.Tensor
    log_alignment: torch.Tensor | None = None
    hard_alignment: torch.Tensor | None = None


# torch.export saves a program's output structure by name: a NamedTuple must be registered for that.
torch.utils._pytree._register_namedtuple(
    FastSpeechOutputs, serialized_type_name="bigmodel.models.fastspeech.FastSpeechOutputs"
)


# --- alignment and length regulation (no parameters) --------------------------------------------------


@torch.no_grad()
def monotonic_alignment_search(
    log_alignment: torch.Tensor, text_lengths: torch.Tensor, mel_lengths: torch.Tensor
) -> torch.Tensor:
    """The most likely monotonic path through ``log_alignment`` ``(B, T, N)``: one-hot ``(B, T, N)``.

    A path gives every frame ``t < mel_lengths[b]`` one symbol ``n < text_lengths[b]``: frame 0 symbol
    0, the last frame the last symbol, and from one frame to the next the same symbol or the next one
    (so every symbol gets at least one frame; needs ``text_lengths <= mel_lengths``). Viterbi: a
    forward pass over frames keeps the best score of each (frame, symbol) and whether it came from the
    previous symbol; backtracking starts at each item's own last frame. Padded frames are all zero."""
    B, T, N = log_alignment.shape
    scores = log_alignment.float()
    symbols = torch.arange(N, device=scores.device)
    allowed = symbols[None, :] < text_lengths[:, None]  # (B, N)
    scores = scores.masked_fill(~allowed[:, None, :], NEG_INF)
    best = torch.full((B, N), NEG_INF, device=scores.device)
    best[:, 0] = scores[:, 0, 0]
    came_from_previous = torch.zeros(B, T, N, dtype=torch.bool, device=scores.device)
    minus_inf = torch.full((B, 1), NEG_INF, device=scores.device)
    for t in range(1, T):
        previous = torch.cat([minus_inf, best[:, :-1]], dim=1)  # the score of symbol n-1 at t-1
        step = previous > best
        came_from_previous[:, t] = step
        best = torch.where(step, previous, best) + scores[:, t]
    path = torch.zeros(B, T, N, dtype=log_alignment.dtype, device=scores.device)
    index = (text_lengths - 1).long()  # (B,) the symbol at each item's last frame
    rows = torch.arange(B, device=scores.device)
    for t in range(T - 1, -1, -1):
        active = t < mel_lengths  # (B,) frame t is real
        path[rows, t, index] = active.to(path.dtype)
        back = came_from_previous[rows, t, index] & active
        index = (index - back.long()).clamp_min(0)
    return path


def path_from_durations(durations: torch.Tensor, frames: int) -> torch.Tensor:
    """One-hot ``(B, frames, N)``: frame t belongs to symbol n when ``start_n <= t < start_n + d_n``."""
    ends = durations.cumsum(dim=1)  # (B, N)
    starts = ends - durations
    t = torch.arange(frames, device=durations.device)[None, :, None]  # (1, T, 1)
    return ((t >= starts[:, None, :]) & (t < ends[:, None, :])).float()


def length_regulator(
    x: torch.Tensor, durations: torch.Tensor, frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each symbol's vector of ``x`` ``(B, N, D)`` repeated ``durations`` ``(B, N)`` times: ``(B, T, D)``
    (zero after each item's frames) and the lengths ``(B,)``; ``T`` is ``frames`` or the longest item."""
    durations = durations.long().clamp_min(0)
    lengths = durations.sum(dim=1)
    T = int(lengths.max()) if frames is None else frames
    path = path_from_durations(durations, T).to(x.dtype)
    return path @ x, lengths


def beta_binomial_prior(
    text_lengths: torch.Tensor, mel_lengths: torch.Tensor, N: int, T: int
) -> torch.Tensor:
    """Log prior ``(B, T, N)`` of frame t on symbol n: BetaBinomial(n; N_b - 1, t + 1, T_b - t)
    (Badlani et al. 2021, eq. 6, scaling 1): its mass sits near the diagonal n/N_b = t/T_b.
    -inf at padded symbols; padded frames get a flat 0."""
    device = text_lengths.device
    n = torch.arange(N, device=device, dtype=torch.float32)[None, None, :]  # (1, 1, N)
    t = torch.arange(T, device=device, dtype=torch.float32)[None, :, None]  # (1, T, 1)
    count = (text_lengths.float() - 1)[:, None, None]  # (B, 1, 1)
    a = t + 1
    b = (mel_lengths.float()[:, None, None] - t).clamp_min(1)

    # Every argument of the gamma functions below is a whole number up to N + T: lgamma(x) = log((x-1)!)
    # from a cumulative table (ONNX has no lgamma).
    log_factorial = torch.cat(
        [n.new_zeros(1), torch.arange(1, N + T + 2, device=device).float().log().cumsum(0)]
    )

    def log_gamma(x):
        return log_factorial[(x - 1).long().clamp(0, N + T + 1)]

    def log_beta(x, y):
        return log_gamma(x) + log_gamma(y) - log_gamma(x + y)

    k = torch.minimum(n, count)
    log_choose = log_gamma(count + 1) - log_gamma(k + 1) - log_gamma(count - k + 1)
    log_prior = log_choose + log_beta(k + a, count - k + b) - log_beta(a, b)
    real_symbol = n < text_lengths[:, None, None]
    real_frame = t < mel_lengths[:, None, None]
    log_prior = torch.where(real_frame, log_prior, torch.zeros_like(log_prior))
    return log_prior.masked_fill(~real_symbol, NEG_INF)


# --- blocks ----------------------------------------------------------------------------------------


class ConvFeedForward(nn.Module):
    """``fc1`` (conv, ``kernel_size``) -> ReLU -> dropout -> ``fc2`` (conv 1x1), over ``(B, T, D)``."""

    def __init__(self, dim: int, hidden: int, kernel_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Conv1d(dim, hidden, kernel_size, padding=kernel_size // 2)
        self.fc2 = nn.Conv1d(hidden, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.fc1((x * keep).transpose(1, 2))))  # (B, hidden, T)
        return self.fc2(h).transpose(1, 2) * keep


class FFTBlock(nn.Module):
    """Pre-norm self-attention then a convolutional feed-forward, each added to the residual;
    ``x`` ``(B, T, D)``, ``keep`` ``(B, T, 1)`` 1 at real positions."""

    def __init__(self, c: FastSpeechConfig):
        super().__init__()
        self.norm1 = LayerNorm(c.embed_dim, c.norm_eps)
        # no dropout on the attention probabilities: on a CPU its (B, H, T, T) masks cost more than the
        # block's matmuls at these widths; dropout stays on the sublayer outputs
        self.attn = MultiHeadAttention(c.embed_dim, c.num_heads)
        self.norm2 = LayerNorm(c.embed_dim, c.norm_eps)
        self.mlp = ConvFeedForward(c.embed_dim, c.ffn_dim, c.kernel_size, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_padding_mask=keep[..., 0] > 0))
        x = x + self.drop(self.mlp(self.norm2(x), keep))
        return x * keep


class FFTStack(nn.Module):
    """Sinusoidal positions + ``blocks`` + a final norm (pre-norm blocks need one)."""

    def __init__(self, c: FastSpeechConfig, layers: int):
        super().__init__()
        self.positions = SinusoidalPositionalEmbedding(c.embed_dim, c.max_positions)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(FFTBlock(c) for _ in range(layers))
        self.norm = LayerNorm(c.embed_dim, c.norm_eps)
        self.checkpointing = c.gradient_checkpointing

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.drop(x + self.positions(torch.arange(x.shape[1], device=x.device)))
        for block in self.blocks:
            x = maybe_checkpoint(block, x, keep, enabled=self.checkpointing)
        return self.norm(x) * keep


class ConvStack(nn.Module):
    """1-D convolutions over ``(B, T, C)`` with ReLU between them; the input zeroed at padding first."""

    def __init__(self, widths: list[int], kernels: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(i, o, k, padding=k // 2)
            for i, o, k in zip(widths[:-1], widths[1:], kernels, strict=True)
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = (x * keep).transpose(1, 2)
        for i, conv in enumerate(self.convs):
            h = conv(h) if i == 0 else conv(torch.relu(h) * keep.transpose(1, 2))
        return h.transpose(1, 2) * keep


class Aligner(nn.Module):
    """Soft alignment ``(B, T, N)`` of mel frames (queries) to symbol embeddings (keys)."""

    def __init__(self, c: FastSpeechConfig):
        super().__init__()
        self.keys = ConvStack([c.embed_dim, 2 * c.embed_dim, c.aligner_dim], [3, 1])
        self.queries = ConvStack([c.n_mels, 2 * c.n_mels, c.n_mels, c.aligner_dim], [3, 1, 1])
        self.temperature, self.prior = c.aligner_temperature, c.alignment_prior

    def forward(self, embedded, text_keep, mels, mel_keep, text_lengths, mel_lengths) -> torch.Tensor:
        k = self.keys(embedded, text_keep)  # (B, N, A)
        q = self.queries(mels, mel_keep)  # (B, T, A)
        # |q - k|² = |q|² + |k|² - 2 q.k: one batched matmul instead of a (B, T, N, A) difference
        distance = q.square().sum(-1)[:, :, None] + k.square().sum(-1)[:, None, :] - 2 * q @ k.transpose(1, 2)
        scores = (-self.temperature * distance).masked_fill(text_keep[:, None, :, 0] == 0, NEG_INF)
        log_alignment = scores.log_softmax(dim=-1)
        if self.prior:
            prior = beta_binomial_prior(text_lengths, mel_lengths, k.shape[1], q.shape[1])
            log_alignment = (log_alignment + prior).log_softmax(dim=-1)
        return log_alignment


class DurationPredictor(nn.Module):
    """Log durations ``(B, N)`` from symbol encodings ``(B, N, D)``: (conv -> ReLU -> norm -> dropout) x 2
    -> linear."""

    def __init__(self, c: FastSpeechConfig):
        super().__init__()
        w = c.duration_channels
        self.conv1 = nn.Conv1d(c.embed_dim, w, 3, padding=1)
        self.norm1 = LayerNorm(w, c.norm_eps)
        self.conv2 = nn.Conv1d(w, w, 3, padding=1)
        self.norm2 = LayerNorm(w, c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(w, 1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            x = self.drop(norm(torch.relu(conv((x * keep).transpose(1, 2)).transpose(1, 2))))
        return (self.out(x * keep) * keep)[..., 0]


class FastSpeech(Model):
    """Symbols ``(B, N)`` -> log-mel frames ``(B, T, n_mels)``; see the module docstring."""

    def __init__(self, config: FastSpeechConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        self.encoder = FFTStack(c, c.num_layers)
        self.aligner = Aligner(c)
        self.duration_predictor = DurationPredictor(c)
        self.decoder = FFTStack(c, c.num_decoder_layers)
        self.head = nn.Linear(c.embed_dim, c.n_mels)
        widths = [c.n_mels] + [c.embed_dim] * (c.postnet_layers - 1) + [c.n_mels] if c.postnet_layers else []
        self.postnet = ConvStack(widths, [5] * c.postnet_layers) if c.postnet_layers else None

    @property
    def feature_dim(self) -> int:
        return self.config.embed_dim

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(embedded (B, N, D), encoded (B, N, D), keep (B, N, 1), lengths (B,))``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = (attention_mask != 0).unsqueeze(-1).float()
        embedded = self.embed(input_ids) * keep
        return embedded, self.encoder(embedded, keep), keep, keep[..., 0].sum(1).long()

    def decode(self, expanded: torch.Tensor, mel_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, T, n_mels)`` after and before the postnet, from expanded encodings ``(B, T, D)``."""
        mel = self.head(self.decoder(expanded, mel_keep)) * mel_keep
        if self.postnet is None:
            return mel, mel
        return mel + self.postnet(mel, mel_keep), mel

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        mels: torch.Tensor,
        mel_lengths: torch.Tensor | None = None,
    ) -> FastSpeechOutputs:
        """Training (teacher forcing by the alignment).

        Args:
            input_ids: symbol ids ``(B, N)``, 0 at padding.
            attention_mask: ``(B, N)`` 1 at real symbols (None: all real).
            mels: target frames ``(B, T, n_mels)``.
            mel_lengths: real frames per item ``(B,)`` (None: all ``T``); each >= its symbol count.
        """
        B, T, _ = mels.shape
        if mel_lengths is None:
            mel_lengths = torch.full((B,), T, dtype=torch.long, device=mels.device)
        mel_keep = (torch.arange(T, device=mels.device)[None, :] < mel_lengths[:, None]).unsqueeze(-1).float()
        embedded, encoded, keep, text_lengths = self.encode(input_ids, attention_mask)
        log_alignment = self.aligner(embedded, keep, mels * mel_keep, mel_keep, text_lengths, mel_lengths)
        hard = monotonic_alignment_search(log_alignment.detach(), text_lengths, mel_lengths)
        durations = hard.sum(dim=1).long()  # (B, N)
        mel, mel_decoder = self.decode(hard @ encoded, mel_keep)
        log_durations = self.duration_predictor(encoded.detach(), keep)
        return FastSpeechOutputs(mel, mel_decoder, log_durations, durations, mel_lengths, log_alignment, hard)

    @torch.no_grad()
    def synthesise(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        speed: float | torch.Tensor = 1.0,
    ) -> FastSpeechOutputs:
        """Frames from predicted durations ``max(1, round(exp(log d) / speed))`` (``speed`` > 1 is faster;
        a number or one per item ``(B,)``)."""
        _, encoded, keep, _ = self.encode(input_ids, attention_mask)
        log_durations = self.duration_predictor(encoded, keep)
        speed = torch.as_tensor(speed, dtype=encoded.dtype, device=encoded.device).reshape(-1, 1)
        durations = (log_durations.exp() / speed).round().clamp_min(1).long() * keep[..., 0].long()
        expanded, lengths = length_regulator(encoded, durations)
        mel_keep = (
            torch.arange(expanded.shape[1], device=lengths.device)[None, :] < lengths[:, None]
        ).unsqueeze(-1)
        mel, mel_decoder = self.decode(expanded, mel_keep.float())
        return FastSpeechOutputs(mel, mel_decoder, log_durations, durations, lengths)


def _example_input(config: FastSpeechConfig, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    """Symbols with one padded row, and target frames at least as many as the symbols."""
    N, T = 7, 16
    input_ids = torch.randint(1, config.vocab_size, (batch_size, N))
    attention_mask = torch.ones(batch_size, N, dtype=torch.long)
    attention_mask[1:, -2:] = 0
    input_ids = input_ids * attention_mask
    mels = torch.randn(batch_size, T, config.n_mels)
    mel_lengths = torch.full((batch_size,), T, dtype=torch.long)
    mel_lengths[1:] = T - 3
    return input_ids, attention_mask, mels, mel_lengths


PRESETS = {
    "fastspeech-tiny": {
        "vocab_size": 11, "n_mels": 6, "embed_dim": 8, "num_layers": 1, "num_decoder_layers": 1,
        "num_heads": 2, "ffn_dim": 12, "duration_channels": 5, "aligner_dim": 4, "postnet_layers": 2,
        "max_positions": 64,
    },
    "fastspeech-small": {"embed_dim": 128, "num_layers": 2, "num_decoder_layers": 3, "ffn_dim": 384},
}  # fmt: skip


FAMILY = Family(
    name="fastspeech",
    config_cls=FastSpeechConfig,
    model_cls=FastSpeech,
    presets=PRESETS,
    tiny_presets=("fastspeech-tiny",),
    example_input=_example_input,
)
