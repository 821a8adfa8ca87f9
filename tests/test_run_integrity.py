"""A run directory is validated and integrity-checked when it is opened (issue 11).

One tiny run is trained once; each case copies it, damages one file, and checks that ``bigmodel
evaluate`` and ``bigmodel predict`` exit 2 with one paragraph naming the file (no traceback) and
leave every byte of the directory as it was. A case with ``rehash`` rewrites manifest.json after the
damage, so that the content checks, not the manifest, are what catch it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.cli import main
from bigmodel.errors import RunDirError
from bigmodel.hub.files import save_tensors, save_weights
from bigmodel.hub.manifest import write_manifest
from helpers import write_text_csv, write_tiny_bert, write_wine_csv

TINY = {"train.epochs": 2, "model.hidden_sizes": [16]}


def _train(csv: Path, output: Path, **overrides) -> Path:
    run = bigmodel.train(
        "tabular-csv", output=output, progress=False, **{"data.source": f"csv:{csv}", **TINY, **overrides}
    )
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same recipe and seed, and one with another hidden size (other weight shapes)."""
    tmp = tmp_path_factory.mktemp("integrity")
    csv = write_wine_csv(tmp / "wine.csv")
    first, second = _train(csv, tmp / "a"), _train(csv, tmp / "b")
    other = _train(csv, tmp / "c", **{"model.hidden_sizes": [8]})
    return {"run": first, "twin": second, "other": other, "csv": csv}


def _digest(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` (hidden ones and train_state/ included): mode and SHA-256."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``bigmodel ARGS`` in this process through ``cli.main`` (the UserError -> exit 2 mapping)."""
    monkeypatch.setattr(sys, "argv", ["bigmodel", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code, " ".join((captured.out + captured.err).split())  # unwrap rich's lines


# --- damage ----------------------------------------------------------------------------------------


def _truncate(run: Path, other: Path) -> None:
    path = run / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(run: Path, other: Path) -> None:
    (run / "model.safetensors").write_bytes(b"")


def _random_bytes(name: str):
    def damage(run: Path, other: Path) -> None:
        (run / name).write_bytes(os.urandom(max(64, (run / name).stat().st_size)))

    return damage


def _header(run: Path, other: Path) -> None:
    data = bytearray((run / "model.safetensors").read_bytes())
    data[8:24] = b"#" * 16  # inside the JSON header
    (run / "model.safetensors").write_bytes(bytes(data))


def _edit_tensors(edit):
    def damage(run: Path, other: Path) -> None:
        tensors = load_file(run / "model.safetensors")
        edit(tensors)
        save_tensors(run / "model.safetensors", tensors, {"format": "pt"})

    return damage


def _drop_one(tensors: dict) -> None:
    del tensors[sorted(tensors)[-1]]


def _add_one(tensors: dict) -> None:
    tensors["extra.weight"] = torch.zeros(3)


def _nan(tensors: dict) -> None:
    key = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[key][0] = float("nan")


def _float64(tensors: dict) -> None:
    for key, t in tensors.items():
        if t.is_floating_point():
            tensors[key] = t.double()


def _other_weights(run: Path, other: Path) -> None:
    shutil.copyfile(other / "model.safetensors", run / "model.safetensors")


def _edit_json(name: str, edit):
    def damage(run: Path, other: Path) -> None:
        data = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps(edit(data)))

    return damage


def _without(*keys: str):
    return lambda data: {k: v for k, v in data.items() if k not in keys}


def _hidden_sizes(spec: dict) -> dict:
    return {**spec, "config": {**spec["config"], "hidden_sizes": [8]}}


def _append(name: str, text: str):
    def damage(run: Path, other: Path) -> None:
        with open(run / name, "a") as f:
            f.write(text)

    return damage


def _delete(name: str):
    return lambda run, other: (run / name).unlink()


def _add_file(name: str, text: str):
    return lambda run, other: (run / name).write_text(text)


def _set(name: str, key: str, value):
    return _edit_json(name, lambda data: {**data, key: value})


def _config(key: str, value):
    return _edit_json("model.json", lambda spec: {**spec, "config": {**spec["config"], key: value}})


def _replace(name: str, old: str, new: str):
    def damage(run: Path, other: Path) -> None:
        text = (run / name).read_text()
        assert old in text and len(old) == len(new)
        (run / name).write_text(text.replace(old, new, 1))

    return damage


W, M, T, D = "model.safetensors", "model.json", "task.json", "data.json"
# (id, damage, rehash, fragments the message must contain). Without rehash the manifest catches the
# damage; with it (manifest.json rewritten after the damage) the content checks must.
CASES = [
    ("weights-truncated", _truncate, False, [W, "manifest.json", "changed"]),
    ("weights-truncated-rehashed", _truncate, True, [W, "damaged"]),
    ("weights-empty", _empty, False, [W, "changed"]),
    ("weights-empty-rehashed", _empty, True, [W, "empty"]),
    ("weights-random-bytes-rehashed", _random_bytes(W), True, [W, "damaged"]),
    ("weights-header-rehashed", _header, True, [W, "damaged"]),
    ("weights-one-tensor-less", _edit_tensors(_drop_one), False, [W, "changed"]),
    ("weights-one-tensor-less-rehashed", _edit_tensors(_drop_one), True, [W, "missing from the file"]),
    ("weights-extra-tensor-rehashed", _edit_tensors(_add_one), True, [W, "extra.weight"]),
    ("weights-float64-rehashed", _edit_tensors(_float64), True, [W, "dtype float64 in the file, float32"]),
    ("weights-nan", _edit_tensors(_nan), False, [W, "changed"]),
    ("weights-nan-rehashed", _edit_tensors(_nan), True, [W, "not finite"]),
    ("weights-of-another-run", _other_weights, False, [W, "changed"]),
    ("weights-of-another-run-rehashed", _other_weights, True,
     [W, "shape (8, 13) in the file, (16, 13) for the model in model.json"]),
    ("model-json-list-rehashed", _edit_json(M, lambda spec: [spec]), True, [M, "a JSON object, found list"]),
    ("model-json-config-not-the-weights", _config("hidden_sizes", [8]), False, [M, "changed"]),
    ("model-json-config-not-the-weights-rehashed", _config("hidden_sizes", [8]), True,
     [W, "(16, 13) in the file, (8, 13) for the model in model.json"]),
    ("model-json-unknown-family-rehashed", _set(M, "family", "mpl"), True,
     [M, "unknown model family 'mpl'", "Did you mean 'mlp'"]),
    ("model-json-no-family-rehashed", _edit_json(M, _without("family")), True, [M, "'family'"]),
    ("model-json-config-not-a-dict-rehashed", _set(M, "config", [1]), True, [M, "'config'"]),
    ("model-json-unknown-config-field-rehashed", _config("width", 3), True, [M, "width"]),
    ("model-json-invalid-config-rehashed", _config("dropout", 7), True, [M, "dropout"]),
    ("task-json-no-class-names-rehashed", _edit_json(T, _without("class_names")), True, [T, "class_names"]),
    ("task-json-no-options-rehashed", _edit_json(T, _without("options")), True, [T, "'options'"]),
    ("task-json-options-a-list-rehashed", _set(T, "options", []), True, [T, "'options' should be an object"]),
    ("task-json-bad-option-rehashed", _set(T, "options", {"label_smoothing": 5}), True, [T, "smoothing"]),
    ("task-json-no-features-rehashed", _edit_json(T, _without("features")), True, [T, "features"]),
    ("task-json-unknown-task-rehashed", _set(T, "class", "no.such:Task"), True, [T, "no.such:Task"]),
    ("data-json-random-bytes", _random_bytes(D), False, [D, "changed"]),
    ("data-json-random-bytes-rehashed", _random_bytes(D), True, [D, "damaged"]),
    ("data-json-no-fingerprint-rehashed", _edit_json(D, _without("fingerprint")), True, [D, "fingerprint"]),
    ("data-json-no-split-sizes-rehashed", _edit_json(D, _without("split_sizes")), True, [D, "split_sizes"]),
    ("recipe-damaged-rehashed", _add_file("recipe.yaml", "name: [unclosed\n"), True, ["recipe.yaml"]),
    ("recipe-not-a-recipe-rehashed", _add_file("recipe.yaml", "- 1\n- 2\n"), True, ["recipe.yaml"]),
    ("manifest-missing", _delete("manifest.json"), False, ["manifest.json", "missing"]),
    ("manifest-random-bytes", _random_bytes("manifest.json"), False, ["manifest.json", "damaged"]),
    ("manifest-not-a-manifest", _add_file("manifest.json", '{"format": 1, "files": [{"path": "../x"}]}'),
     False, ["manifest.json", "files[0]"]),
    ("eval-json-edited", _set("eval.json", "test", {}), False, ["eval.json", "changed"]),
    ("recipe-edited", _append("recipe.yaml", "# a comment\n"), False, ["recipe.yaml", "changed"]),
    ("summary-deleted", _delete("summary.json"), False, ["summary.json", "missing"]),
    ("tokenizer-added", _add_file("tokenizer.json", "{}"), False, ["tokenizer.json", "added"]),
    ("task-json-edited", _replace(T, "class_0", "class_9"), False, [T, "same size, different content"]),
]  # fmt: skip


@pytest.mark.parametrize(("damage", "rehash", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_run_exits_2_naming_the_file_and_stays_unchanged(
    runs, tmp_path, monkeypatch, capsys, damage, rehash, fragments
):
    run = shutil.copytree(runs["run"], tmp_path / "run")
    damage(run, runs["other"])
    if rehash:
        write_manifest(run)
    before = _digest(run)
    for args in (["evaluate", str(run), "--split", "validation"], ["predict", str(run), str(runs["csv"])]):
        code, message = _cli(monkeypatch, capsys, *args)
        assert code == 2, message
        assert "Traceback" not in message
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in: {message}"
        assert _digest(run) == before, f"{args[0]} changed the run directory"
    with pytest.raises(RunDirError):
        bigmodel.load(run)


def test_damaged_run_through_the_real_command_line(runs, tmp_path):
    """The same in a fresh interpreter: exit 2, one paragraph on stderr, no traceback."""
    run = shutil.copytree(runs["run"], tmp_path / "run")
    _truncate(run, runs["other"])
    write_manifest(run)
    before = _digest(run)
    result = subprocess.run(
        [sys.executable, "-m", "bigmodel", "evaluate", str(run)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "model.safetensors" in " ".join(result.stderr.split())
    assert _digest(run) == before


def test_several_problems_are_named_together(runs, tmp_path):
    run = shutil.copytree(runs["run"], tmp_path / "run")
    _append("recipe.yaml", "# edit\n")(run, None)
    _delete("summary.json")(run, None)
    _add_file("tokenizer.json", "{}")(run, None)
    with pytest.raises(RunDirError) as info:
        bigmodel.open_run(run)
    message = str(info.value)
    assert (
        "changed: recipe.yaml" in message
        and "missing: summary.json" in message
        and "added after the run finished: tokenizer.json" in message
    )


# --- the manifest ----------------------------------------------------------------------------------


def test_manifest_lists_every_artifact_but_itself_and_train_state(runs):
    run = runs["run"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["format"] == 1
    listed = {entry["path"]: entry for entry in manifest["files"]}
    expected = {
        p.relative_to(run).as_posix()
        for p in run.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "report.html") and "train_state" not in p.parts
    }
    assert set(listed) == expected
    assert {
        "model.safetensors",
        "model.json",
        "task.json",
        "data.json",
        "recipe.yaml",
        "eval.json",
    } <= expected
    assert (run / "train_state").is_dir()  # kept, but not covered (it is mutable by design)
    for name, entry in listed.items():
        data = (run / name).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    newest = max((run / name).stat().st_mtime_ns for name in listed)
    assert (run / "manifest.json").stat().st_mtime_ns >= newest  # written last


def test_evaluate_updates_eval_json_and_the_manifest(runs, tmp_path):
    run = shutil.copytree(runs["run"], tmp_path / "run")
    old = json.loads((run / "manifest.json").read_text())
    bigmodel.evaluate(run, split="train")
    assert "train" in json.loads((run / "eval.json").read_text())
    new = json.loads((run / "manifest.json").read_text())
    changed = {a["path"] for a, b in zip(old["files"], new["files"], strict=True) if a != b}
    assert changed == {"eval.json"}
    bigmodel.open_run(run)  # verifies


def test_train_state_and_temporaries_are_not_checked(runs, tmp_path):
    run = shutil.copytree(runs["run"], tmp_path / "run")
    for path in (run / "train_state").iterdir():
        path.write_bytes(b"resume's business")
    (run / ".model.safetensors.tmp-99999999-1").write_bytes(b"torn")  # a killed writer's leftover
    bigmodel.open_run(run)


def test_a_users_own_files_beside_the_run_are_left_alone(runs, tmp_path):
    """Only files of a kind a stage reads (.json, .yaml, .safetensors) count as added."""
    run = shutil.copytree(runs["run"], tmp_path / "run")
    (run / "predictions.jsonl").write_text('{"label": "a"}\n')
    (run / "notes.txt").write_text("tried lr 1e-3")
    bigmodel.open_run(run)


def test_an_unfinished_run_opens_for_resume_without_a_manifest(runs, tmp_path):
    run = shutil.copytree(runs["run"], tmp_path / "run")
    (run / "manifest.json").unlink()
    (run / "model.safetensors").unlink()
    model, task, info = bigmodel.open_run(run, weights=False)
    assert info["run_dir"] == run
    with pytest.raises(RunDirError, match="lacks model.safetensors"):
        bigmodel.open_run(run)


def test_a_finished_run_opens_for_resume_with_its_outputs_rewritten(runs, tmp_path):
    """Killed while a resume rewrote its results: the inputs are still checked, the outputs not."""
    run = shutil.copytree(runs["run"], tmp_path / "run")
    _append("metrics.jsonl", "{}\n")(run, None)
    _truncate(run, None)
    bigmodel.open_run(run, weights=False)
    _append("task.json", " ")(run, None)  # rewritten by Task.calibrate after training: validated, not hashed
    bigmodel.open_run(run, weights=False)
    _append("data.json", " ")(run, None)
    with pytest.raises(RunDirError, match="changed: data.json"):
        bigmodel.open_run(run, weights=False)


# --- deterministic weights, file modes, paths that are not runs -------------------------------------


def test_same_weights_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
    save_weights(model, tmp_path / "a.safetensors")
    save_weights(model, tmp_path / "b.safetensors")
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    header = json.loads(a[8 : 8 + int.from_bytes(a[:8], "little")])
    names = [k for k in header if k != "__metadata__"]
    assert names == sorted(names) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    back = load_file(tmp_path / "a.safetensors")
    assert all(back[k].equal(v) for k, v in model.state_dict().items())


def test_metadata_order_does_not_change_the_bytes(tmp_path):
    tensors = {"b": torch.ones(3), "a": torch.arange(4)}
    many = {f"key{i}": str(i) for i in range(30)}
    save_tensors(tmp_path / "a.safetensors", tensors, many)
    save_tensors(tmp_path / "b.safetensors", tensors, dict(reversed(many.items())))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_two_runs_with_one_seed_have_identical_weights(runs):
    a, b = runs["run"] / "model.safetensors", runs["twin"] / "model.safetensors"
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    entry = lambda run: next(  # noqa: E731
        e
        for e in json.loads((run / "manifest.json").read_text())["files"]
        if e["path"] == "model.safetensors"
    )
    assert entry(runs["run"]) == entry(runs["twin"])


def test_run_files_have_the_umask_mode(runs):
    mask = os.umask(0o022)
    os.umask(mask)
    for path in runs["run"].rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_weights_honour_another_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("what", ["missing", "file", "number", "empty-dir"])
def test_a_path_that_is_not_a_run_is_refused(tmp_path, what):
    target = {
        "missing": tmp_path / "nope",
        "file": tmp_path / "file.txt",
        "number": 42,
        "empty-dir": tmp_path,
    }[what]
    (tmp_path / "file.txt").write_text("x")
    for call in (bigmodel.open_run, bigmodel.load, bigmodel.evaluate):
        with pytest.raises(RunDirError):
            call(target)


# --- a text run: tokenizer.json ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text-integrity")
    csv, folder = write_text_csv(tmp / "topics.csv", n=60), write_tiny_bert(tmp / "tiny-bert")
    recipe = {
        "name": "text-tiny",
        "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 16},
        "task": {"name": "text_classification"},
        "model": {"arch": "bert", "pretrained": str(folder)},
        "train": {"epochs": 1, "batch_size": 16},
    }
    return bigmodel.train(recipe, output=tmp / "runs", progress=False).path, csv


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"\x00\xff random", "damaged"), (b'{"model": 3}', "task cannot be restored")],
    ids=["random-bytes", "not-a-tokenizer"],
)
def test_damaged_tokenizer_is_named(text_run, tmp_path, monkeypatch, capsys, content, fragment):
    run = shutil.copytree(text_run[0], tmp_path / "run")
    assert "tokenizer.json" in {e["path"] for e in json.loads((run / "manifest.json").read_text())["files"]}
    (run / "tokenizer.json").write_bytes(content)
    code, message = _cli(monkeypatch, capsys, "evaluate", str(run))
    assert code == 2 and "tokenizer.json" in message and "changed" in message
    write_manifest(run)
    before = _digest(run)
    code, message = _cli(monkeypatch, capsys, "predict", str(run), str(text_run[1]))
    assert code == 2 and "Traceback" not in message
    assert fragment in message and ("tokenizer.json" in message or "files saved beside it" in message)
    assert _digest(run) == before
