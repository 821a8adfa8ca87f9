"""FeedForward / GatedFeedForward against Hugging Face T5, GPT-2 and Llama MLPs; activations."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, T5Config
from transformers.activations import ACT2FN
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

from bigmodel.nn.activations import ACTIVATIONS, activation
from bigmodel.nn.mlp import FeedForward, GatedFeedForward

C, F = 36, 50


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def load(module, weights: dict[str, torch.Tensor]):
    with torch.no_grad():
        for name, w in weights.items():
            module.get_parameter(name).copy_(w)
    return module.eval()


def test_feedforward_matches_t5_dense_relu():
    ref = T5DenseActDense(T5Config(d_model=C, d_ff=F, dense_act_fn="relu", dropout_rate=0.0)).eval()
    ours = load(
        FeedForward(C, F, act="relu", bias=False), {"fc1.weight": ref.wi.weight, "fc2.weight": ref.wo.weight}
    )
    x = torch.randn(2, 7, C)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)


def test_feedforward_matches_gpt2_mlp():
    ref = GPT2MLP(F, GPT2Config(n_embd=C, activation_function="gelu_new", resid_pdrop=0.0)).eval()
    ours = load(
        FeedForward(C, F, act="gelu_new"),
        {  # GPT-2's Conv1D stores weights (in, out)
            "fc1.weight": ref.c_fc.weight.T,
            "fc1.bias": ref.c_fc.bias,
            "fc2.weight": ref.c_proj.weight.T,
            "fc2.bias": ref.c_proj.bias,
        },
    )
    x = torch.randn(2, 7, C)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)


def test_gated_gelu_matches_t5_v1_1():
    ref = T5DenseGatedActDense(T5Config(d_model=C, d_ff=F, feed_forward_proj="gated-gelu", dropout_rate=0.0))
    ours = load(
        GatedFeedForward(C, F, act="gelu_new"),
        {"gate.weight": ref.wi_0.weight, "fc1.weight": ref.wi_1.weight, "fc2.weight": ref.wo.weight},
    )
    x = torch.randn(2, 7, C)
    torch.testing.assert_close(ours(x), ref.eval()(x), atol=1e-6, rtol=0)


def test_swiglu_matches_llama_mlp():
    ref = LlamaMLP(
        LlamaConfig(hidden_size=C, intermediate_size=F, num_attention_heads=3, hidden_act="silu")
    ).eval()
    ours = load(
        GatedFeedForward(C, F, act="silu"),
        {
            "gate.weight": ref.gate_proj.weight,
            "fc1.weight": ref.up_proj.weight,
            "fc2.weight": ref.down_proj.weight,
        },
    )
    x = torch.randn(2, 7, C)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)


def test_dropout_sits_on_the_inner_activations():
    ff = FeedForward(C, F, act="relu", dropout=0.5).train()
    seen = []
    ff.fc2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(4, C)
    ff(x)
    h, kept = seen[0], torch.relu(ff.fc1(x))
    dropped = (h == 0) & (kept > 0)
    assert dropped.any()  # some live units were dropped before fc2 ...
    torch.testing.assert_close(h[~dropped], 2 * kept[~dropped])  # ... and the rest rescaled by 1/(1-p)
    ff.eval()
    torch.testing.assert_close(ff(x), ff.fc2(torch.relu(ff.fc1(x))))


def test_activation_names():
    x = torch.linspace(-6, 6, 101)
    assert torch.equal(activation("gelu_new")(x), ACT2FN["gelu_new"](x))  # bit-exact with HF/GPT-2
    torch.testing.assert_close(activation("gelu_tanh")(x), ACT2FN["gelu_new"](x), atol=1e-6, rtol=0)
    assert not torch.allclose(activation("gelu")(x), activation("gelu_new")(x), atol=1e-5)  # erf vs tanh
    torch.testing.assert_close(activation("silu")(x), x * torch.sigmoid(x))
    # bf16/fp16 (autocast) take the fused kernel: one rounding instead of the formula's six
    for dtype, ulp in ((torch.bfloat16, 2**-8), (torch.float16, 2**-11)):
        xh = x.to(dtype)
        ours, exact = activation("gelu_new")(xh), ACT2FN["gelu_new"](xh.float())
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.float(), exact, atol=1e-6, rtol=ulp)
    assert {"relu", "gelu", "gelu_new", "gelu_tanh", "silu", "tanh", "identity"} <= set(ACTIVATIONS)
    with pytest.raises(ValueError, match="gelu_new"):
        activation("swishh")
