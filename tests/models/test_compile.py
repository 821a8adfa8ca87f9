"""``torch.compile`` compatibility of every tiny preset, on CPU (slow: minutes of Inductor compiles;
run with ``-m slow``). Graph breaks are allowed; errors and numeric differences are not."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from bigmodel.models.registry import all_families, create_model

pytestmark = pytest.mark.slow

TINY = [(family, preset) for family in all_families() for preset in family.tiny_presets]


def _first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize(("family", "preset"), TINY, ids=[p for _, p in TINY])
def test_compiled_model_matches_eager(family, preset):
    torch._dynamo.reset()  # a fresh cache per preset: shared block code must not hit the recompile limit
    counters.clear()
    # Dropout off: compiled code draws its masks from Inductor's own RNG stream, not eager's.
    no_dropout = {f.name: 0.0 for f in dataclasses.fields(family.config_cls) if f.name.endswith("dropout")}
    torch.manual_seed(0)
    eager = create_model(preset, **no_dropout)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    inputs = family.example_input(eager.config, 3)

    eager.eval(), twin.eval()
    with torch.no_grad():
        expected = _first_tensor(eager(*inputs))
        torch.testing.assert_close(_first_tensor(compiled(*inputs)), expected, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"

    # one training step (train mode: BatchNorm uses batch statistics and updates its running ones)
    eager.train(), twin.train()
    _first_tensor(eager(*inputs)).square().mean().backward()
    _first_tensor(compiled(*inputs)).square().mean().backward()
    grads = {n: p.grad for n, p in twin.named_parameters()}
    for name, p in eager.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    buffers = dict(twin.named_buffers())
    for name, b in eager.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=1e-5, atol=1e-6, msg=name)
