"""``Predictor``: a trained run's model plus the preprocessing it was trained with.

Accepts what a person has at hand: a data file, a list of records (dicts keyed by feature name),
or an array shaped like the features — for a text model, a file with the text column, records with
the text key, or strings. Returns one readable dict per input row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigmodel.data import Normalizer, columns_from_records, load_source, table_from_columns
from bigmodel.errors import DataError
from bigmodel.models.base import predict_outputs

FILE_SCHEMES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class Predictor:
    """Predict with a trained run. Build it with :func:`bigmodel.load`.

    Args:
        model: the trained module (eval mode is set here).
        task: the fitted task (class names or target scaling).
        normalizer: the feature normalisation fitted on the training split.
        feature_names: the columns the model reads, in order.
        input_shape: the per-row tensor shape the model expects.
        tokenizer: for a text model, the tokenizer it was trained with (then the model is called
            as ``model(input_ids, attention_mask)``).
        text: the text column / record key of a text model.
        max_length: truncation length of a text model.
    """

    def __init__(
        self,
        model: nn.Module,
        task,
        normalizer: Normalizer,
        feature_names: list[str],
        input_shape: tuple[int, ...],
        tokenizer=None,
        text: str | None = None,
        max_length: int | None = None,
    ):
        self.model = model.eval()
        self.task = task
        self.normalizer = normalizer
        self.feature_names = feature_names
        self.input_shape = tuple(input_shape)
        self.tokenizer = tokenizer
        self.text = text
        self.max_length = max_length

    def predict(self, inputs) -> list[dict]:
        """Predict for a file path (.csv/.jsonl/.parquet), records, or an array of rows.

        Returns:
            One dict per row: ``{"label", "probabilities"}`` (classification) or
            ``{"prediction"}`` (regression).
        """
        if self.tokenizer is not None:
            batch = self.tokenizer.encode(
                self.texts(inputs), max_length=self.max_length, return_token_type_ids=False
            )
            outputs = predict_outputs(self.model, batch["input_ids"], batch["attention_mask"])
            return self.task.postprocess(outputs)
        features = self.features(inputs).reshape(-1, *self.input_shape)
        x = torch.from_numpy(self.normalizer(features))
        return self.task.postprocess(predict_outputs(self.model, x))

    def texts(self, inputs) -> list[str]:
        """The text of each row: a file (a ``Path``, or a ``str`` naming an existing .csv/.jsonl/.parquet
        file) with the text column, records with the text key, one string, or a list of strings."""
        if isinstance(inputs, Path) or (
            isinstance(inputs, str) and Path(inputs).suffix.lower() in FILE_SCHEMES and Path(inputs).is_file()
        ):
            texts = list(load_source(f"{_file_scheme(Path(inputs))}:{inputs}", text=self.text).texts)
        elif isinstance(inputs, str):
            texts = [inputs]
        else:
            rows = [inputs] if isinstance(inputs, Mapping) else list(inputs)
            if rows and all(isinstance(r, Mapping) for r in rows):
                columns = columns_from_records(rows, "inputs")
                texts = list(table_from_columns(columns, None, None, "inputs", text=self.text).texts)
            elif all(isinstance(r, str) for r in rows):
                texts = rows
            else:
                raise DataError(
                    f"inputs: a text model takes strings, records with a '{self.text}' key, or a file; "
                    f"got {type(rows[0]).__name__} rows."
                )
        if not texts:
            raise DataError("inputs: no texts to predict.")
        return texts

    def features(self, inputs) -> np.ndarray:
        """Raw (un-normalised) feature rows, shape (N, num_features)."""
        if isinstance(inputs, (str, Path)):
            path = Path(inputs)
            table = load_source(f"{_file_scheme(path)}:{path}", self.feature_names, label=None)
            return table.features
        if isinstance(inputs, Mapping):
            inputs = [inputs]
        if isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], Mapping):
            columns = columns_from_records(list(inputs), "inputs")
            return table_from_columns(columns, self.feature_names, None, "inputs").features
        array = np.asarray(inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs, dtype=np.float32)
        width = len(self.feature_names)
        if array.ndim == 1 and array.size == width:  # a single row
            return array.reshape(1, width)
        if array.ndim >= 2 and math.prod(array.shape[1:]) == width:  # (N, 64), (N, 8, 8), (N, 1, 8, 8)
            return array.reshape(len(array), width)
        raise DataError(
            f"inputs: shape {tuple(array.shape)} does not fit this model; expected (N, {width}) or "
            f"(N, {', '.join(map(str, self.input_shape))}) — {math.prod(self.input_shape)} features per row."
        )


def _file_scheme(path: Path) -> str:
    scheme = FILE_SCHEMES.get(path.suffix.lower())
    if scheme is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'. Allowed: {', '.join(FILE_SCHEMES)}.")
    return scheme
