"""replace_modules: swaps by predicate from outside, keeps sharing, never revisits a replacement."""

import torch
from torch import nn

from bigmodel.compress.surgery import replace_modules


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 2


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 2)
    )


def test_every_match_is_replaced_in_place_and_the_paths_returned():
    model = _model()
    paths = replace_modules(model, lambda p, m: isinstance(m, nn.Linear), lambda p, m: Wrapper(m))
    assert paths == ["0", "2.0", "3"]
    assert (
        isinstance(model[0], Wrapper) and isinstance(model[2][0], Wrapper) and isinstance(model[3], Wrapper)
    )
    assert isinstance(model[0].inner, nn.Linear)  # the replacement wraps the old module: not wrapped again
    assert model(torch.randn(5, 3)).shape == (5, 2)


def test_the_predicate_sees_paths_and_a_miss_changes_nothing():
    model = _model()
    assert replace_modules(model, lambda p, m: p.endswith(".0"), lambda p, m: nn.Identity()) == ["2.0"]
    assert isinstance(model[2][0], nn.Identity) and isinstance(model[0], nn.Linear)
    before = repr(model)
    assert replace_modules(model, lambda p, m: False, lambda p, m: nn.Identity()) == []
    assert repr(model) == before


def test_a_shared_module_gets_one_shared_replacement():
    shared = nn.Linear(3, 3)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    made = []
    paths = replace_modules(
        model, lambda p, m: isinstance(m, nn.Linear), lambda p, m: made.append(p) or Wrapper(m)
    )
    assert paths == ["a", "b.0"] and made == ["a"]
    assert model["a"] is model["b"][0]
