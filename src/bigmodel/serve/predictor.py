"""``Predictor``: a trained model plus its fitted task — raw input in, what a person reads out.

It knows no task: ``task.parse`` turns the input (a file, records, strings, arrays, ...) into
examples, ``task.encode`` and ``task.collate`` make batches, ``task.predict`` reads the outputs back.
``predict(inputs)`` is ``run(parse(inputs))``; the two halves are public so that the HTTP server's
micro-batcher (serve/batching.py) can parse each request on its own and run the examples of many
requests in one forward pass. Nothing is mutated per call, so one Predictor serves many threads.
What comes out is finite: a model whose outputs hold NaN or inf (damaged weights, inputs far outside
the training data) is refused with a :class:`~bigmodel.errors.UserError` naming the rows, never
returned.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bigmodel.data.loader import to_device
from bigmodel.data.values import describe_rows
from bigmodel.errors import DataError, UserError


class Predictor:
    """Predict with a trained run. Build it with :func:`bigmodel.load`.

    Args:
        model: the trained module (eval mode is set here).
        task: the fitted task.
        batch_size: examples per forward pass.
    """

    def __init__(self, model: nn.Module, task, batch_size: int = 64):
        self.model = model.eval()
        self.task = task
        self.batch_size = batch_size

    @classmethod
    def from_export(cls, folder, batch_size: int = 64) -> Predictor:
        """Predict with an export folder (``bigmodel export RUN --format onnx|torch-export``) instead of
        a run: the task comes from its task.json, the model's forward is the exported graph run by
        ONNX Runtime or the loaded program (``bigmodel.export.runtime``); no model code is needed.

        Raises:
            UserError: naming the file that is missing or damaged, or why the graph cannot be served.
        """
        from bigmodel.export.runtime import open_export

        model, task, _ = open_export(folder)
        return cls(model, task, batch_size)

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    def predict(self, inputs) -> list[dict]:
        """Predict for whatever the task accepts (see its ``parse``): a data file, records, strings,
        an array of rows. Returns one readable dict per example.

        Raises:
            UserError: the inputs are not what the task accepts (a DataError naming the row and
                field), or the model's outputs are not finite for some rows.
        """
        return self.run(self.parse(inputs))

    def parse(self, inputs) -> list[dict]:
        """The task's examples for ``inputs`` (at least one), checked by row and field.

        Raises:
            DataError: the inputs are not what the task accepts, or hold nothing to predict.
        """
        examples = self.task.parse(inputs)
        if not examples:
            raise DataError("inputs: nothing to predict.")
        return examples

    def run(self, examples: list[dict]) -> list[dict]:
        """Encode, collate and forward parsed ``examples`` in chunks of ``batch_size``; one readable
        dict per example, in order. Examples of several ``parse`` calls may be concatenated.

        Raises:
            UserError: the model's outputs are not finite for some rows (numbered in ``examples``).
        """
        out: list[dict] = []
        with torch.inference_mode():
            for start in range(0, len(examples), self.batch_size):
                chunk = examples[start : start + self.batch_size]
                batch = self.task.collate([self.task.encode(example, None) for example in chunk])
                out += self.task.predict(self.model, to_device(batch, self.device))
        bad = [i for i, row in enumerate(out) if not _finite(row)]
        if bad:
            raise UserError(
                f"inputs: the model produced non-finite outputs (NaN or inf) for "
                f"{describe_rows(range(1, len(out) + 1), bad)} of {len(out)}; its weights may be damaged "
                f"(check the run's model.safetensors), or these inputs lie far outside the training data."
            )
        return out


def _finite(value) -> bool:
    """Whether every number in a result (nested dicts, lists, tensors, NumPy arrays) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all()) if value.is_floating_point() or value.is_complex() else True
    if isinstance(value, np.ndarray | np.floating):
        return bool(np.isfinite(value).all()) if np.issubdtype(value.dtype, np.inexact) else True
    return True
