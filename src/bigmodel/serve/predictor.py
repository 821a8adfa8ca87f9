"""``Predictor``: a trained model plus its fitted task — raw input in, what a person reads out.

It knows no task: ``task.parse`` turns the input (a file, records, strings, arrays, ...) into
examples, ``task.encode`` and ``task.collate`` make batches, ``task.predict`` reads the outputs back.
Nothing is mutated per call, so one Predictor serves many threads.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel.data.loader import to_device
from bigmodel.errors import DataError


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

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    def predict(self, inputs) -> list[dict]:
        """Predict for whatever the task accepts (see its ``parse``): a data file, records, strings,
        an array of rows. Returns one readable dict per example."""
        examples = self.task.parse(inputs)
        if not examples:
            raise DataError("inputs: nothing to predict.")
        out: list[dict] = []
        with torch.inference_mode():
            for start in range(0, len(examples), self.batch_size):
                chunk = examples[start : start + self.batch_size]
                batch = self.task.collate([self.task.encode(example, None) for example in chunk])
                out += self.task.predict(self.model, to_device(batch, self.device))
        return out
