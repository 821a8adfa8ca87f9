"""LoRA on any family (add, freeze, merge), and through the pipeline: a text_classification run on a tiny
BERT trains its adapters and head only, writes PEFT files, opens with open_run, and resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.compress.lora import add_lora, merge_lora, parameter_report
from bigmodel.errors import RecipeError
from bigmodel.hub.pretrained import from_pretrained
from bigmodel.models.registry import create_model
from bigmodel.nn.lora import LoRALinear
from bigmodel.rundir import open_run
from bigmodel.training import loop
from helpers import write_text_csv, write_tiny_bert


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "bert-tiny"])
def test_any_family_adapts_and_merges_to_the_same_outputs(preset):
    torch.manual_seed(0)
    model = create_model(preset).eval()
    keys = set(model.state_dict())
    ids = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        before = model(ids)
    paths = add_lora(model, r=3, alpha=5.0, targets=["q", "v", "fc1"])
    assert paths and all(p.endswith((".attn.q", ".attn.v", ".mlp.fc1")) for p in paths)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, atol=0, rtol=0)  # B = 0: the base, exactly
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.normal_(0, 0.3)
        adapted = model(ids)
    assert not torch.allclose(adapted, before, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    merge_lora(model)
    assert set(model.state_dict()) == keys  # the family's own tensors again: its key maps apply
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), adapted, atol=1e-6, rtol=1e-6)


def test_a_task_wrapper_keeps_its_head_trainable_and_the_count_is_reported():
    from bigmodel.tasks.heads import TextModel

    torch.manual_seed(0)
    model = TextModel(create_model("bert-tiny"), 3)
    add_lora(model, r=2, targets=["attn.q"])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "head.weight" in trainable and "head.bias" in trainable
    assert all(n.startswith("head.") or ".lora_" in n for n in trainable)
    report = parameter_report(model, "adamw")
    assert report["trainable_params"] == sum(model.get_parameter(n).numel() for n in trainable)
    memory = report["memory_bytes"]
    assert memory["optimizer_state"] == 2 * memory["gradients"] == 2 * 4 * report["trainable_params"]


def test_a_target_that_matches_nothing_names_the_field_and_the_layers():
    model = create_model("llama-tiny")
    with pytest.raises(
        RecipeError, match=r"model\.adapter\.lora\.targets: 'query'.*fc1, fc2, gate, head, k, o, q, v"
    ):
        add_lora(model, targets=["query"])
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


# --- through the pipeline ----------------------------------------------------------------------------


def _spec(tmp_path):
    csv, folder = write_text_csv(tmp_path / "t.csv", n=120), write_tiny_bert(tmp_path / "bert")
    return {
        "name": "text-lora",
        "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 16},
        # A random BERT's frozen pooler carries little; PEFT's layout is the same for any pooling.
        "task": {"name": "text_classification", "pooling": "mean"},
        "model": {"arch": "bert", "pretrained": str(folder), "adapter": {"lora": {"r": 2, "alpha": 4}}},
        "train": {
            "epochs": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 5,
            "optimizer": {"name": "adamw", "lr": 3e-2},
        },
    }  # fmt: skip


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "split" not in r]


def test_a_lora_run_trains_adapters_and_head_only_and_leaves_the_base_bit_identical(tmp_path):
    spec = _spec(tmp_path)
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    train = run.metrics["train"]
    assert 0 < train["trainable_params"] < 0.05 * train["params"]
    assert set(train["memory_bytes"]) == {"weights", "gradients", "optimizer_state"}
    losses = [loss for _, loss in _losses(run.path)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    saved = load_file(run.path / "model.safetensors")
    base = from_pretrained(tmp_path / "bert").state_dict()
    for key, value in base.items():
        assert torch.equal(saved[f"backbone.{key}"], value), f"{key} changed"
    assert any(".lora_B." in k and saved[k].abs().sum() > 0 for k in saved)
    config = json.loads((run.path / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["base_model_name_or_path"] == str(
        tmp_path / "bert"
    )
    assert json.loads((run.path / "model.json").read_text())["adapter"]["lora"]["targets"] == ["q", "v"]
    model, _, _ = open_run(run.path)  # rebuilds base + adapter, loads model.safetensors
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4
    texts = ["a long match in the stadium", "stir the soup slowly"]
    first = bigmodel.load(run.path).predict(texts)

    merged = bigmodel.train({**spec, "name": "text-lora-merged"}, output=tmp_path / "runs", progress=False,
                            **{"model.adapter.merge": True})  # fmt: skip
    saved = load_file(merged.path / "model.safetensors")
    assert not any(".lora_" in k for k in saved) and (merged.path / "adapter_model.safetensors").is_file()
    model, _, _ = open_run(merged.path)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    again = bigmodel.load(merged.path).predict(texts)
    for a, b in zip(first, again, strict=True):
        assert a["label"] == b["label"]
        for name, p in a["probabilities"].items():
            assert b["probabilities"][name] == pytest.approx(p, abs=1e-5)


def test_a_lora_run_killed_mid_training_resumes_bit_identical(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    spec["train"]["epochs"] = 2  # 84 rows / 8 = 11 steps an epoch: killed after step 10's checkpoint
    full = bigmodel.train(spec, output=tmp_path / "a", progress=False)
    save = loop.ckpt.save_train_state

    def save_then_crash(run_dir, step, *args, **kwargs):
        save(run_dir, step, *args, **kwargs)
        if step == 10:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop.ckpt, "save_train_state", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            bigmodel.train(spec, output=tmp_path / "b", progress=False)
    (run_dir,) = (p.parent for p in (tmp_path / "b").rglob("data.json"))
    bigmodel.train(None, resume=run_dir, progress=False)
    expected, actual = load_file(full.path / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs after resume"
    assert _losses(run_dir) == _losses(full.path)
    assert (run_dir / "adapter_model.safetensors").read_bytes() == (
        full.path / "adapter_model.safetensors"
    ).read_bytes()


def test_bad_adapter_fields_are_refused_by_name(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(RecipeError, match=r"model\.adapter\.lora\.r"):
        bigmodel.load_recipe(spec, **{"model.adapter.lora.r": 0})
    with pytest.raises(RecipeError, match=r"model\.adapter\.lora\.rank"):
        bigmodel.load_recipe(spec, **{"model.adapter.lora.rank": 4})
    with pytest.raises(RecipeError, match=r"model\.adapter\.lora\.targets"):
        bigmodel.train(
            spec, output=tmp_path / "runs", progress=False, **{"model.adapter.lora.targets": ["qq"]}
        )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("model.json"))
