"""LoRALinear: a fresh adapter is the base; merge equals the unmerged forward; PEFT's init and names."""

import math

import pytest
import torch
from torch import nn

from bigmodel.nn.lora import LoRALinear


def _layer(seed=0, r=3, alpha=6.0, dropout=0.0, bias=True) -> tuple[nn.Linear, LoRALinear]:
    torch.manual_seed(seed)
    base = nn.Linear(7, 5, bias=bias)
    return base, LoRALinear.from_linear(base, r=r, alpha=alpha, dropout=dropout)


def test_a_fresh_adapter_equals_the_base_and_shares_its_weights():
    base, layer = _layer()
    x = torch.randn(4, 2, 7)
    assert torch.equal(layer(x), base(x))
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.weight.shape == (3, 7) and layer.lora_B.weight.shape == (5, 3)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(7)  # kaiming_uniform(a=sqrt(5)) on fan_in 7, as nn.Linear and PEFT
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4
    assert layer.scaling == 2.0
    names = {k for k, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "lora_A.weight", "lora_B.weight"}


@pytest.mark.parametrize("bias", [True, False])
def test_merge_equals_the_unmerged_forward_and_unmerge_restores_the_base(bias):
    base, layer = _layer(bias=bias)
    original = base.weight.detach().clone()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(6, 7)
    expected = layer(x)
    manual = x @ (original + 2.0 * layer.lora_B.weight @ layer.lora_A.weight).T + (base.bias if bias else 0)
    torch.testing.assert_close(expected, manual, atol=1e-6, rtol=0)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(base.weight, original, atol=1e-6, rtol=0)
    plain = layer.to_linear()
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(x), expected, atol=1e-6, rtol=0)


def test_only_the_factors_train_and_gradients_reach_them():
    _, layer = _layer()
    nn.init.normal_(layer.lora_B.weight)
    layer(torch.randn(3, 7)).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_A.weight.grad is not None and layer.lora_B.weight.grad is not None


def test_dropout_acts_on_the_adapter_input_only_in_training():
    _, layer = _layer(dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(64, 7)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    assert not torch.equal(layer(x), layer(x))


def test_bad_rank_and_double_wrapping_are_refused():
    base, layer = _layer()
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear.from_linear(nn.Linear(3, 3), r=0, alpha=1.0)
    with pytest.raises(ValueError, match="already"):
        LoRALinear.from_linear(layer, r=2, alpha=2.0)
    assert "r=3" in repr(layer)
