"""One contract over every registered family's tiny presets (DESIGN.md, convention 6)."""

import dataclasses

import pytest
import torch

from bigmodel.hub.files import load_weights, save_weights
from bigmodel.models.registry import all_families, build_config, create_model

TINY = [(family, preset) for family in all_families() for preset in family.tiny_presets]


def _first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def test_every_family_has_a_tiny_preset_and_example_input():
    for family in all_families():
        assert family.tiny_presets, f"{family.name} has no tiny preset"
        assert family.example_input is not None, f"{family.name} has no example_input"


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

    # backward reaches every trainable parameter
    (out.float().square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"

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
