"""Serving an export folder (``bigmodel export RUN --format onnx|torch-export``) in the run's place: the
same requests get the same predictions (labels equal, numbers within 1e-4) from the graph run by ONNX
Runtime or the loaded program; building the model's family is not needed; damaged folders and graphs
that cannot stand in for the model are refused naming the file."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import bigmodel
from bigmodel.errors import UserError
from bigmodel.export import GraphModel, is_export_folder
from bigmodel.pipeline import export_run
from bigmodel.serve import Predictor
from bigmodel.serve.app import ServeSettings, create_app
from helpers import text_rows, write_text_csv

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FORMATS = ["onnx", "torch-export"]
TINY_TRAIN = {"epochs": 1, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}}
TEXT_ARCHS = {
    "bert": {"arch": "bert", "embed_dim": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 24},
    "lstm": {"arch": "rnn", "cell": "lstm", "embed_dim": 8, "hidden_size": 8, "bidirectional": True},
}


def assert_same_predictions(got, expected, atol: float = 1e-4) -> None:
    """Strings, labels and structure equal; every number within ``atol``."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected)
        for key in expected:
            assert_same_predictions(got[key], expected[key], atol)
    elif isinstance(expected, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_same_predictions(a, b, atol)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=atol)
    else:
        assert got == expected


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory) -> dict:
    """arch -> a text_classification run (one epoch on 60 rows: the predictions, not their quality)."""
    root = tmp_path_factory.mktemp("text")
    csv = write_text_csv(root / "topics.csv", n=60)
    runs = {}
    for name, arch in TEXT_ARCHS.items():
        spec = {"name": f"topics-{name}", "seed": 0,
                "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 24,
                         "split": {"validation": 0.2, "test": 0.2}},
                "task": {"name": "text_classification", "tokenizer": {"vocab_size": 120, "min_frequency": 1}},
                "model": arch, "train": TINY_TRAIN}  # fmt: skip
        runs[name] = bigmodel.train(spec, output=root / name, progress=False).path
    return runs


@pytest.fixture(scope="module")
def folders(tmp_path_factory, text_runs, stripes_run) -> dict:
    """(kind, format) -> (run directory, its export folder), exported once for the module."""
    root = tmp_path_factory.mktemp("exports")
    done = {}

    def get(kind: str, format: str):
        if (kind, format) not in done:
            run = stripes_run if kind == "image" else text_runs[kind]
            done[kind, format] = run, export_run(run, format, root / f"{kind}-{format}")
        return done[kind, format]

    return get


def texts() -> list[str]:
    """Held-out-like texts of several lengths (batched together: padding is exercised)."""
    return [text for text, _ in text_rows(9, seed=7)] + ["ball", "the chef cooked the soup in a pan again"]


def images(kit) -> list[dict]:
    rng = np.random.default_rng(3)
    pngs = [kit.png(kit.stripes(kind, rng)) for kind in ("vertical", "horizontal", "vertical")]
    return [{"image": base64.b64encode(p).decode()} for p in pngs]


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("kind", ["bert", "lstm"])
def test_text_export_folder_predicts_what_the_run_predicts(folders, kind, format):
    run, folder = folders(kind, format)
    assert is_export_folder(folder) and not is_export_folder(run)
    served = Predictor.from_export(folder)
    assert isinstance(served.model, GraphModel)
    expected = bigmodel.load(run).predict(texts())
    got = served.predict(texts())
    assert_same_predictions(got, expected)
    assert [p["label"] for p in got] == [p["label"] for p in expected]


@pytest.mark.parametrize("format", FORMATS)
def test_image_export_folder_serves_the_same_http_answers(folders, kit, format):
    run, folder = folders("image", format)
    body = {"inputs": images(kit)}
    answers = []
    for predictor in (bigmodel.load(run), Predictor.from_export(folder)):
        with TestClient(create_app(predictor, None, ServeSettings())) as client:
            response = client.post("/v1/predict", json=body)
            assert response.status_code == 200, response.text
            answers.append(response.json()["predictions"])
            info = client.get("/v1/model").json()
            assert info["task"] == "image_classification" and info["labels"] == ["horizontal", "vertical"]
    expected, got = answers
    assert_same_predictions(got, expected)


def test_the_folder_serves_without_the_models_code(folders, monkeypatch):
    """Building any family is made to fail: the run no longer opens, its export folder still predicts."""
    run, folder = folders("bert", "onnx")
    expected = bigmodel.load(run).predict(texts())
    from bigmodel.models import registry
    from bigmodel.models.bert import Bert

    def refuse(*args, **kwargs):
        raise RuntimeError("model code is not available")

    monkeypatch.setattr(registry, "get_family", refuse)
    monkeypatch.setattr(Bert, "__init__", refuse)
    monkeypatch.setattr(Bert, "forward", refuse)
    with pytest.raises(Exception, match="model code is not available"):
        bigmodel.load(run)
    assert_same_predictions(Predictor.from_export(folder).predict(texts()), expected)


# --- refusals ------------------------------------------------------------------------------------------


def copy_of(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_a_missing_graph_is_refused_naming_it(folders, tmp_path):
    folder = copy_of(folders("image", "onnx")[1], tmp_path)
    (folder / "model.onnx").unlink()
    with pytest.raises(UserError, match=r"model\.onnx: missing; export\.json names it"):
        Predictor.from_export(folder)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"export\.json: cannot be read as JSON"),
        ('{"format": "hf", "graphs": {}}', r"export\.json: format 'hf' cannot be served"),
        ('{"format": "onnx", "graphs": {}}', r"export\.json: damaged: 'graphs\.model\.file'"),
        ("[1, 2]", r"export\.json: damaged: expected a JSON object"),
    ],
)
def test_a_bad_export_json_is_refused_naming_it(folders, tmp_path, content, message):
    folder = copy_of(folders("image", "onnx")[1], tmp_path)
    (folder / "export.json").write_text(content)
    with pytest.raises(UserError, match=message):
        Predictor.from_export(folder)


def test_a_damaged_graph_or_task_json_is_refused_naming_it(folders, tmp_path):
    folder = copy_of(folders("image", "onnx")[1], tmp_path)
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match=r"model\.onnx: ONNX Runtime cannot load it"):
        Predictor.from_export(folder)
    folder = copy_of(folders("image", "torch-export")[1], tmp_path / "b")
    (folder / "task.json").write_text('{"format": 1, "name": "no_such_task"}')
    with pytest.raises(UserError, match=r"task\.json"):
        Predictor.from_export(folder)
    (folder / "model.pt2").write_bytes(b"PK broken")
    with pytest.raises(UserError, match=r"model\.pt2: not a program"):
        Predictor.from_export(folder)


def test_a_generating_model_is_refused_not_served_wrong(lm_run, tmp_path):
    folder = export_run(lm_run, "torch-export", tmp_path / "lm")
    with pytest.raises(UserError, match=r"model\.pt2: this model generates with a KV cache"):
        Predictor.from_export(folder)


def test_a_part_of_the_model_the_graph_lacks_is_refused_by_name():
    description = {"inputs": ["x"], "structure": {"tuple": ["tensor", "tensor"]}, "model_parts": ["crf"]}
    model = GraphModel(lambda inputs: [inputs["x"] * 2, inputs["x"] + 1], description, "g.onnx")
    first, second = model(torch.ones(2))
    assert first.tolist() == [2.0, 2.0] and second.tolist() == [2.0, 2.0]
    assert getattr(model, "pooler", None) is None  # the model had none: absent is the truth
    with pytest.raises(UserError, match=r"g\.onnx: the task reads model\.crf"):
        getattr(model, "crf", None)  # the model had one: a fallback would be wrong
    with pytest.raises(UserError, match=r"called the model with 2 tensors; the exported graph takes \['x'\]"):
        model(torch.ones(2), torch.ones(2))


def test_export_json_records_what_the_graph_describes(folders):
    import onnx

    _, folder = folders("image", "onnx")
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    described = json.loads({p.key: p.value for p in proto.metadata_props}["bigmodel"])
    assert described["inputs"] == ["x"] and described["structure"] == "tensor"
    assert described["is_model"] is True and described["generates"] is False


# --- tasks on the rnn family, their folders written from the task (no training) -------------------------


def task_folder(tmp_path, monkeypatch, case: str, model: dict | None = None, **options):
    """A task of ``tasks/test_input_schema.CASES`` (untrained model: ``model`` replaces the case's, the
    options are added to its task) and a torch-export folder of it, laid out as ``bigmodel export`` lays
    one out; returns the in-memory predictor, the folder and a few records to predict."""
    from bigmodel.data.records import ColumnRecords
    from bigmodel.export import export_task_program
    from tasks.test_input_schema import CASES, build

    data, task, arch, columns = CASES[case]
    monkeypatch.setitem(CASES, case, (data, {**task, **options}, model or arch, columns))
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    task, predictor = build(case)
    records = task.clean(ColumnRecords(columns(), case), "train")
    example = task.collate([task.encode(records[i], None) for i in range(2)])
    folder = tmp_path / case
    export_task_program(task, predictor.model, example, folder / "model.pt2")
    (folder / "task.json").write_text(json.dumps(task.state()))
    task.save(folder)
    info = {"format": "torch-export", "task": task.name, "graphs": {"model": {"file": "model.pt2"}}}
    (folder / "export.json").write_text(json.dumps(info))
    return predictor, folder, [records[i] for i in range(2, 6)]


RNN_TEXT = {"arch": "rnn", "bidirectional": True, "embed_dim": 8, "hidden_size": 8}
SENTENCES = ["Alice visited Rome today", "Bob visited Paris", "Carol today"]


def test_a_tagger_folder_tags_as_its_model_does(tmp_path, monkeypatch):
    predictor, folder, _ = task_folder(tmp_path, monkeypatch, "token_classification", RNN_TEXT)
    assert_same_predictions(Predictor.from_export(folder).predict(SENTENCES), predictor.predict(SENTENCES))


def test_a_tagger_with_a_crf_is_refused_naming_it(tmp_path, monkeypatch):
    """The CRF decodes outside the graph: the folder must not fall back to argmax tags."""
    _, folder, _ = task_folder(tmp_path, monkeypatch, "token_classification", RNN_TEXT, crf=True)
    with pytest.raises(UserError, match=r"model\.pt2: the task reads model\.crf"):
        Predictor.from_export(folder).predict(SENTENCES)


def test_a_speech_recognizer_folder_transcribes_as_its_model_does(tmp_path, monkeypatch):
    """Its graph returns CTCOutputs (a named tuple): rebuilt from the graph's description for CTC
    decoding."""
    predictor, folder, records = task_folder(tmp_path, monkeypatch, "speech_recognition")
    clips = [{"audio": r["audio"]} for r in records]
    expected = predictor.predict(clips)
    assert_same_predictions(Predictor.from_export(folder).predict(clips), expected)


def test_the_serve_command_opens_an_export_folder(folders, monkeypatch):
    from typer.testing import CliRunner

    import bigmodel.serve.app as app_module
    from bigmodel.cli import app

    _, folder = folders("image", "onnx")
    served = {}
    monkeypatch.setattr(
        app_module, "serve", lambda predictor, card, settings: served.update(p=predictor, c=card)
    )
    result = CliRunner().invoke(app, ["serve", str(folder)])
    assert result.exit_code == 0, result.output
    assert isinstance(served["p"].model, GraphModel) and served["c"]["run"] == folder.name


def test_load_and_the_predict_command_open_an_export_folder(folders, tmp_path):
    from typer.testing import CliRunner

    from bigmodel.cli import app

    run, folder = folders("bert", "onnx")
    loaded = bigmodel.load(folder)
    assert isinstance(loaded.model, GraphModel)
    expected = bigmodel.load(run).predict(texts())
    assert_same_predictions(loaded.predict(texts()), expected)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": texts()[0]}) + "\n")
    result = CliRunner().invoke(app, ["predict", str(folder), str(rows)])
    assert result.exit_code == 0, result.output
    assert_same_predictions(json.loads(result.stdout.splitlines()[-1]), expected[0])
