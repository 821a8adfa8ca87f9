"""Tiny real runs for the server tests, each trained once per session: a digits classifier (tabular:
one 1x8x8 array column) and a character-level causal LM; plus predictors with hooks (a gate that holds
batches, a poisoned value) and a stub task whose schema has a base64 image field."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

import bigmodel
from bigmodel.errors import DataError, UserError
from bigmodel.serve import Predictor
from bigmodel.serve.app import ServeSettings, create_app

TEXT = ["the cat sat on the mat.\n", "a dog sat on a log!\n", "the cat and the dog.\n"] * 20
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and leave the other core to the event loop)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """digits-mlp trained for a few steps: a real run directory (accuracy is not the point)."""
    out = tmp_path_factory.mktemp("digits")
    return bigmodel.train("digits-mlp", output=out, progress=False, train={"max_steps": 20}).path


@pytest.fixture(scope="session")
def digits(digits_run) -> Predictor:
    return bigmodel.load(digits_run)


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    """A one-layer character GPT trained for a few steps on a tiny corpus; it samples 12 characters."""
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t * 3}) + "\n" for t in TEXT))
    recipe = {
        "name": "tiny-lm",
        "data": {"source": f"jsonl:{corpus}", "max_length": 16, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "causal_lm", "eval_tokens": 256, "max_new_tokens": 12},
        "model": {"arch": "gpt", "embed_dim": 24, "num_heads": 2, "num_layers": 1, "dropout": 0.0,
                  "attn_dropout": 0.0},
        "train": {"batch_size": 8, "max_steps": 10, "optimizer": {"lr": 1e-2}},
    }  # fmt: skip
    before = os.environ.get("BIGMODEL_CACHE")
    os.environ["BIGMODEL_CACHE"] = str(root / "cache")
    try:
        return bigmodel.train(recipe, output=root / "runs", progress=False).path
    finally:
        if before is None:
            os.environ.pop("BIGMODEL_CACHE", None)
        else:
            os.environ["BIGMODEL_CACHE"] = before


@pytest.fixture(scope="session")
def lm(lm_run) -> Predictor:
    return bigmodel.load(lm_run)


@pytest.fixture(scope="session")
def stripes_run(tmp_path_factory) -> Path:
    """image_classification on PNG class folders (horizontal vs vertical stripes), a few steps of a CNN."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    for kind in ("horizontal", "vertical"):
        (root / "images" / kind).mkdir(parents=True)
        for i in range(10):
            pixels = stripes(kind, rng)
            Image.fromarray(pixels).save(root / "images" / kind / f"{i}.png")
    recipe = {
        "name": "stripes",
        "data": {"source": f"images:{root / 'images'}", "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "image_classification", "top_k": 2},
        "model": {"arch": "cnn", "channels": [4, 8]},
        "train": {"max_steps": 4, "batch_size": 8},
    }
    return bigmodel.train(recipe, output=root / "runs", progress=False).path


def stripes(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 12x10 grey image of horizontal or vertical stripes with noise."""
    lines = (np.arange(12)[:, None] % 2) if kind == "horizontal" else (np.arange(10)[None, :] % 2)
    image = np.broadcast_to(lines * 180 + 40, (12, 10)) + rng.normal(0, 15, (12, 10))
    return np.clip(image, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


_DIGITS = load_digits()


def digit(i: int) -> dict:
    """Record ``i`` of scikit-learn's digits as JSON: ``{"image": 1x8x8 nested lists}``."""
    return {"image": _DIGITS.data[i].reshape(1, 8, 8).tolist()}


class GatedPredictor(Predictor):
    """A predictor whose ``run`` records each batch's size, then waits for ``gate`` (open by default)
    and ``delay`` seconds: batches can be held to fill the queue, or slowed so that requests meet."""

    def __init__(self, inner: Predictor, delay: float = 0.0):
        super().__init__(inner.model, inner.task, inner.batch_size)
        self.gate, self.entered, self.delay = threading.Event(), threading.Event(), delay
        self.gate.set()
        self.batches: list[int] = []

    def run(self, examples: list[dict]) -> list[dict]:
        self.batches.append(len(examples))
        self.entered.set()
        if not self.gate.wait(20):
            raise RuntimeError("the test never opened the gate")
        time.sleep(self.delay)
        return super().run(examples)


class PoisonedPredictor(GatedPredictor):
    """Refuses (UserError, at run time, after parsing) any batch holding a digit whose first pixel is -13."""

    def run(self, examples: list[dict]) -> list[dict]:
        out = super().run(examples)
        bad = [i + 1 for i, e in enumerate(examples) if np.asarray(e["image"]).reshape(-1)[0] == -13]
        if bad:
            raise UserError(f"inputs: row {bad[0]}: the first pixel is -13, which this model refuses.")
        return out


class EchoTask:
    """A stub task with a base64 image field: parse checks that the server handed it bytes (never a
    string that could be a path), and refuses the bytes b"not an image" naming the row."""

    name = "echo"

    def input_schema(self) -> dict:
        image = {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/*",
                 "x-bigmodel-kind": "image", "minLength": 1}  # fmt: skip
        number = {"type": ["integer", "null"], "minimum": 0, "maximum": 100}
        return {"type": "object", "properties": {"image": image, "count": number, "tag": {"type": "string"}},
                "required": ["image"], "additionalProperties": False}  # fmt: skip

    def parse(self, records) -> list[dict]:
        for i, record in enumerate(records):
            assert isinstance(record["image"], bytes), "the server must decode base64 fields"
            if record["image"] == b"not an image":
                raise DataError(f"inputs: row {i + 1}, column 'image': cannot identify the image file.")
        return list(records)


class EchoPredictor(GatedPredictor):
    """Answers each record with its image's size, count and tag (no model)."""

    def __init__(self):
        Predictor.__init__(self, nn.Identity(), EchoTask())
        self.gate, self.entered, self.delay = threading.Event(), threading.Event(), 0.0
        self.gate.set()
        self.batches = []

    def run(self, examples):
        self.batches.append(len(examples))
        self.entered.set()
        self.gate.wait(20)
        return [{"bytes": len(e["image"]), "count": e.get("count"), "tag": e.get("tag")} for e in examples]


def run_app(predictor: Predictor, scenario: Callable[[httpx.AsyncClient, object], Awaitable], **settings):
    """Run ``scenario(client, app)`` against a fresh app (lifespan started and stopped around it) with an
    in-process httpx client, and return what it returns."""
    app = create_app(predictor, None, ServeSettings(**settings))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await scenario(client, app)

    return asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (without blocking the event loop) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.005)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """This file's helpers for the test modules (a conftest cannot be imported by name)."""
    return SimpleNamespace(
        digit=digit,
        stripes=stripes,
        png=png,
        run_app=run_app,
        until=until,
        GatedPredictor=GatedPredictor,
        PoisonedPredictor=PoisonedPredictor,
        EchoPredictor=EchoPredictor,
        API_KEY=API_KEY,
    )
