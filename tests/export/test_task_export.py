"""``export_run`` and ``bigmodel export``: a tiny trained run of each kind exported as a folder whose
graph, run on a fresh batch in ONNX Runtime (or as a reloaded torch.export program), equals the task's
own forward in PyTorch within 1e-4; the folder describes itself (export.json, model.json, task.json,
tokenizer); unknown formats and unexportable tasks are refused in one paragraph."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.data.tokenizers import load_tokenizer
from bigmodel.errors import UserError
from bigmodel.export import (
    export_task_onnx,
    export_task_program,
    load_program,
    onnx_session,
    run_onnx,
    verify_program,
)
from bigmodel.pipeline import _open_data, export_run
from bigmodel.rundir import open_run
from bigmodel.tasks.base import Task
from helpers import write_text_csv, write_wine_csv
from tasks.test_input_schema import CASES, build  # each task fitted on tiny records

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TINY_TRAIN = {"epochs": 1, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and leave the other core to other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh_batch(run_path, first: int = 5, size: int = 4):
    """The run's model and task, and a batch of train records the export neither traced nor checked
    (it uses the held-out splits' first five)."""
    model, task, info = open_run(run_path)
    splits, _ = _open_data(info["recipe"], task)
    records = [splits["train"][i] for i in range(first, first + size)]
    return model, task, task.collate([task.encode(r, None) for r in records])


def assert_onnx_equals_forward(run_path, folder) -> dict:
    """ONNX Runtime on ``folder/model.onnx`` equals ``task.forward`` on a fresh batch within 1e-4."""
    model, task, batch = fresh_batch(run_path)
    got = run_onnx(onnx_session(folder / "model.onnx"), batch)
    with torch.no_grad():
        expected = task.forward(model, batch)
    (logits,) = got.values()
    assert logits.shape == tuple(expected.shape)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
    info = json.loads((folder / "export.json").read_text())
    assert info["format"] == "onnx" and info["graphs"]["model"]["opset"] == 20
    assert info["graphs"]["model"]["max_abs_difference"] <= 1e-4
    assert {"torch", "onnx", "onnxruntime"} <= set(info["versions"])
    for name in ("model.json", "task.json"):  # the run's own files, copied
        assert (folder / name).read_bytes() == (run_path / name).read_bytes()
    return info


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tabular")
    spec = {"name": "wine", "seed": 0,
            "data": {"source": f"csv:{write_wine_csv(tmp / 'wine.csv')}", "label": "label",
                     "split": {"validation": 0.2, "test": 0.2}, "normalize": "standard"},
            "task": "classification", "model": {"arch": "mlp", "hidden_sizes": [16], "norm": "batch"},
            "train": TINY_TRAIN}  # fmt: skip
    return bigmodel.train(spec, output=tmp / "runs", progress=False).path


def test_tabular_onnx_and_program_equal_pytorch(tabular_run, tmp_path):
    folder = export_run(tabular_run, "onnx", tmp_path / "onnx")
    info = assert_onnx_equals_forward(tabular_run, folder)
    assert [i["name"] for i in info["graphs"]["model"]["inputs"]] == ["x"]
    assert info["graphs"]["model"]["inputs"][0]["shape"] == ["batch", 13]  # BatchNorm's running stats in
    folder = export_run(tabular_run, "torch-export")
    assert folder == tabular_run / "export" / "torch-export"
    model, task, batch = fresh_batch(tabular_run)
    (out,) = load_program(folder / "model.pt2")(x=batch["x"]).values()
    with torch.no_grad():
        torch.testing.assert_close(out, task.forward(model, batch), atol=1e-4, rtol=0)
    assert json.loads((folder / "export.json").read_text())["graphs"]["model"]["inputs"] == ["x"]


def test_image_classification_onnx_equals_pytorch(tmp_path):
    rng = np.random.default_rng(0)
    for kind in ("horizontal", "vertical"):
        (tmp_path / "images" / kind).mkdir(parents=True)
        for i in range(12):
            pixels = (rng.random((12, 12)) * 60).astype(np.uint8)
            if kind == "horizontal":
                pixels[4:8, :] = 250
            else:
                pixels[:, 4:8] = 250
            Image.fromarray(pixels).save(tmp_path / "images" / kind / f"{i}.png")
    spec = {"name": "stripes", "seed": 0,
            "data": {"source": f"images:{tmp_path / 'images'}", "split": {"validation": 0.25, "test": 0.25}},
            "task": {"name": "image_classification"}, "model": {"arch": "cnn", "channels": [4, 8]},
            "train": TINY_TRAIN}  # fmt: skip
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False).path
    folder = export_run(run, "onnx")
    info = assert_onnx_equals_forward(run, folder)
    assert info["graphs"]["model"]["inputs"][0]["shape"] == ["batch", 1, 12, 12]


def text_recipe(csv, arch: dict) -> dict:
    return {"name": "topics", "seed": 0,
            "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 24,
                     "split": {"validation": 0.2, "test": 0.2}},
            "task": {"name": "text_classification", "tokenizer": {"vocab_size": 120, "min_frequency": 1}},
            "model": arch, "train": TINY_TRAIN}  # fmt: skip


TEXT_ARCHS = [
    {"arch": "bert", "embed_dim": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 24},
    # gpt reads the attention mask of padded rows: exported with it (models/gpt.py skips its
    # all-real shortcut while exporting).
    {"arch": "gpt", "embed_dim": 16, "num_layers": 1, "num_heads": 2},
]


@pytest.mark.parametrize("arch", TEXT_ARCHS, ids=lambda a: a["arch"])
def test_text_classification_onnx_with_its_tokenizer(tmp_path, arch):
    csv = write_text_csv(tmp_path / "topics.csv", n=60)
    run = bigmodel.train(text_recipe(csv, arch), output=tmp_path / "runs", progress=False).path
    folder = export_run(run, "onnx")
    info = assert_onnx_equals_forward(run, folder)
    inputs = {i["name"]: i["shape"] for i in info["graphs"]["model"]["inputs"]}
    assert inputs["input_ids"] == inputs["attention_mask"] == ["batch", "length"]
    text = "the team won the match"
    assert load_tokenizer(folder).encode_one(text).ids == load_tokenizer(run).encode_one(text).ids


def test_char_causal_lm_onnx_with_decoding_graphs(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = ["the cat sat on the mat.\n", "a dog sat on a log!\n", "the cat and the dog.\n"] * 20
    corpus.write_text("".join(json.dumps({"text": t * 3}) + "\n" for t in lines))
    spec = {"name": "tiny-lm", "seed": 0,
            "data": {"source": f"jsonl:{corpus}", "max_length": 16,
                     "split": {"validation": 0.2, "test": 0.2}},
            "task": {"name": "causal_lm", "tokenizer": {"kind": "char"}, "eval_tokens": 64},
            "model": {"arch": "gpt", "embed_dim": 16, "num_heads": 2, "num_layers": 1},
            "train": {"batch_size": 8, "max_steps": 3}}  # fmt: skip
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False).path
    folder = export_run(run, "onnx")
    info = assert_onnx_equals_forward(run, folder)
    assert {"prefill", "decode"} <= set(info["graphs"]) and (folder / "decoder" / "decoder.json").is_file()
    assert (folder / "tokenizer.json").is_file()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigmodel", "export", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_exports_and_refuses_a_bad_format(tabular_run, tmp_path):
    done = cli(str(tabular_run), "--format", "onnx", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "out") and (tmp_path / "out" / "model.onnx").is_file()
    bad = cli(str(tabular_run), "--format", "onxx")
    assert bad.returncode == 2
    assert "--format: unknown export format 'onxx'" in bad.stderr and "Did you mean 'onnx'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_task_without_a_signature_is_refused_by_name():
    class MyTask(Task):
        name = "my_task"

    with pytest.raises(UserError, match="task 'my_task' does not say what its graph takes"):
        MyTask(None, {}).export_signature(torch.nn.Identity(), {})


# --- every task's graph (slow: ~8 minutes of ONNX conversion on a loaded 2-core machine) ---------------

# Every task exports (the rnn family's padded batches too: models/rnn.py scans while exporting).
NOT_EXPORTABLE: dict[str, str] = {}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_task_graph_equals_its_forward(case, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    task, predictor = build(case)
    model = predictor.model.eval()
    records = task.clean(ColumnRecords(CASES[case][3](), case), "train")
    items = [task.encode(records[i], None) for i in range(5)]
    example, check = task.collate(items[:2]), task.collate(items[2:5])
    if case in NOT_EXPORTABLE:
        with pytest.raises(UserError, match=NOT_EXPORTABLE[case]):
            export_task_onnx(task, model, example, tmp_path, check_batch=check)
        return
    paths = export_task_onnx(task, model, example, tmp_path, check_batch=check)  # checked within 1e-4
    program = load_program(export_task_program(task, model, example, tmp_path / "model.pt2"))
    module, inputs, _ = task.export_signature(model, check)
    assert verify_program(program, module, inputs) <= 1e-4
    with torch.no_grad():
        expected = task.forward(model, check)
    if isinstance(expected, torch.Tensor):  # the graph is the task's whole forward
        got = next(iter(run_onnx(onnx_session(paths["model"]), check).values()))
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
