"""One contract over every registered family's tiny presets (DESIGN.md, convention 6)."""

import dataclasses

import pytest
import torch

import bigmodel.models.base as base_module
from bigmodel.hub.files import load_weights, save_weights
from bigmodel.models.registry import all_families, build_config, create_model

TINY = [(family, preset) for family in all_families() for preset in family.tiny_presets]


def _first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _every_output(out) -> torch.Tensor:
    """The summed squared means of every output tensor that carries a gradient (-inf, as in a masked log
    alignment, counted as 0)."""
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    return sum(
        t.float().nan_to_num(posinf=0.0, neginf=0.0).square().mean() for t in tensors if t.requires_grad
    )


def _dropout_on(family, rate: float = 0.1) -> dict[str, float]:
    """Every dropout rate of the family's config (``dropout``, ``attn_dropout``, ...) set to ``rate``."""
    return {f.name: rate for f in dataclasses.fields(family.config_cls) if f.name.endswith("dropout")}


def test_every_family_has_a_tiny_preset_and_example_input():
    for family in all_families():
        assert family.tiny_presets, f"{family.name} has no tiny preset"
        assert family.example_input is not None, f"{family.name} has no example_input"


# One name per concept across families; a recipe's `model.dropout` works whatever the arch.
RETIRED_NAMES = {
    "mlp_dim", "hidden_dim", "layer_norm_epsilon", "initializer_range", "tie_word_embeddings", "tie_output",
    "resid_dropout",
}  # fmt: skip


def test_every_family_speaks_one_vocabulary():
    for family in all_families():
        names = {f.name for f in dataclasses.fields(family.config_cls)}
        assert "dropout" in names, f"{family.name} has no dropout"
        assert not names & RETIRED_NAMES, f"{family.name}: {sorted(names & RETIRED_NAMES)}"
        preset = family.tiny_presets[0]
        assert create_model(preset, dropout=0.25).config.dropout == 0.25


@pytest.mark.parametrize(("family", "preset"), TINY, ids=[p for _, p in TINY])
def test_tiny_preset_contract(family, preset, tmp_path):
    torch.manual_seed(0)
    model = create_model(preset)
    assert model.num_params() > 0
    inputs = family.example_input(model.config, 3)

    # forward: finite output with the batch dimension first
    model.train()
    out = _first_tensor(model(*inputs))
    assert out.shape[0] == 3 and torch.isfinite(out).all()

    # backward reaches every trainable parameter, through every output that carries a gradient
    # (fastspeech trains its aligner and duration predictor on outputs other than the first)
    _every_output(model(*inputs)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"

    # FLOPs are counted without touching the model: mode and every tensor of the state stay as they were
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.flops(*inputs) > 0
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    # eval mode is deterministic
    model.eval()
    with torch.no_grad():
        first, second = _first_tensor(model(*inputs)), _first_tensor(model(*inputs))
    assert torch.equal(first, second)

    # config round trip through plain data, and save -> load gives identical outputs
    config = build_config(family, dataclasses.asdict(model.config))
    assert config == model.config
    save_weights(model, tmp_path / "w.safetensors")
    clone = family.model_cls(config).eval()
    load_weights(clone, tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(_first_tensor(clone(*inputs)), first)


@pytest.mark.parametrize(("family", "preset"), TINY, ids=[p for _, p in TINY])
def test_gradient_checkpointing_changes_nothing_but_memory(family, preset, monkeypatch):
    """Same seed, train mode, dropout on: the same gradients and the same buffers with and without.

    Checkpointing replays each block in the backward pass; the replay must draw the same dropout
    masks (non-reentrant checkpoint restores the RNG) and must not update BatchNorm statistics twice.
    """
    calls = []
    real = base_module.checkpoint
    monkeypatch.setattr(base_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = family.example_input(create_model(preset).config, 3)
    runs = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = create_model(preset, gradient_checkpointing=flag, **_dropout_on(family)).train()
        torch.manual_seed(1)  # the same dropout masks in both runs
        _first_tensor(model(*inputs)).float().square().mean().backward()
        runs.append((model, len(calls)))
    (plain, plain_calls), (checkpointed, total_calls) = runs
    assert plain_calls == 0 and total_calls > 0, "gradient_checkpointing=True checkpointed nothing"
    grads = {n: p.grad for n, p in checkpointed.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-6, atol=1e-7, msg=name)
    buffers = dict(checkpointed.named_buffers())
    for name, b in plain.named_buffers():
        assert torch.equal(buffers[name], b), name
