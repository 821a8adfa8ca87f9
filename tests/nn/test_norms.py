"""RMSNorm against Hugging Face T5LayerNorm; LayerNorm and the norm factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.t5.modeling_t5 import T5LayerNorm

from bigmodel.nn.norms import LayerNorm, RMSNorm, norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rmsnorm_matches_hf_t5_layernorm_bit_for_bit(dtype):
    torch.manual_seed(0)
    ours, ref = RMSNorm(37, eps=1e-6), T5LayerNorm(37, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(37))
        ref.weight.copy_(ours.weight)
    ours, ref = ours.to(dtype), ref.to(dtype)
    x = (torch.randn(2, 5, 37) * 300).to(dtype)  # large: x² overflows fp16 unless squared in fp32
    y = ours(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert torch.equal(y, ref(x))


def test_rmsnorm_has_no_mean_subtraction_and_no_bias():
    n = RMSNorm(36)
    assert [name for name, _ in n.named_parameters()] == ["weight"]
    x = torch.randn(3, 36) + 5.0
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(n(x), expected)


def test_layernorm_eps_and_bias():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 36) * 1e-5  # variance near eps, so eps matters
    ln = LayerNorm(36, eps=1e-12)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (36,), ln.weight, ln.bias, 1e-12))
    assert not torch.allclose(ln(x), LayerNorm(36, eps=1e-5)(x))
    assert LayerNorm(36, bias=False).bias is None


def test_norm_factory():
    rms, ln = norm("rms", 36, eps=1e-6), norm("layer", 36, eps=1e-12)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-6
    assert isinstance(ln, torch.nn.LayerNorm) and ln.eps == 1e-12
    with pytest.raises(ValueError, match="rms"):
        norm("batch", 36, eps=1e-5)
