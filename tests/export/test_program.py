"""torch.export programs: every family captured, saved with torch.export.save, loaded back without the
model and run on another batch size (and length) gives the model's outputs; a decode step with its KV
cache as tensors; named inputs and outputs; clear refusals."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import pytest
import torch
from torch import nn

from bigmodel.errors import UserError
from bigmodel.export.onnx import DecoderOnlyStep
from bigmodel.export.program import (
    capture,
    export_program,
    load_program,
    rebuild_outputs,
    verify_program,
)
from bigmodel.models.registry import build_config, family_names, get_family
from bigmodel.models.rnn import lengths_from_mask

FAMILY_OF = {preset: name for name in family_names() for preset in get_family(name).tiny_presets}
FIRST = [get_family(name).tiny_presets[0] for name in family_names()]  # one preset per family
# The recurrent cells are each their own operator; the other presets add no new kind of graph.
FAST = [*FIRST, "lstm-tiny", "gru-tiny"]
SLOW = [p for p in FAMILY_OF if p not in FAST]


def tiny(preset: str) -> nn.Module:
    torch.manual_seed(0)
    family = get_family(FAMILY_OF[preset])
    return family.model_cls(build_config(family, family.presets[preset])).eval()


def family_inputs(model: nn.Module, preset: str, batch: int, shorter: int = 0) -> dict[str, torch.Tensor]:
    """The family's example input named as its forward's parameters; token inputs (integer ``(B, T)``)
    ``shorter`` positions shorter."""
    torch.manual_seed(batch)
    values = [t for t in get_family(FAMILY_OF[preset]).example_input(model.config, batch) if t is not None]
    inputs = dict(zip(inspect.signature(model.forward).parameters, values, strict=False))
    return {n: t[:, : t.shape[1] - shorter] if varies(preset, t) else t for n, t in inputs.items()}


def varies(preset: str, t: torch.Tensor) -> bool:
    return t.ndim == 2 and not t.is_floating_point()


def axes(preset: str, inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    return {
        n: {0: "batch", 1: f"{n}_length"} if varies(preset, t) else {0: "batch"} for n, t in inputs.items()
    }


def check(preset: str, tmp_path) -> None:
    model = tiny(preset)
    example = family_inputs(model, preset, 2)
    program = load_program(export_program(model, example, tmp_path / f"{preset}.pt2", axes(preset, example)))
    for batch, shorter in [(3, 2), (1, 1)]:
        assert verify_program(program, model, family_inputs(model, preset, batch, shorter)) <= 1e-5


@pytest.mark.parametrize("preset", FAST)
def test_family_program_reloads_and_matches_the_model(preset, tmp_path):
    check(preset, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", SLOW)
def test_other_presets_reload_and_match(preset, tmp_path):
    check(preset, tmp_path)


def test_a_loaded_program_runs_without_the_model_and_names_its_tensors(tmp_path):
    model = tiny("bert-tiny")
    example = family_inputs(model, "bert-tiny", 2)
    path = export_program(model, example, tmp_path / "bert.pt2", axes("bert-tiny", example))
    del model
    program = load_program(path)
    assert program.inputs == ["input_ids", "attention_mask"] and program.outputs == ["output"]
    out = program(input_ids=torch.randint(0, 50, (4, 3)), attention_mask=torch.ones(4, 3, dtype=torch.long))
    assert out["output"].shape[:2] == (4, 3)
    with pytest.raises(UserError, match=r"missing \['attention_mask'\], unknown \['mask'\]"):
        program(input_ids=torch.zeros(1, 3, dtype=torch.long), mask=torch.ones(1, 3))


def test_decode_step_program_with_the_cache_as_tensors(tmp_path):
    model = tiny("gpt-tiny")
    step = DecoderOnlyStep(model)
    layers = model.config.num_layers
    names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]

    def inputs(batch: int, past: int) -> dict[str, torch.Tensor]:
        cache = model.new_cache()
        with torch.no_grad():
            model(torch.randint(0, 97, (batch, past)), cache=cache)
        tensors = [t for c in cache for t in (c.keys, c.values)]
        return {"input_ids": torch.randint(0, 97, (batch, 1)), **dict(zip(names, tensors, strict=True))}

    dynamic = {"input_ids": {0: "batch"}, **dict.fromkeys(names, {0: "batch", 2: "past_length"})}
    path = export_program(step, inputs(2, 5), tmp_path / "decode.pt2", dynamic)
    program = load_program(path)
    assert program.outputs == ["logits"] + [n.replace("past", "present") for n in names]
    check_inputs = inputs(3, 9)
    assert verify_program(program, step, check_inputs) <= 1e-5
    assert program(**check_inputs)["present_key_0"].shape[2] == 10  # the cache grew by the new token


def test_training_mode_is_exported_as_eval_and_restored(tmp_path):
    model = tiny("mlp-tiny").train()  # dropout and batch norm behave differently in training
    example = {"x": torch.randn(4, 7)}
    path = export_program(model, example, tmp_path / "mlp.pt2")
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert verify_program(path, model, {"x": torch.randn(5, 7)}) <= 1e-6


def test_not_a_program_is_refused(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(UserError, match="not a program written by export_program"):
        load_program(bad)


def test_a_data_dependent_check_is_refused_naming_the_line():
    class Checked(nn.Module):  # reads the mask's values, as packing a padded batch did
        def forward(self, x, mask):
            return x * lengths_from_mask(mask)[:, None, None]

    x, mask = torch.randn(2, 6, 3), torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(UserError, match=r"the Checked model cannot be exported.*bigmodel/models/rnn.py:\d+"):
        capture(Checked(), {"x": x, "mask": mask})


class Pair(NamedTuple):
    scores: torch.Tensor
    lengths: torch.Tensor


def test_named_tuple_outputs_are_saved_and_rebuilt(tmp_path):
    """torch.export.save cannot serialise an unregistered named tuple: the program returns its fields as a
    dict, and its description rebuilds the named tuple; an output named like an input gets ``_out``."""

    class Scorer(nn.Module):
        def forward(self, x, lengths):
            return Pair(x.sum(-1), lengths * 2)

    x, lengths = torch.randn(3, 4), torch.tensor([1, 2, 3])
    program = load_program(export_program(Scorer(), {"x": x, "lengths": lengths}, tmp_path / "p.pt2"))
    assert program.outputs == ["scores", "lengths_out"]
    assert program.description["structure"] == {
        "namedtuple": f"{__name__}:Pair", "items": ["tensor", "tensor"]
    }  # fmt: skip
    got = rebuild_outputs(program.description["structure"], list(program(x=x, lengths=lengths).values()))
    assert isinstance(got, Pair) and got.lengths.tolist() == [2, 4, 6]
    torch.testing.assert_close(got.scores, x.sum(-1))
    with pytest.raises(UserError, match=r"g\.pt2: the graph returns 1 outputs, its description more"):
        rebuild_outputs(program.description["structure"], [got.scores], "g.pt2")


def test_parity_counts_equal_infinities_as_equal_and_refuses_one_sided_ones():
    from bigmodel.export.program import max_difference

    masked = torch.tensor([[0.5, -float("inf")], [0.25, 1.0]])
    assert max_difference(["scores"], [masked.clone()], [masked], atol=1e-4) == 0.0
    finite = masked.nan_to_num(neginf=-1e4)
    with pytest.raises(UserError, match="output 'scores' differs"):
        max_difference(["scores"], [finite], [masked], atol=1e-4)
    with pytest.raises(UserError, match="output 'scores' differs"):
        max_difference(["scores"], [masked * float("nan")], [masked], atol=1e-4)
