"""Run an export folder (``bigmodel export RUN --format onnx|torch-export``) in the trained model's place.

The folder holds the graph (``model.onnx`` or ``model.pt2``), ``task.json`` and the files the task saved
beside it (the tokenizer), and ``export.json`` (pipeline.export_run). :func:`open_export` restores the
task from task.json through the task registry — the task is the pre- and post-processing: parse,
encode, collate, predict — and puts a :class:`GraphModel` where the model was: a module without
weights or model code whose forward is the exported graph, run by ONNX Runtime or as the loaded
``torch.export`` program. Nothing of the training loop, the recipe or the model's family is imported.

The graph describes itself (``export/program.describe_graph``: input and output names, the outputs'
structure, whether it is the model's whole forward); graphs the task cannot call in the model's place
are refused when the folder is opened, never served wrong:

- a graph of a wrapper (masked_lm's logits at every position), or of a model that decodes with a KV
  cache (causal_lm, seq2seq: their ``decoder/`` graphs are for :class:`~bigmodel.export.OnnxGenerator`);
- a task that reads a part of the model outside the graph (token classification's CRF) is refused
  when it reaches for it, naming the part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel.errors import UserError
from bigmodel.export.program import rebuild_outputs

EXPORT_JSON = "export.json"
SERVED_FORMATS = ("onnx", "torch-export")


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder ``bigmodel export`` wrote (it holds export.json)."""
    return isinstance(path, str | Path) and (Path(path) / EXPORT_JSON).is_file()


class GraphModel(nn.Module):
    """The exported graph in the trained model's place: ``model(*tensors)`` as ``task.forward`` calls it.

    Args:
        run: ``{input name: tensor} -> [output tensors in graph order]`` (ONNX Runtime or a program).
        description: the graph's own description (``describe_graph``): ``inputs`` (the positional
            order), ``structure`` (how the outputs nest), ``model_parts`` (what the model held outside
            the graph's inputs: a task reading one is refused).
        where: the graph file, for messages.
    """

    def __init__(self, run, description: dict, where: str):
        super().__init__()
        self._run_graph = run
        self.inputs = list(description["inputs"])
        self.structure = description["structure"]
        self.model_parts = tuple(description.get("model_parts", ()))
        self.where = where

    def forward(self, *tensors: torch.Tensor, **options: Any) -> Any:
        if options or len(tensors) != len(self.inputs):
            given = f"{len(tensors)} tensors" + (f" and {sorted(options)}" if options else "")
            raise UserError(
                f"{self.where}: the task called the model with {given}; the exported graph takes "
                f"{self.inputs}. This task's predictions need the model itself: serve the run directory."
            )
        outputs = self._run_graph(dict(zip(self.inputs, tensors, strict=True)))
        return rebuild_outputs(self.structure, outputs, self.where)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # A part the trained model had (a CRF, its config) that the graph does not compute: answering
            # "absent" would let the task fall back to something else (argmax instead of Viterbi).
            if name in self.__dict__.get("model_parts", ()):
                raise UserError(
                    f"{self.__dict__['where']}: the task reads model.{name}, which the exported graph does "
                    "not hold; serve the run directory for this model."
                ) from None
            raise


def _read_export_json(folder: Path) -> dict:
    path = folder / EXPORT_JSON
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read as JSON ({exc}); export the run again.") from None
    graph = info.get("graphs", {}).get("model") if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("format"), str):
        raise UserError(f"{path}: damaged: expected a JSON object with 'format'; export the run again.")
    if info["format"] not in SERVED_FORMATS:
        raise UserError(
            f"{path}: format {info['format']!r} cannot be served; an export folder serves the formats "
            f"{', '.join(SERVED_FORMATS)} ('hf' is a checkpoint for model.pretrained, not a graph)."
        )
    if not isinstance(graph, dict) or not isinstance(graph.get("file"), str):
        raise UserError(
            f"{path}: damaged: 'graphs.model.file' does not name the graph; export the run again."
        )
    return info


def _onnx_runner(path: Path):
    from bigmodel.export.onnx import METADATA_KEY, onnx_session, run_onnx

    session = onnx_session(path)
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def run(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.asarray(a)) for a in run_onnx(session, inputs).values()]

    return run, text


def _program_runner(path: Path):
    from bigmodel.export.program import load_program

    program = load_program(path)

    def run(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(program(**inputs).values())

    return run, json.dumps(program.description)


def open_export(folder: str | Path) -> tuple[GraphModel, Any, dict]:
    """The exported graph and the fitted task of an export folder.

    Returns:
        ``(model, task, info)``: a :class:`GraphModel` (``Predictor(model, task)`` predicts with it),
        the task restored from the folder's task.json, and export.json's contents.

    Raises:
        UserError: naming the file that is missing or damaged (export.json, the graph, task.json), or
            saying why this graph cannot stand in for the model.
    """
    from bigmodel.tasks import restore_task

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such export folder.")
    info = _read_export_json(folder)
    path = folder / info["graphs"]["model"]["file"]
    if not path.is_file():
        raise UserError(f"{path}: missing; export.json names it as the graph. Export the run again.")
    runner, text = (_onnx_runner if info["format"] == "onnx" else _program_runner)(path)
    try:
        description = json.loads(text) if text else None
        if not isinstance(description, dict) or "structure" not in description or "inputs" not in description:
            raise ValueError("no description")
    except ValueError:
        raise UserError(
            f"{path}: the graph does not describe its inputs and outputs (written by an older bigmodel); "
            "export the run again."
        ) from None
    if description.get("generates"):
        raise UserError(
            f"{path}: this model generates with a KV cache; serving its export folder is not supported yet "
            "(decode with bigmodel.export.OnnxGenerator on its decoder/ folder, or serve the run directory)."
        )
    if description.get("is_model") is False:
        raise UserError(
            f"{path}: the graph is a wrapper around the model (task {info.get('task')!r} exports part of "
            "what it computes), which the task does not call in the model's place; serve the run directory."
        )
    task_json = folder / "task.json"
    try:
        state = json.loads(task_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{task_json}: cannot be read as JSON ({exc}); export the run again.") from None
    task = restore_task(state, folder)
    return GraphModel(runner, description, str(path)).eval(), task, info
