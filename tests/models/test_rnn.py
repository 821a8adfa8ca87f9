"""RNN family: parity with torch.nn.RNN/LSTM/GRU, padding invariance, pooling, heads, config."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bigmodel.models import create_model
from bigmodel.models.rnn import CELLS, FAMILY, RNNConfig

LENGTHS = [5, 2, 7, 1]  # unsorted on purpose: packing must hand results back in batch order
T = max(LENGTHS)


def right_padding_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)


def inputs_for(config: RNNConfig, B: int, T: int) -> torch.Tensor:
    if config.vocab_size:
        return torch.randint(0, config.vocab_size, (B, T))
    return torch.randn(B, T, config.input_size)


def pooled_by_hand(out: torch.Tensor, pooling: str, H: int, bidirectional: bool) -> torch.Tensor:
    """The sequence features, from torch's per-step outputs (1, L, D*H) of one unpadded sequence."""
    if pooling == "mean":
        return out.mean(dim=1)
    if not bidirectional:
        return out[:, -1]
    # forward direction ends at the last step; the backward direction ends at the first step
    return torch.cat([out[:, -1, :H], out[:, 0, H:]], dim=-1)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_parity_with_torch_module(cell, pooling, bidirectional):
    """Weights copied from a time-major torch module; padded batch vs each sequence run alone."""
    torch.manual_seed(0)
    H = 5
    config = RNNConfig(
        cell=cell, input_size=3, hidden_size=H, num_layers=2, bidirectional=bidirectional,
        pooling=pooling, num_outputs=4,
    )  # fmt: skip
    model = FAMILY.model_cls(config).eval()
    ref = CELLS[cell](3, H, num_layers=2, bidirectional=bidirectional).eval()  # (T, B, F) layout
    model.rnn.load_state_dict(ref.state_dict())

    x = torch.randn(len(LENGTHS), T, 3)
    mask = right_padding_mask(LENGTHS, T)
    x = torch.where(mask[..., None].bool(), x, torch.full_like(x, 1e3))  # loud junk in the padding
    with torch.no_grad():
        feats = model.features(x, mask)
        logits = model(x, mask)
        for b, n in enumerate(LENGTHS):
            out, _ = ref(x[b, :n, None])  # (n, 1, D*H): one sequence, no padding
            expected = pooled_by_hand(out.transpose(0, 1), pooling, H, bidirectional)
            torch.testing.assert_close(feats[b : b + 1], expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(logits, feats @ model.head.weight.T + model.head.bias)

        # Without a mask every position counts: the whole padded row is the sequence.
        out, _ = ref(x.transpose(0, 1))
        expected = pooled_by_hand(out.transpose(0, 1), pooling, H, bidirectional)
        torch.testing.assert_close(model.features(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", FAMILY.tiny_presets)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_never_changes_the_output(preset, pooling):
    torch.manual_seed(0)
    model = create_model(preset, pooling=pooling).eval()
    x = inputs_for(model.config, len(LENGTHS), T)
    mask = right_padding_mask(LENGTHS, T)
    junk = inputs_for(model.config, len(LENGTHS), T)
    keep = mask.bool() if x.dim() == 2 else mask.bool()[..., None]
    with torch.no_grad():
        logits = model(x, mask)
        torch.testing.assert_close(model(torch.where(keep, x, junk), mask), logits)
        for b, n in enumerate(LENGTHS):
            alone = model(x[b : b + 1, :n])  # no padding, no mask
            if model.config.head == "tagging":
                assert logits.shape == (len(LENGTHS), T, model.config.num_outputs)
                torch.testing.assert_close(logits[b : b + 1, :n], alone, atol=1e-6, rtol=1e-5)
                # padded positions carry zero features, so only the head's bias
                torch.testing.assert_close(logits[b, n:], model.head.bias.expand(T - n, -1))
            else:
                assert logits.shape == (len(LENGTHS), model.config.num_outputs)
                torch.testing.assert_close(logits[b : b + 1], alone, atol=1e-6, rtol=1e-5)


def test_token_input_goes_through_embed():
    torch.manual_seed(0)
    model = create_model("lstm-tiny").eval()
    c = model.config
    ref = nn.LSTM(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True, bidirectional=True)
    ref.load_state_dict(model.rnn.state_dict())
    ids = torch.randint(0, c.vocab_size, (3, 6))
    with torch.no_grad():
        _, (h, _) = ref(model.embed.weight[ids])
        torch.testing.assert_close(model.features(ids), torch.cat([h[-2], h[-1]], dim=-1))


@pytest.mark.parametrize("cell", list(CELLS))
def test_tagging_head_shape(cell):
    model = create_model("gru-tiny", cell=cell, bidirectional=True, num_layers=2)
    x = torch.randn(3, 6, 3)
    assert model(x).shape == (3, 6, 4)
    assert model(x, right_padding_mask([6, 1, 4], 6)).shape == (3, 6, 4)


@pytest.mark.parametrize("preset", FAMILY.tiny_presets)
def test_gradients_reach_every_parameter(preset):
    torch.manual_seed(0)
    model = create_model(preset).train()
    x = inputs_for(model.config, len(LENGTHS), T)
    model(x, right_padding_mask(LENGTHS, T)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_with_padding_gives_the_same_gradients():
    """The packed path checkpoints too; dropout 0.3 between the layers is replayed with the same masks."""
    x = inputs_for(create_model("lstm-tiny").config, len(LENGTHS), T)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = create_model("lstm-tiny", dropout=0.3, gradient_checkpointing=flag).train()
        torch.manual_seed(1)
        model(x, right_padding_mask(LENGTHS, T)).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_empty_sequence_gives_zero_features_and_leaves_others_alone(pooling):
    model = create_model("lstm-tiny", pooling=pooling).eval()
    x = torch.randint(0, 11, (2, 4))
    with torch.no_grad():
        feats = model.features(x, right_padding_mask([0, 3], 4))
        assert torch.all(feats[0] == 0)
        torch.testing.assert_close(feats[1:], model.features(x[1:, :3]))


@pytest.mark.parametrize("dtype", [torch.bool, torch.long, torch.float32])
def test_mask_dtypes_and_left_padding_is_refused(dtype):
    model = create_model("rnn-tiny").eval()
    x = torch.randint(0, 13, (2, 5))
    mask = right_padding_mask([5, 3], 5).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(x, right_padding_mask([5, 3], 5)))
    with pytest.raises(ValueError, match="right padding"):
        model(x, mask.flip(1))


def test_dropout_between_layers_only_when_stacked():
    assert create_model("lstm-tiny", dropout=0.3).rnn.dropout == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about dropout on a single layer
        model = create_model("lstm-tiny", dropout=0.3, num_layers=1)
    assert model.rnn.dropout == 0.0 and model.drop.p == 0.3


def test_example_input_runs():
    for preset in FAMILY.tiny_presets:
        model = create_model(preset)
        assert model(*FAMILY.example_input(model.config, 3)).shape[0] == 3


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"cell": "transformer", "input_size": 3}, "cell"),
        ({}, "vocab_size / input_size"),
        ({"vocab_size": 10, "input_size": 3}, "vocab_size / input_size"),
        ({"vocab_size": 10, "embed_dim": 0}, "embed_dim"),
        ({"input_size": 3, "hidden_size": 0}, "hidden_size"),
        ({"input_size": 3, "num_layers": 0}, "num_layers"),
        ({"input_size": 3, "dropout": -0.1}, "dropout"),
        ({"input_size": 3, "head": "span"}, "head"),
        ({"input_size": 3, "pooling": "max"}, "pooling"),
        ({"input_size": 3, "num_outputs": -1}, "num_outputs"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        RNNConfig(**overrides)
