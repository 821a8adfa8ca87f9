"""``Model.flops`` (counted op by op) against closed forms: exact for an MLP and for recurrent cells,
and against the analytic PaLM count ``flops_per_token`` that gpt and bert report for MFU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigmodel.models import create_model


def test_mlp_flops_are_two_per_multiply_add_of_every_linear():
    model = create_model("mlp", input_shape=(7,), hidden_sizes=[13, 5], num_outputs=3, norm="batch")
    batch = 4
    # BatchNorm, ReLU and the bias adds are not counted; each Linear costs 2·in·out per example.
    assert model.flops(torch.randn(batch, 7)) == 2 * (7 * 13 + 13 * 5 + 5 * 3) * batch


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("padded", [False, True])
def test_recurrent_flops_count_every_weight_matrix_once_per_real_token(cell, padded):
    # CPU LSTM runs as one fused mkldnn kernel per layer and direction, GRU and RNN as mm ops; packed
    # input (padding) runs the recurrence on the real tokens only.
    model = create_model(
        "rnn", cell=cell, input_size=3, hidden_size=5, num_layers=2, bidirectional=True, num_outputs=4
    )
    x, mask = torch.randn(2, 7, 3), torch.ones(2, 7)
    mask[1, 4:] = 0
    tokens = 7 + 4 if padded else 2 * 7
    matrices = sum(p.numel() for name, p in model.rnn.named_parameters() if name.startswith("weight"))
    head = 2 * 10 * 4 * 2  # (B=2, 2·H) @ (2·H, 4)
    assert model.flops(x, mask if padded else None) == 2 * tokens * matrices + head


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def test_gpt_counted_flops_match_the_palm_count():
    """Counted: every Linear (the tied head once) at 2·in·out per token, plus SDPA's QKᵀ and AV over
    the full T×T scores (causal masking is not discounted) = 2·W + 4·L·C·T per token, exactly.
    PaLM's forward third, ``flops_per_token / 3``, is 2·N + 4·L·C·T with N all non-embedding
    parameters: it also counts biases and LayerNorm weights as matmul weights, ~0.4 % more here."""
    B, T = 2, 64
    model = create_model("gpt", vocab_size=1000, max_positions=128, embed_dim=256, num_heads=4, num_layers=2)
    c = model.config
    counted = model.flops(torch.randint(0, c.vocab_size, (B, T)))
    assert counted == B * T * (2 * _linear_weights(model) + 4 * c.num_layers * c.embed_dim * T)
    palm = B * T * model.flops_per_token(T) / 3
    assert 0.99 < counted / palm <= 1.0


def test_bert_counted_flops_match_the_palm_count():
    """As for gpt, over the bare encoder (forward runs neither pooler nor MLM head): bidirectional
    attention, so every query sees all T keys in both counts."""
    B, T = 2, 64
    model = create_model(
        "bert", vocab_size=1000, max_positions=128, embed_dim=256, num_heads=4, num_layers=2, ffn_dim=1024,
        add_pooler=False,
    )  # fmt: skip
    c = model.config
    counted = model.flops(torch.randint(0, c.vocab_size, (B, T)), torch.ones(B, T, dtype=torch.long))
    assert counted == B * T * (2 * _linear_weights(model) + 4 * c.num_layers * c.embed_dim * T)
    palm = B * T * model.flops_per_token(T, training=False)
    assert 0.99 < counted / palm <= 1.0
