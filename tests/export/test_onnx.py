"""ONNX export: every family's graph run in ONNX Runtime equals PyTorch within 1e-4 on another batch size
and length than the traced example; decoders' KV-cache graphs decode greedily to the same tokens as
``models.generate``; a task's graph through ``Task.export_signature``; clear refusals."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import UserError
from bigmodel.export.onnx import (
    OnnxGenerator,
    export_decoder,
    export_onnx,
    export_task_onnx,
    onnx_session,
    run_onnx,
    verify_onnx,
)
from bigmodel.models.generate import generate
from bigmodel.models.registry import build_config, family_names, get_family
from bigmodel.tasks.text_classification import TextClassificationOptions, TextClassificationTask
from helpers import text_rows

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# One tiny preset (odd sizes) per family runs by default, the others are slow (-m slow). gpt, llama and
# t5 run by default through their decoding graphs below (the prefill graph is the forward plus its
# cache); transformer and diffusion_unet, the slowest to convert (10-20 s each on a loaded 2-core
# machine), are slow here, and their torch.export programs are checked by default in test_program.py.
FAST = ["mlp-tiny", "cnn-tiny", "resnet-tiny", "lstm-tiny", "gru-tiny", "bert-tiny", "efficientnet-tiny",
        "mobilenet_v2-tiny", "unet-tiny"]  # fmt: skip
SLOW = ["rnn-tiny", "resnet-tiny-bottleneck", "gpt-tiny", "llama-tiny", "llama-tiny-qwen2", "t5-tiny",
        "t5-tiny-gated", "transformer-tiny", "transformer-tiny-prenorm", "diffusion-unet-tiny",
        "fastspeech-tiny"]  # fmt: skip
FAMILY_OF = {preset: name for name in family_names() for preset in get_family(name).tiny_presets}


def test_the_lists_cover_every_tiny_preset_of_every_family():
    assert sorted(FAST + SLOW) == sorted(FAMILY_OF)


def tiny(preset: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    family = get_family(FAMILY_OF[preset])
    return family.model_cls(build_config(family, {**family.presets[preset], **overrides})).eval()


def family_inputs(model: nn.Module, preset: str, batch: int) -> dict[str, torch.Tensor]:
    """The family's own example input, named as its forward's parameters."""
    family = get_family(FAMILY_OF[preset])
    values = [t for t in family.example_input(model.config, batch) if t is not None]
    names = list(inspect.signature(model.forward).parameters)[: len(values)]
    return dict(zip(names, values, strict=True))


def varies_in_length(preset: str, t: torch.Tensor) -> bool:
    """Token ids and masks (integer ``(B, T)``) vary in length."""
    return t.ndim == 2 and not t.is_floating_point()


def family_axes(preset: str, inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """The batch on axis 0 of every input; the length on axis 1 of token inputs."""
    return {
        name: {0: "batch", 1: f"{name}_length"} if varies_in_length(preset, t) else {0: "batch"}
        for name, t in inputs.items()
    }


def other_batch(model, preset: str, batch: int, shorter: int) -> dict[str, torch.Tensor]:
    """A batch of another size, its token inputs ``shorter`` positions shorter, one row padded."""
    torch.manual_seed(batch)
    inputs = family_inputs(model, preset, batch)
    for name, t in inputs.items():
        if varies_in_length(preset, t):
            inputs[name] = t[:, : t.shape[1] - shorter].clone()
    if "attention_mask" in inputs:
        inputs["attention_mask"][-1, -1] = 0
    return inputs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """preset -> (model, its ONNX file traced on a batch of 2), exported once for the module."""
    done = {}

    def get(preset: str):
        if preset not in done:
            model = tiny(preset)
            example = family_inputs(model, preset, 2)
            path = tmp_path_factory.mktemp("onnx") / f"{preset}.onnx"
            done[preset] = model, export_onnx(model, example, path, family_axes(preset, example))
        return done[preset]

    return get


def check_family(preset: str, exported) -> None:
    model, path = exported(preset)
    for batch, shorter in [(3, 2), (1, 1)]:
        diff = verify_onnx(path, model, other_batch(model, preset, batch, shorter))
        assert diff <= 1e-4


@pytest.mark.parametrize("preset", FAST)
def test_family_onnx_matches_pytorch_on_other_batch_sizes_and_lengths(preset, exported):
    check_family(preset, exported)


@pytest.mark.slow
@pytest.mark.parametrize("preset", SLOW)
def test_other_presets_onnx_match_pytorch(preset, exported):
    check_family(preset, exported)


def test_graph_inputs_and_outputs_are_named_with_dynamic_axes(exported):
    import onnx

    model, path = exported("bert-tiny")
    graph = onnx.load(str(path)).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims == {
        "input_ids": ["batch", "input_ids_length"],
        "attention_mask": ["batch", "input_ids_length"],  # the model ties the two lengths
    }
    (output,) = graph.output
    assert output.name == "output"
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == [
        "batch", "input_ids_length", model.config.embed_dim,
    ]  # fmt: skip


def test_dict_outputs_keep_their_keys(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 3), nn.Linear(5, 2)

        def forward(self, x):
            return {"scores": self.a(x).softmax(-1), "boxes": self.b(x)}

    model = TwoHeads()
    path = export_onnx(model, {"x": torch.randn(2, 5)}, tmp_path / "two.onnx")
    out = run_onnx(onnx_session(path), {"x": torch.randn(4, 5)})
    assert list(out) == ["scores", "boxes"] and out["boxes"].shape == (4, 2)


# --- verification and refusals -------------------------------------------------------------------------


def test_verify_refuses_a_graph_that_computes_something_else(exported):
    model, path = exported("mlp-tiny")
    model = copy.deepcopy(model)  # the shared one stays as exported
    assert verify_onnx(path, model, family_inputs(model, "mlp-tiny", 5)) <= 1e-5
    with torch.no_grad():
        model.head.bias[1] += 1e-3  # a change far below what a person would see in the outputs
    with pytest.raises(UserError, match=r"output 'output' differs from the model's by 0.001"):
        verify_onnx(path, model, family_inputs(model, "mlp-tiny", 5))


def test_an_axis_the_model_fixes_cannot_be_dynamic(tmp_path):
    model = tiny("mlp-tiny")
    with pytest.raises(
        UserError, match=r"the mlp model cannot be exported.*axis 1 of input 'x'.*constant \(7\)"
    ):
        export_onnx(model, {"x": torch.randn(2, 7)}, tmp_path / "m.onnx", {"x": {0: "batch", 1: "features"}})


@pytest.mark.parametrize(
    "inputs, dynamic, match",
    [
        ({}, None, "non-empty dict"),
        ({"x": [1.0, 2.0]}, None, "input 'x' must be a tensor"),
        ({"x": torch.randn(2, 7)}, {"y": {0: "batch"}}, "input 'y', which is not one of"),
        ({"x": torch.randn(2, 7)}, {"x": {2: "batch"}}, "axis 2 of input 'x' does not exist"),
        ({"x": torch.randn(1, 7)}, None, r"axis 0 \('batch'\) of example input 'x' has size 1"),
    ],
)
def test_bad_inputs_and_axes_are_refused_by_name(inputs, dynamic, match, tmp_path):
    with pytest.raises(UserError, match=match):
        export_onnx(tiny("mlp-tiny"), inputs, tmp_path / "m.onnx", dynamic)


def test_non_tensor_outputs_are_refused(tmp_path):
    class WithModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x), self.lin  # a task's output that carries a module (a CRF)

    with pytest.raises(UserError, match=r"the WithModule model cannot be exported.*Linear'> in output"):
        export_onnx(WithModule(), {"x": torch.randn(2, 3)}, tmp_path / "m.onnx")


# --- decoders: the KV cache as graph inputs and outputs --------------------------------------------------


def spread(model: nn.Module, std: float = 0.3) -> nn.Module:
    """Wider random weights, so greedy decoding of a random model does not repeat one token."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """preset -> (model, folder of its decoding graphs), exported once for the module's tests; each
    graph is verified within 1e-4 on another batch and length by export_decoder itself."""
    done = {}

    def get(preset: str):
        if preset not in done:
            model, folder = spread(tiny(preset)), tmp_path_factory.mktemp(preset)
            paths = export_decoder(model, folder)
            done[preset] = model, folder, sorted(paths)
        return done[preset]

    return get


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_decoder_only_greedy_decoding_in_onnx_runtime_equals_generate(preset, decoders):
    model, folder, graphs = decoders(preset)
    assert graphs == ["decode", "prefill"]
    generator = OnnxGenerator(folder)
    for batch, length in [(3, 4), (2, 1)]:  # a one-token prompt: the prefill's shortest
        prompt = torch.randint(0, model.config.vocab_size, (batch, length))
        want = generate(model, prompt, max_new_tokens=10, stop_tokens=[])
        got = generator.generate(prompt.numpy(), max_new_tokens=10, stop_tokens=[])
        np.testing.assert_array_equal(got, want.numpy())
        assert len(np.unique(got[:, length:])) > 4  # the test can tell a wrong token from a right one
    # Stopping: a row that emits a stop token is finished and padded, as generate does it.
    prompt = torch.randint(0, model.config.vocab_size, (3, 4))
    stop = [int(generate(model, prompt, max_new_tokens=3, stop_tokens=[])[0, -1])]
    want = generate(model, prompt, max_new_tokens=10, stop_tokens=stop)
    got = generator.generate(prompt.numpy(), max_new_tokens=10, stop_tokens=stop)
    np.testing.assert_array_equal(got, want.numpy())


def test_decode_graph_takes_and_returns_the_cache_by_name(decoders):
    model, folder, _ = decoders("llama-tiny")  # grouped-query: the cache holds num_kv_heads heads
    session = onnx_session(folder / "decode.onnx")
    c = model.config
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs["input_ids"] == ["batch", 1]
    assert inputs["past_key_0"] == ["batch", c.num_kv_heads, "past_length", c.head_dim]
    assert len(inputs) == 1 + 2 * c.num_layers
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs["logits"] == ["batch", c.vocab_size]
    assert set(outputs) == {"logits"} | {
        f"present_{k}_{i}" for i in range(c.num_layers) for k in ("key", "value")
    }


def check_encoder_decoder(preset: str, tmp_path, distinct: int, std: float = 0.3) -> None:
    model = spread(tiny(preset), std)
    assert sorted(export_decoder(model, tmp_path)) == ["decode", "encoder", "prefill"]
    source = torch.randint(0, model.config.vocab_size, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0  # a padded source
    want = generate(model, source, mask, max_new_tokens=10, stop_tokens=[])
    got = OnnxGenerator(tmp_path).generate(source.numpy(), mask.numpy(), max_new_tokens=10, stop_tokens=[])
    np.testing.assert_array_equal(got, want.numpy())
    assert len(np.unique(got[:, 1:])) >= distinct  # the test can tell a wrong token from a right one


def test_t5_greedy_decoding_in_onnx_runtime_equals_generate(tmp_path):
    check_encoder_decoder("t5-tiny", tmp_path, distinct=5)


@pytest.mark.slow
def test_transformer_greedy_decoding_in_onnx_runtime_equals_generate(tmp_path):
    # A random post-norm transformer repeats one token per source (at std 0.3 the same one for all):
    # the rows still differ, and each graph's logits were checked within 1e-4 by export_decoder.
    check_encoder_decoder("transformer-tiny", tmp_path, distinct=3, std=0.2)


def test_a_model_without_a_cache_has_no_decoder_graphs(tmp_path):
    with pytest.raises(UserError, match="the bert model has no KV cache"):
        export_decoder(tiny("bert-tiny"), tmp_path)


def test_generator_refuses_more_tokens_than_positions(decoders):
    _, folder, _ = decoders("gpt-tiny")
    with pytest.raises(UserError, match="exceed the model's max_positions 32"):
        OnnxGenerator(folder).generate(np.zeros((1, 30), dtype=np.int64), max_new_tokens=5)


# --- a task's graph: Task.export_signature -------------------------------------------------------------


class ExportableTextClassification(TextClassificationTask):
    """What text tasks would add to the Task contract (see the export report)."""

    def export_signature(self, model, batch):
        names = ("input_ids", "attention_mask", "token_type_ids")
        return model, {n: batch[n] for n in names}, {n: {0: "batch", 1: "length"} for n in names}


def test_a_task_graph_equals_task_forward(tmp_path):
    task = ExportableTextClassification(TextClassificationOptions(), {"text": "text", "label": "label"})
    rows = text_rows(40)
    task.fit(ColumnRecords({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, "texts"))
    tiny_bert = {"embed_dim": 24, "num_layers": 1, "num_heads": 2, "ffn_dim": 37}
    model = task.build_model(get_family("bert"), tiny_bert, None).eval()

    def batch(first: int, n: int) -> dict:
        return task.collate([task.encode({"text": t}, None) for t, _ in rows[first : first + n]])

    example, check = batch(0, 4), batch(10, 7)
    assert check["input_ids"].shape[1] != example["input_ids"].shape[1]
    paths = export_task_onnx(task, model, example, tmp_path, check_batch=check)
    assert list(paths) == ["model"]  # a classifier has no decoding graphs
    (logits,) = run_onnx(onnx_session(paths["model"]), check).values()
    with torch.no_grad():
        np.testing.assert_allclose(logits, task.forward(model, check).numpy(), atol=1e-5)


def test_a_task_without_a_signature_is_refused_by_name(tmp_path):
    class Unexportable:  # a user's task written before Task.export_signature existed
        name = "my_task"

    with pytest.raises(UserError, match="task 'my_task' does not say what its graph takes"):
        export_task_onnx(Unexportable(), tiny("bert-tiny"), {}, tmp_path)
