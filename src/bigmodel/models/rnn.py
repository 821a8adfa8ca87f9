"""Recurrent networks: Elman RNN, LSTM (Hochreiter & Schmidhuber 1997) and GRU (Cho et al. 2014).

The recurrence is torch's own ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (fused kernels on CPU, cuDNN on
GPU); this file adds what a task needs around it: token embedding or float features, padding, pooling
and a linear ``head``.

Padding: a batch is right-padded and ``mask`` (B, T) marks real positions with 1. The batch is then
packed (``pack_padded_sequence``) so every sequence's recurrence stops at its own length — in both
directions: the backward direction starts at the last *real* position, not at the padding. Padded
positions therefore never change the output.

Export: ``torch.export`` can trace neither the packing (it reads the lengths' values) nor torch's
recurrent kernels with a varying length (it unrolls them). While exporting, the same recurrence is
written out (:func:`scanned_direction`): the cell's equations as a ``scan`` over time that keeps the
state unchanged at padded positions, the backward direction scanned in reverse from the padding — so it
starts at the last real position, as packing does. Outputs equal the packed path's to float rounding;
the weights and their names are the module's own.

Heads: ``sequence`` gives one logit vector per sequence from either the ``last`` hidden state (the
forward direction's state after the last real token, concatenated with the backward direction's state
after the first token) or the ``mean`` of the top layer's outputs over real positions; ``tagging``
gives one logit vector per position. With ``num_outputs=0`` there is no head and ``forward`` returns
what it would have read; ``encode`` gives the per-position outputs for any head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import Family

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
HEADS = ("sequence", "tagging")
POOLINGS = ("last", "mean")
DIRECTION_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # per layer and direction, in torch


@dataclass
class RNNConfig:
    """Recurrent network hyper-parameters. Set exactly one of ``vocab_size`` and ``input_size``.

    Attributes:
        cell: ``rnn`` (tanh Elman), ``lstm`` or ``gru``.
        vocab_size: > 0 for token input: ids (B, T) are looked up in ``embed``.
        embed_dim: embedding width for token input.
        input_size: > 0 for float features (B, T, input_size).
        hidden_size: state size per direction.
        num_layers: stacked recurrent layers.
        bidirectional: also run every layer right to left and concatenate both directions.
        dropout: on each layer's output except the last (inside torch's module), and on the features
            before the head.
        head: ``sequence`` (B, num_outputs) or ``tagging`` (B, T, num_outputs).
        pooling: for the sequence head, ``last`` hidden state or ``mean`` over real positions.
        num_outputs: size of the linear ``head``; 0 = no head (``forward`` returns the features).
        gradient_checkpointing: in training, recompute the recurrent layers' activations in the
            backward pass instead of storing them (less memory, ~1/3 more compute). Refused on CUDA
            with dropout between layers: cuDNN draws those masks from its own RNG state, which the
            replay cannot restore, so the gradients would not match the forward.
    """

    cell: str = "lstm"
    vocab_size: int = 0
    embed_dim: int = 64
    input_size: int = 0
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    head: str = "sequence"
    pooling: str = "last"
    num_outputs: int = 2
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not one of {list(CELLS)}")
        if self.vocab_size < 0 or self.input_size < 0 or (self.vocab_size > 0) == (self.input_size > 0):
            raise ValueError(
                f"vocab_size / input_size: set exactly one, vocab_size for token ids or input_size for "
                f"float features (got vocab_size={self.vocab_size}, input_size={self.input_size})"
            )
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not one of {list(HEADS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {list(POOLINGS)}")
        if self.num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head), got {self.num_outputs}")


def lengths_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) of a right-padding mask (B, T); raises ValueError if a row is not a prefix of ones.

    Packing assumes right padding; a left-padded or holed mask would silently read the wrong tokens.
    """
    mask = mask != 0
    lengths = mask.sum(dim=1)  # (B,)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        raise ValueError("mask must be right padding: ones for the real positions, then zeros")
    return lengths


class RNN(Model):
    """``embed`` (token input) → stacked recurrent ``rnn`` → pooling → dropout → linear ``head``.

    With ``num_outputs=0`` there is no head: ``forward`` returns the dropped-out features the head
    would have read, pooled ``(B, feature_dim)`` for the sequence head, ``(B, T, feature_dim)`` for
    tagging. ``encode`` gives the per-position outputs whatever the head.
    """

    def __init__(self, config: RNNConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim) if c.vocab_size else nn.Identity()
        self.rnn = CELLS[c.cell](
            input_size=c.embed_dim if c.vocab_size else c.input_size,
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            bidirectional=c.bidirectional,
            dropout=c.dropout if c.num_layers > 1 else 0.0,  # torch drops between layers only
            batch_first=True,
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(self.feature_dim, c.num_outputs) if c.num_outputs else None

    @property
    def feature_dim(self) -> int:
        """Width of the recurrent outputs: ``hidden_size``, times 2 when bidirectional."""
        return self.config.hidden_size * (2 if self.config.bidirectional else 1)

    def _run(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The recurrent stack: outputs ``(B, T, D·H)`` (zero at padding), final states, real-position
        weights ``(B, T, 1)`` (None without a mask)."""
        x = self.embed(x)  # (B, T, E)
        if torch.compiler.is_exporting():
            return self._run_scanned(x, mask)
        T = x.shape[1]
        ckpt = self.config.gradient_checkpointing
        if ckpt and self.training and torch.is_grad_enabled() and x.is_cuda and self.rnn.dropout > 0:
            raise ValueError(
                "gradient_checkpointing with dropout between recurrent layers is not exact on CUDA "
                "(cuDNN keeps its own dropout RNG state); set dropout=0, num_layers=1 or "
                "gradient_checkpointing=False"
            )
        if mask is None:
            out, h = maybe_checkpoint(self.rnn, x, enabled=ckpt)  # out (B, T, D*H); h (layers*D, B, H)
            return out, h, None
        lengths = lengths_from_mask(mask)  # (B,)
        # An all-padding row cannot be packed: run it on one position, then zero its features.
        lengths = lengths.clamp(min=1).cpu()  # packing wants lengths on the CPU
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h = maybe_checkpoint(self.rnn, packed, enabled=ckpt)  # h in the caller's batch order
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # zeros after each length
        valid = (mask != 0).unsqueeze(-1).to(out.dtype)  # (B, T, 1)
        return out * valid, h, valid

    def _run_scanned(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``_run`` without packing, for ``torch.export``: each layer and direction is
        :func:`scanned_direction` over the real positions (what dropout between layers would do is
        left out: a graph is exported in eval mode). Final states ``(layers·D, B, H)``, layer-major as
        torch orders them."""
        real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask != 0
        steps = real.transpose(0, 1).unsqueeze(-1)  # (T, B, 1)
        inputs, finals = x.transpose(0, 1), []  # (T, B, E): time first, as a scan reads it
        for layer in range(self.config.num_layers):
            outputs = []
            for reverse in (False, True) if self.config.bidirectional else (False,):
                suffix = f"_l{layer}" + ("_reverse" if reverse else "")
                weights = [getattr(self.rnn, f"{kind}{suffix}") for kind in DIRECTION_PARAMETERS]
                out, h = scanned_direction(self.config.cell, inputs, steps, *weights, reverse=reverse)
                outputs.append(out)
                finals.append(h)
            inputs = torch.cat(outputs, dim=-1)  # (T, B, D*H)
        valid = real.unsqueeze(-1).to(inputs.dtype)  # (B, T, 1)
        out = inputs.transpose(0, 1) * valid
        return out, torch.stack(finals), None if mask is None else valid

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position outputs of the top recurrent layer, both directions concatenated.

        Args:
            input_ids: token ids ``(B, T)`` (or float features ``(B, T, input_size)``).
            attention_mask: ``(B, T)``, 1 at real positions, 0 at right padding; None = no padding.

        Returns:
            ``(B, T, feature_dim)``, zero at padded positions.
        """
        return self._run(input_ids, attention_mask)[0]

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (B, D·H) for the sequence head, per-position features (B, T, D·H) for tagging.

        Args:
            x: token ids (B, T) or float features (B, T, input_size).
            mask: (B, T), 1 at real positions, 0 at right padding; ``None`` means no padding.
        """
        out, h, valid = self._run(x, mask)
        if self.config.head == "tagging":
            return out  # (B, T, D*H)
        if self.config.pooling == "mean":
            if valid is None:
                return out.mean(dim=1)  # (B, D*H)
            return out.sum(dim=1) / valid.sum(dim=1).clamp(min=1)  # (B, D*H)
        h = h[0] if isinstance(h, tuple) else h  # LSTM returns (h_n, c_n)
        # h is layer-major, (layer, direction): the top layer's forward state is at the last real
        # token, its backward state after reading back to position 0 — ordered like ``out``'s halves.
        D = 2 if self.config.bidirectional else 1
        last = h[-D:].transpose(0, 1).reshape(out.shape[0], -1)  # (B, D*H)
        return last if valid is None else last * valid[:, 0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_outputs) for the sequence head, (B, T, num_outputs) for tagging; without a
        head, the features after dropout, (B, feature_dim) or (B, T, feature_dim)."""
        x = self.drop(self.features(x, mask))
        return x if self.head is None else self.head(x)


def scanned_direction(
    cell: str,
    inputs: torch.Tensor,
    steps: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of one recurrent layer as a ``scan`` over time (torch's equations and gate order:
    RNN tanh; LSTM i, f, g, o; GRU r, z, n), traceable with a varying length.

    Args:
        cell: ``rnn``, ``lstm`` or ``gru``.
        inputs: ``(T, B, I)``, time first.
        steps: ``(T, B, 1)`` bool, True at real positions: elsewhere the state is carried unchanged and
            the output is 0, so a reverse scan starts each sequence at its last real position.
        weight_ih, weight_hh, bias_ih, bias_hh: the direction's parameters, as ``nn.RNN/LSTM/GRU`` hold
            them (``(G·H, I)``, ``(G·H, H)``, ``(G·H,)``).
        reverse: scan from the end (the backward direction).

    Returns:
        outputs ``(T, B, H)`` (0 at padding) and the final hidden state ``(B, H)``.
    """
    from torch._higher_order_ops.scan import scan  # torch's prototype scan: what torch.export loops with

    projected = nn.functional.linear(inputs, weight_ih, bias_ih)  # (T, B, G*H): every step at once
    zeros = inputs.new_zeros(inputs.shape[1], weight_hh.shape[1])  # (B, H)
    init = (zeros, zeros.clone()) if cell == "lstm" else (zeros,)

    def step(carry: tuple, xs: tuple) -> tuple[tuple, torch.Tensor]:
        h = carry[0]
        x, real = xs
        hidden = nn.functional.linear(h, weight_hh, bias_hh)
        if cell == "lstm":
            i, f, g, o = (x + hidden).chunk(4, dim=-1)
            c = f.sigmoid() * carry[1] + i.sigmoid() * g.tanh()
            new = (o.sigmoid() * c.tanh(), c)
        elif cell == "gru":
            x_r, x_z, x_n = x.chunk(3, dim=-1)
            h_r, h_z, h_n = hidden.chunk(3, dim=-1)
            r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
            new = ((1 - z) * (x_n + r * h_n).tanh() + z * h,)
        else:
            new = ((x + hidden).tanh(),)
        kept = tuple(torch.where(real, n, old) for n, old in zip(new, carry, strict=True))
        return kept, torch.where(real, new[0], 0.0)

    final, outputs = scan(step, init, (projected, steps), reverse=reverse)
    return outputs, final[0]


def _example_input(config: RNNConfig, batch_size: int = 2, seq_len: int = 7) -> tuple[torch.Tensor, ...]:
    if config.vocab_size:
        return (torch.randint(0, config.vocab_size, (batch_size, seq_len)),)
    return (torch.randn(batch_size, seq_len, config.input_size),)


PRESETS = {
    # One tiny preset per cell, odd sizes, between them every head, pooling and input kind.
    "rnn-tiny": {
        "cell": "rnn", "vocab_size": 13, "embed_dim": 5, "hidden_size": 7, "num_layers": 2,
        "bidirectional": True, "pooling": "mean", "num_outputs": 3,
    },
    "lstm-tiny": {
        "cell": "lstm", "vocab_size": 11, "embed_dim": 6, "hidden_size": 9, "num_layers": 2,
        "bidirectional": True, "dropout": 0.1, "pooling": "last", "num_outputs": 3,
    },
    "gru-tiny": {
        "cell": "gru", "input_size": 3, "hidden_size": 5, "num_layers": 1, "head": "tagging",
        "num_outputs": 4,
    },
}  # fmt: skip


FAMILY = Family(
    name="rnn",
    config_cls=RNNConfig,
    model_cls=RNN,
    presets=PRESETS,
    tiny_presets=("rnn-tiny", "lstm-tiny", "gru-tiny"),
    example_input=_example_input,
)
