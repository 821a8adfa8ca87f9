"""The rnn family exports: while exporting, models/rnn.py scans each layer and direction over time instead
of packing, which must equal the packed path on padded batches (all-padding rows included) for every
cell, head and pooling; the graphs (ONNX in ONNX Runtime, torch.export programs) take any batch and
length within 1e-4; the tasks built on the family (text and token classification, speech recognition,
semantic role labelling) export through ``Task.export_signature``; the weights keep their names."""

from __future__ import annotations

import pytest
import torch

from bigmodel.data.records import ColumnRecords
from bigmodel.export import export_onnx, export_program, export_task_onnx, export_task_program, verify_onnx
from bigmodel.export.program import load_program, verify_program
from bigmodel.models.registry import build_config, get_family
from bigmodel.models.rnn import RNN
from tasks.test_input_schema import CASES, build

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FAMILY = get_family("rnn")
AXES = {"x": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_of(**config) -> RNN:
    torch.manual_seed(0)
    return RNN(build_config(FAMILY, config)).eval()


def padded(model: RNN, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs with right padding of every kind: full rows, short rows, a one-token row and (from 4 rows
    on) an all-padding row."""
    torch.manual_seed(seed)
    c = model.config
    x = (
        torch.randint(1, c.vocab_size, (batch, length))
        if c.vocab_size
        else torch.randn(batch, length, c.input_size)
    )
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, max(1, length - 2) :] = 0
    if batch > 2:
        mask[2, 1:] = 0
    if batch > 3:
        mask[3] = 0
    return {"x": x, "mask": mask}


def scanned(model: RNN, inputs: dict, monkeypatch) -> torch.Tensor:
    """The model's export path, run eagerly (torch's scan runs as a loop outside tracing)."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.compiler, "is_exporting", lambda: True)
        with torch.no_grad():
            return model(*inputs.values())


CONFIGS = [
    {"cell": cell, "bidirectional": bidirectional, "num_layers": 2, "head": head, "pooling": pooling}
    for cell in ("rnn", "lstm", "gru")
    for bidirectional in (False, True)
    for head, pooling in (("sequence", "last"), ("sequence", "mean"), ("tagging", "last"))
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_the_scanned_path_equals_packing_on_padded_batches(config, monkeypatch):
    model = model_of(vocab_size=17, embed_dim=5, hidden_size=6, num_outputs=3, **config)
    inputs = padded(model, 5, 8)
    with torch.no_grad():
        packed = model(*inputs.values())
    torch.testing.assert_close(scanned(model, inputs, monkeypatch), packed, atol=1e-6, rtol=0)
    torch.testing.assert_close(  # no mask: every position real
        scanned(model, {"x": inputs["x"]}, monkeypatch), model(inputs["x"]).detach(), atol=1e-6, rtol=0
    )
    with torch.no_grad():  # the encoder's per-position outputs too (what text heads read)
        encoded = model.encode(*inputs.values())
    with monkeypatch.context() as patch:
        patch.setattr(torch.compiler, "is_exporting", lambda: True)
        with torch.no_grad():
            torch.testing.assert_close(model.encode(*inputs.values()), encoded, atol=1e-6, rtol=0)


def test_float_features_and_no_head_scan_like_packing(monkeypatch):
    model = model_of(cell="lstm", input_size=4, hidden_size=5, bidirectional=True, num_outputs=0)
    inputs = padded(model, 4, 6)
    with torch.no_grad():
        packed = model(*inputs.values())
    torch.testing.assert_close(scanned(model, inputs, monkeypatch), packed, atol=1e-6, rtol=0)


def test_weights_keep_their_names():
    model = model_of(cell="lstm", vocab_size=11, embed_dim=4, hidden_size=5, num_layers=2, bidirectional=True)
    names = [f"rnn.{kind}_l{layer}{suffix}" for layer in range(2) for suffix in ("", "_reverse")
             for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]  # fmt: skip
    assert sorted(model.state_dict()) == sorted(["embed.weight", *names, "head.weight", "head.bias"])


@pytest.mark.parametrize("preset", ["lstm-tiny", "gru-tiny", "rnn-tiny"])
def test_padded_graphs_take_any_batch_and_length(preset, tmp_path):
    """ONNX Runtime and the reloaded program equal PyTorch's packed path within 1e-4 on batches and
    lengths other than the traced one (1 included)."""
    model = model_of(**FAMILY.presets[preset])
    example = padded(model, 2, 7)
    onnx_path = export_onnx(model, example, tmp_path / "m.onnx", AXES)
    program = load_program(export_program(model, example, tmp_path / "m.pt2", AXES))
    for batch, length in [(5, 11), (1, 1), (4, 3)]:
        inputs = padded(model, batch, length, seed=batch)
        assert verify_onnx(onnx_path, model, inputs) <= 1e-4
        assert verify_program(program, model, inputs) <= 1e-4


# --- the tasks that use the family ----------------------------------------------------------------------

RNN_TEXT = {"arch": "rnn", "bidirectional": True, "embed_dim": 8, "hidden_size": 8}
TASKS = {  # case -> the model it is built with (CASES' own model where it is already an rnn)
    "text_classification": RNN_TEXT,
    "token_classification": RNN_TEXT,
    "speech_recognition": None,
    "semantic_role_labeling": None,
}


@pytest.mark.parametrize("case", ["token_classification", "speech_recognition"])
def test_rnn_task_graphs_equal_the_task_forward(case, tmp_path, monkeypatch):
    check_task(case, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["text_classification", "semantic_role_labeling"])
def test_other_rnn_task_graphs_equal_the_task_forward(case, tmp_path, monkeypatch):
    check_task(case, tmp_path, monkeypatch)


def check_task(case: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    if TASKS[case] is not None:
        data, task, _, columns = CASES[case]
        monkeypatch.setitem(CASES, case, (data, task, TASKS[case], columns))
    task, predictor = build(case)
    model = predictor.model.eval()
    assert any(isinstance(m, RNN) for m in model.modules())
    records = task.clean(ColumnRecords(CASES[case][3](), case), "train")
    items = [task.encode(records[i], None) for i in range(6)]
    example, check = task.collate(items[:2]), task.collate(items[2:6])  # other batch, other lengths
    export_task_onnx(task, model, example, tmp_path, check_batch=check)  # checked within 1e-4
    program = load_program(export_task_program(task, model, example, tmp_path / "model.pt2"))
    module, inputs, _ = task.export_signature(model, check)
    assert verify_program(program, module, inputs) <= 1e-4
