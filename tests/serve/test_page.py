"""The web page in a real headless Chromium (Playwright) against the real HTTP app and real trained runs:
an uploaded test-split digit and a drawn one get the Predictor's label (as a PNG for an image
classifier, as the 1x8x8 numbers of the demo's tabular digits-cnn recipe), a text classifier answers typed
text, a missing or wrong API key gets a clear message and a 422 shows the server's own, the model card
shows eval.json's figures, a small character-level GPT streams into the prompt box, the form sends every
kind of schema field with its JSON type, and the page's helpers (16-bit WAV encoding, spans marked in
the input text) give exact results.

Screenshots for a person: BIGMODEL_PAGE_SHOTS=/some/folder pytest tests/serve/test_page.py"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"the page tests drive Debian's Chromium, and {CHROMIUM} is not installed "
                "(apt-get install chromium)", allow_module_level=True)  # fmt: skip
sync_api = pytest.importorskip("playwright.sync_api", reason="the page tests need the playwright package")
uvicorn = pytest.importorskip("uvicorn")

import bigmodel  # noqa: E402
from bigmodel.data import open_splits  # noqa: E402
from bigmodel.serve.app import ServeSettings, build_card, create_app  # noqa: E402
from helpers import write_text_csv  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
API_KEY = "page-test-key-5f1c"
TIMEOUT_MS = 15_000


class Server:
    """uvicorn serving an app on a free loopback port, in a background thread."""

    def __init__(self, app):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def _server(run, predictor, api_keys=frozenset()) -> Server:
    """The real app for a trained run, with its model card, served on a free loopback port."""
    card = build_card(run.path, predictor.model)
    return Server(create_app(predictor, card, ServeSettings(api_keys=frozenset(api_keys))))


# --- trained runs ----------------------------------------------------------------------------------


def _write_digit_folders(root: Path) -> Path:
    """scikit-learn's real 8x8 digits as grey PNGs in train/validation/test class folders (70/15/15,
    seeded): the images:FOLDER layout. Pixels 0..16 become 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = [int(0.7 * len(order)), int(0.85 * len(order))]
    for split, indices in zip(("train", "validation", "test"), np.split(order, cut), strict=True):
        for i in indices:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """An image_classification CNN trained on the digit PNGs (seconds): the run, its Predictor, the folder."""
    tmp = tmp_path_factory.mktemp("digits")
    folder = _write_digit_folders(tmp / "digits")
    recipe = {
        "name": "digits-png", "seed": 0,
        "data": {"source": f"images:{folder}"},
        "task": {"name": "image_classification"},
        "model": {"arch": "cnn", "channels": [8, 16]},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 5e-3}},
    }  # fmt: skip
    run = bigmodel.train(recipe, output=tmp / "runs", progress=False)
    assert run.metrics["test"]["accuracy"] > 0.8, run.metrics  # a model worth looking at
    return run, bigmodel.load(run.path), folder


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory):
    """The demo's recipe (recipes/digits-cnn.yaml: tabular classification of builtin:digits, one (1, 8, 8)
    array column of values 0..16) trained for 3 epochs (seconds): the run, its Predictor, its test split."""
    tmp = tmp_path_factory.mktemp("digits-cnn")
    run = bigmodel.train("digits-cnn", output=tmp / "runs", progress=False, **{"train.epochs": 3})
    assert run.metrics["test"]["accuracy"] > 0.8, run.metrics
    predictor = bigmodel.load(run.path)
    splits, _ = open_splits(run.recipe.data, run.recipe.seed, predictor.task.strata)
    return run, predictor, splits["test"]


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    """A small BiLSTM text classifier (sports / cooking) trained from scratch in well under a second."""
    tmp = tmp_path_factory.mktemp("topics")
    csv = write_text_csv(tmp / "topics.csv")
    recipe = {
        "name": "topics", "seed": 0,
        "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 24},
        "task": {"name": "text_classification", "pooling": "mean",
                 "tokenizer": {"kind": "wordpiece", "vocab_size": 120, "min_frequency": 1}},
        "model": {"arch": "rnn", "cell": "lstm", "embed_dim": 16, "hidden_size": 16, "num_layers": 1},
        "train": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }  # fmt: skip
    run = bigmodel.train(recipe, output=tmp / "runs", progress=False)
    return run, bigmodel.load(run.path)


# --- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """open_page(url) -> a fresh page (own session storage) whose script errors fail the test."""
    contexts, errors = [], []

    def open_(url: str):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if _is_script_error(m) else None)
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors


def _is_script_error(message) -> bool:
    """A console error other than the browser's own line about an HTTP error status (which the tests
    cause on purpose: 401, 422)."""
    return message.type == "error" and not message.text.startswith("Failed to load resource")


def _shot(page, name: str) -> None:
    """With BIGMODEL_PAGE_SHOTS=FOLDER, keep a screenshot there for a person to look at."""
    folder = os.environ.get("BIGMODEL_PAGE_SHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"page-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def digits_server(digits):
    run, predictor, _ = digits
    with _server(run, predictor) as server:
        yield server


# --- tests -----------------------------------------------------------------------------------------


def test_uploaded_test_digit_gets_the_predictors_label(digits, digits_server, open_page):
    _, predictor, folder = digits
    files = sorted((folder / "test").glob("*/*.png"))
    outputs = predictor.predict([f.read_bytes() for f in files[:40]])
    path, expected = next(
        (f, out) for f, out in zip(files, outputs, strict=False) if out["label"] == f.parent.name
    )

    page = open_page(digits_server.url)
    page.get_by_label("Upload a file").check()
    page.get_by_label("Choose an image file").set_input_files(str(path))
    page.get_by_role("button", name="Predict").click()
    headline = page.locator("#result-body .headline-value")
    sync_api.expect(headline).to_have_text(expected["label"])
    assert expected["label"] == path.parent.name  # the true digit
    top = page.locator("#result-body .bars li").first
    sync_api.expect(top.locator(".bar-label")).to_have_text(expected["label"])
    assert top.locator(".bar-value").inner_text() == f"{expected['score'] * 100:.1f} %"
    assert page.locator("#result-body .bars li").count() == len(expected["top_k"])
    _shot(page, "digit-upload")


SEVEN = ([(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)], [(0.35, 0.5), (0.65, 0.5)])


def _draw(page, strokes) -> None:
    """Draw strokes (lists of points, fractions of the canvas) on the page's drawing pad with the mouse."""
    box = page.locator("canvas.pad").bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    for stroke in strokes:
        page.mouse.move(x0 + stroke[0][0] * w, y0 + stroke[0][1] * h)
        page.mouse.down()
        for fx, fy in stroke[1:]:
            page.mouse.move(x0 + fx * w, y0 + fy * h, steps=8)
        page.mouse.up()


def test_drawn_digit_is_sent_at_the_models_size_and_classified(digits, digits_server, open_page):
    _, predictor, _ = digits
    page = open_page(digits_server.url)
    _draw(page, SEVEN)
    with page.expect_request("**/v1/predict") as request:
        page.get_by_role("button", name="Predict").click()
    sent = json.loads(request.value.post_data)["inputs"][0]["image"]
    image = Image.open(io.BytesIO(base64.b64decode(sent, validate=True)))
    assert image.format == "PNG" and image.size == (8, 8)  # exported at the model's size
    grey = np.asarray(image.convert("L"))
    assert grey.max() > 200 and grey.min() < 30  # white ink on black

    label = predictor.predict([{"image": base64.b64decode(sent)}])[0]["label"]
    sync_api.expect(page.locator("#result-body .headline-value")).to_have_text(label)
    labels = page.locator("#result-body .bars .bar-label").all_inner_texts()
    assert labels[0] == label and set(labels) <= {str(d) for d in range(10)} and len(labels) == 5
    _shot(page, "digit-drawn")
    page.get_by_role("button", name="Clear").click()
    page.get_by_role("button", name="Predict").click()
    sync_api.expect(page.locator(".image-field .field-error")).to_have_text(
        "Draw something or upload an image."
    )


@pytest.fixture(scope="module")
def digits_cnn_server(digits_cnn):
    run, predictor, _ = digits_cnn
    with _server(run, predictor) as server:
        yield server


def test_digit_drawn_for_the_tabular_demo_is_sent_as_numbers_in_its_value_range(
    digits_cnn, digits_cnn_server, open_page
):
    """digits-cnn's one feature is a (1, 8, 8) array of 0..16: the page offers the drawing pad and sends
    the drawing area-averaged to 8x8, black..white mapped to the train split's 0..16."""
    _, predictor, _ = digits_cnn
    image = predictor.task.input_schema()["properties"]["image"]
    assert image["x-bigmodel-image"] == {"size": [8, 8], "channels": 1, "value_range": [0.0, 16.0]}
    page = open_page(digits_cnn_server.url)
    sync_api.expect(page.get_by_role("radio", name="Draw")).to_be_checked()
    assert page.locator("#fields textarea").count() == 0  # no box of 64 numbers to type
    _draw(page, SEVEN)
    with page.expect_request("**/v1/predict") as request:
        page.get_by_role("button", name="Predict").click()
    sent = json.loads(request.value.post_data)["inputs"][0]["image"]
    pixels = np.asarray(sent, dtype=np.float64)
    assert pixels.shape == (1, 8, 8)
    assert pixels.min() == 0.0 and 0.0 <= pixels.min() <= pixels.max() <= 16.0 and pixels.max() > 12

    # the reference: the canvas itself (280x280, grey) averaged over 35x35 blocks, scaled to 0..16
    url = page.locator("canvas.pad").evaluate("c => c.toDataURL('image/png')")
    canvas = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), np.float64
    )
    grey = canvas @ [0.299, 0.587, 0.114] / 255
    expected = grey.reshape(8, 35, 8, 35).mean(axis=(1, 3)) * 16
    np.testing.assert_allclose(pixels[0], expected, atol=1e-3)

    label = predictor.predict([{"image": sent}])[0]["label"]
    sync_api.expect(page.locator("#result-body .headline-value")).to_have_text(label)
    _shot(page, "digits-cnn-drawn")
    page.get_by_role("button", name="Clear").click()
    page.get_by_role("button", name="Predict").click()
    sync_api.expect(page.locator(".image-field .field-error")).to_have_text(
        "Draw something or upload an image."
    )


def test_uploaded_test_digit_is_sent_as_numbers_and_classified(
    digits_cnn, digits_cnn_server, open_page, tmp_path
):
    """A PNG of a real test-split digit (0..16 scaled to 0..255) is read back into the same 0..16 numbers
    (to the PNG's rounding) and gets its true label."""
    _, predictor, test = digits_cnn
    images = np.stack(test.column("image")).astype(np.float64)[:40]
    truths = [str(t) for t in test.column("label")[:40]]
    quantised = np.round(images * 255 / 16) * 16 / 255  # what the PNG holds
    outputs = predictor.predict([{"image": q} for q in quantised])
    k = next(i for i, out in enumerate(outputs) if out["label"] == truths[i])
    path = tmp_path / f"digit-{truths[k]}.png"
    Image.fromarray(np.round(images[k, 0] * 255 / 16).astype(np.uint8)).save(path)

    page = open_page(digits_cnn_server.url)
    page.get_by_label("Upload a file").check()
    page.get_by_label("Choose an image file").set_input_files(str(path))
    with page.expect_request("**/v1/predict") as request:
        page.get_by_role("button", name="Predict").click()
    sent = np.asarray(json.loads(request.value.post_data)["inputs"][0]["image"])
    assert sent.shape == (1, 8, 8)
    np.testing.assert_allclose(sent, quantised[k], atol=1e-4)
    sync_api.expect(page.locator("#result-body .headline-value")).to_have_text(truths[k])
    _shot(page, "digits-cnn-upload")


def test_model_card_shows_eval_json(digits, digits_server, open_page):
    run, _, _ = digits
    report = json.loads((run.path / "eval.json").read_text())
    page = open_page(digits_server.url)
    cell = page.locator('#card-body td[data-metric="accuracy"][data-split="test"]')
    sync_api.expect(cell).to_have_text(f"{report['test']['accuracy']:.4f}")
    loss = page.locator('#card-body td[data-metric="loss"][data-split="validation"]')
    sync_api.expect(loss).to_have_text(f"{report['validation']['loss']:.4f}")
    assert page.locator("#card-body table.per-class tbody tr").count() == 10
    assert page.locator("#card-body .facts").inner_text().count("image_classification") == 1
    assert "digits-png" in page.locator("#subtitle").inner_text()


def test_text_classifier_answers_typed_text(topics, open_page):
    run, predictor = topics
    text = "the team won the match in the last minute"
    expected = predictor.predict([{"text": text}])[0]
    with _server(run, predictor) as server:
        page = open_page(server.url)
        page.get_by_label("Text").fill(text)
        page.get_by_role("button", name="Predict").click()
        sync_api.expect(page.locator("#result-body .headline-value")).to_have_text(expected["label"])
        bars = page.locator("#result-body .bars li")
        assert bars.count() == 2
        for i, (label, p) in enumerate(sorted(expected["probabilities"].items(), key=lambda kv: -kv[1])):
            assert bars.nth(i).locator(".bar-label").inner_text() == label
            assert bars.nth(i).locator(".bar-value").inner_text() == f"{p * 100:.1f} %"
        _shot(page, "text")


def test_api_key_is_asked_for_and_sent(topics, open_page):
    run, predictor = topics
    with _server(run, predictor, api_keys={API_KEY}) as server:
        page = open_page(server.url)
        status = page.locator("#status")
        sync_api.expect(status).to_contain_text("This server needs an API key")
        sync_api.expect(page.locator("#try")).to_be_hidden()
        _shot(page, "key-missing")

        page.get_by_label("API key").fill("wrong")
        page.get_by_role("button", name="Save").click()
        sync_api.expect(status).to_contain_text("did not accept this API key")

        page.get_by_label("API key").fill(API_KEY)
        page.get_by_role("button", name="Save").click()
        sync_api.expect(page.locator("#try")).to_be_visible()
        sync_api.expect(status).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('bigmodel-api-key')") == API_KEY

        text = "stir the soup with garlic"
        page.get_by_label("Text").fill(text)
        page.get_by_role("button", name="Predict").click()
        expected = predictor.predict([{"text": text}])[0]["label"]
        sync_api.expect(page.locator("#result-body .headline-value")).to_have_text(expected)

        page.get_by_label("Text").fill("   ")  # the server refuses a blank text with a 422 naming it
        page.get_by_role("button", name="Predict").click()
        error = page.locator("#result-body .notice.error")
        sync_api.expect(error).to_contain_text("Error 422")
        sync_api.expect(error).to_contain_text("text")
        _shot(page, "error-422")


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    """A one-layer character-level GPT trained for 40 steps on a tiny corpus (seeded sampling)."""
    tmp = tmp_path_factory.mktemp("lm")
    corpus = tmp / "corpus.jsonl"
    lines = ["the cat sat on the mat.\n", "a dog sat on a log!\n", "the cat and the dog.\n"] * 20
    corpus.write_text("".join(json.dumps({"text": t * 3}) + "\n" for t in lines))
    recipe = {
        "name": "tiny-lm", "seed": 0,
        "data": {"source": f"jsonl:{corpus}", "max_length": 16, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "causal_lm", "tokenizer": {"kind": "char"}, "eval_tokens": 256,
                 "max_new_tokens": 40},
        "model": {"arch": "gpt", "embed_dim": 24, "num_heads": 2, "num_layers": 1, "dropout": 0.0,
                  "attn_dropout": 0.0},
        "train": {"batch_size": 8, "max_steps": 40, "optimizer": {"lr": 1e-2}},
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIGMODEL_CACHE", str(tmp / "cache"))  # the token file stays in this test's folder
        run = bigmodel.train(recipe, output=tmp / "runs", progress=False)
        yield run, bigmodel.load(run.path)


def test_prompt_box_streams_the_generated_text(char_lm, open_page):
    run, predictor = char_lm
    prompt = "the cat"
    pieces = list(predictor.task.stream(predictor.model, prompt))
    assert len(pieces) > 1  # so the page has to join streamed pieces
    with _server(run, predictor) as server:
        page = open_page(server.url)
        sync_api.expect(page.locator("#generate")).to_be_visible()
        page.get_by_label("Prompt").fill(prompt)
        with page.expect_response("**/v1/generate") as response:
            page.get_by_role("button", name="Generate").click()
        assert response.value.headers["content-type"].startswith("text/event-stream")
        output = page.locator("#stream-output")
        sync_api.expect(output).to_have_attribute("aria-busy", "false")
        sync_api.expect(output).to_have_text(prompt + "".join(pieces))
        sync_api.expect(page.get_by_role("button", name="Stop")).to_be_disabled()
        _shot(page, "generate")


@pytest.fixture(scope="module")
def blank_page(topics):
    """The page served by a real app, for driving its helpers directly."""
    run, predictor = topics
    with _server(run, predictor) as server:
        yield server


def test_wav_encoding_is_16_bit_pcm(blank_page, open_page):
    page = open_page(blank_page.url)
    samples = [0.0, 0.25, -0.25, 1.0, -1.0, 1.5, -2.0, 0.1]
    data = page.evaluate("s => Array.from(bigmodelPage.encodeWav(Float32Array.from(s), 16000))", samples)
    with wave.open(io.BytesIO(bytes(data))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        got = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    clipped = np.clip(np.float32(samples), -1, 1).astype(np.float64)  # the page's Float32Array
    expected = np.floor(np.where(clipped < 0, clipped * 32768, clipped * 32767) + 0.5)  # JS Math.round
    assert got.tolist() == expected.astype(int).tolist()


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source): the share of each source pixel in each target pixel's area (rows sum to 1)."""
    ratio = source / target
    edges = np.arange(target + 1) * ratio
    cells = np.arange(source)
    overlap = np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells)
    return np.clip(overlap, 0, None) / ratio


def test_grey_pixels_are_area_averages_with_partly_covered_pixels(blank_page, open_page):
    """The page's shrinking of a picture to a number field's size: grey as Pillow's "L", then each
    target pixel the mean of the source area it covers (here 5x3 -> 2x2: pixels split between two)."""
    page = open_page(blank_page.url)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 3, 3))
    got = page.evaluate(
        """rgb => {
            const canvas = document.createElement("canvas");
            canvas.width = 3;
            canvas.height = 5;
            const data = new ImageData(3, 5);
            rgb.flat().forEach(([r, g, b], i) => data.data.set([r, g, b, 255], 4 * i));
            canvas.getContext("2d").putImageData(data, 0, 0);
            return Array.from(bigmodelPage.greyPixels(canvas, 2, 2));
        }""",
        rgb.tolist(),
    )
    grey = rgb @ [0.299, 0.587, 0.114] / 255
    expected = _area_weights(5, 2) @ grey @ _area_weights(3, 2).T
    np.testing.assert_allclose(np.reshape(got, (2, 2)), expected, rtol=0, atol=1e-12)


def _png_data_url() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_predictions_of_other_tasks_render_readably(blank_page, open_page):
    """Entities and answers are marked in the input text by their character spans, images shown,
    verification and regression answers put in words, anything unknown shown as JSON."""
    page = open_page(blank_page.url)

    def render(prediction, record):
        page.evaluate("([p, r]) => bigmodelPage.renderResults([p], r)", [prediction, record])
        return page.locator("#result-body")

    sentence = "Alice moved to New  York"  # two spaces: spans point into the string as typed
    entities = [{"text": "Alice", "type": "PER", "start": 0, "end": 5},
                {"text": "New  York", "type": "LOC", "start": 15, "end": 24}]  # fmt: skip
    body = render({"entities": entities, "tokens": ["Alice", "moved", "to", "New", "York"],
                   "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]}, {"tokens": sentence})  # fmt: skip
    marks = body.locator("mark")
    assert marks.evaluate_all("ms => ms.map(m => [m.firstChild.textContent, m.dataset.type])") == [
        ["Alice", "PER"], ["New  York", "LOC"]]  # fmt: skip
    assert body.locator(".highlighted").evaluate("p => p.textContent.replace(/PER|LOC/g, '')") == sentence

    body = render({"entities": entities}, {"tokens": ["Alice", "moved", "to", "New", "York"]})
    assert body.locator("mark").count() == 0  # spans that do not fit the words joined are not drawn wrong

    qa = {"question": "Who moved?", "context": "In 1990 Alice moved."}
    body = render({"answer": "Alice", "start": 8, "end": 13, "score": 0.875}, qa)
    sync_api.expect(body.locator(".headline-value")).to_have_text("Alice")
    sync_api.expect(body.locator("mark[data-type=answer]")).to_have_text("Aliceanswer")

    body = render(
        {"mask": _png_data_url(), "size": [2, 2], "fractions": {"background": 0.5, "thing": 0.5}}, {}
    )
    sync_api.expect(body.locator("figure img")).to_have_attribute("src", _png_data_url())
    assert body.locator("figure img").evaluate("img => img.complete && img.naturalWidth") == 2
    assert body.locator(".bars .bar-value").all_inner_texts() == ["50.0 %", "50.0 %"]

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes(np.zeros(1600, dtype="<i2").tobytes())
    speech = "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = render({"text": "three one four", "audio": speech, "seconds": 0.1}, {})
    sync_api.expect(body.locator("figure audio")).to_have_attribute("src", speech)
    sync_api.expect(body.locator("figure figcaption")).to_have_text("audio")
    assert "… (" in body.locator("pre.json").inner_text()  # the data URL is shortened in the raw JSON

    body = render({"same": False, "score": 0.125, "threshold": 0.5}, {})
    sync_api.expect(body.locator(".headline")).to_contain_text("Different people")
    sync_api.expect(body.locator(".headline")).to_contain_text("threshold 0.5000")

    body = render({"prediction": 151.254}, {})
    sync_api.expect(body.locator(".headline-value")).to_have_text("151.25")

    body = render({"embedding": [0.5, -0.25]}, {})
    assert json.loads(body.locator("pre.json").inner_text()) == {"embedding": [0.5, -0.25]}


def test_form_sends_every_field_kind_as_the_schema_says(blank_page, open_page, tmp_path):
    """A schema built with the tasks' own field helpers (categories, nullable numbers, integers,
    booleans, fixed-shape arrays, words, audio): the page's record keeps each value's JSON type."""
    from bigmodel.tasks.base import category_field, number_field, record_schema
    from bigmodel.tasks.text import words_field

    audio = {"type": "string", "minLength": 1, "contentEncoding": "base64", "contentMediaType": "audio/wav",
             "x-bigmodel-kind": "audio", "description": "a recording"}  # fmt: skip
    row = {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "number"}}
    pixels = {"type": "array", "minItems": 2, "maxItems": 2, "x-bigmodel-kind": "array", "items": row}
    fields = {"sound": audio, "colour": category_field(["red", "green"], "a colour"),
              "size": number_field("a size", nullable=True),
              "count": number_field("how many", integer=True, default=3),
              "flag": {"type": "boolean", "x-bigmodel-kind": "boolean"}, "pixels": pixels,
              "words": words_field("the words")}  # fmt: skip
    schema = record_schema(fields, [f for f in fields if f != "words"])
    model = {"task": "made_up", "labels": None, "input_schema": schema, "can_generate": False,
             "version": "0", "card": {"metrics": {}}}  # fmt: skip
    wav = tmp_path / "beep.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes(np.arange(-800, 800, 10, dtype="<i2").tobytes())

    page = open_page("about:blank")
    sent = []
    page.route("**/v1/model", lambda route: route.fulfill(json=model))

    def predict(route):
        sent.append(json.loads(route.request.post_data))
        route.fulfill(json={"predictions": [{"prediction": 2.5}]})

    page.route("**/v1/predict", predict)
    page.goto(blank_page.url)
    page.get_by_label("Audio file (WAV)").set_input_files(str(wav))
    page.get_by_label("Colour").select_option("green")
    page.get_by_label("Flag").check()
    page.get_by_label("Pixels").fill("1 2 3\n4 5")
    page.get_by_label("Words").fill("New  York")
    page.get_by_role("button", name="Predict").click()
    sync_api.expect(page.locator("#fields .field-error:visible")).to_have_text("Give 6 numbers; found 5.")
    assert not sent
    _shot(page, "fields")
    page.get_by_label("Pixels").fill("1, 2, 3, 4, 5, 6.5")
    page.get_by_role("button", name="Predict").click()
    sync_api.expect(page.locator("#result-body .headline-value")).to_have_text("2.5000")
    assert sent == [{"inputs": [{"sound": base64.b64encode(wav.read_bytes()).decode(), "colour": "green",
                                 "size": None, "count": 3, "flag": True, "pixels": [[1, 2, 3], [4, 5, 6.5]],
                                 "words": "New  York"}]}]  # fmt: skip
