"""The HTTP app in process (httpx over ASGI, FastAPI's TestClient) on tiny real runs, and ``serve()``
in a subprocess for a graceful SIGTERM: every endpoint, every refusal as a 4xx naming the field,
batching seen through /metrics, per-request isolation of failures, server-sent events."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from bigmodel.errors import UserError
from bigmodel.serve import Predictor, build_card, load_api_keys
from bigmodel.serve.app import ServeSettings, _page_file, create_app
from bigmodel.serve.codec import HTTPError


def client_for(predictor, card=None, **settings) -> TestClient:
    return TestClient(create_app(predictor, card, ServeSettings(**settings)))


def metric(text: str, name: str, **labels) -> float:
    """One sample of the Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# --- probes, model card, page ---------------------------------------------------------------------------


def test_probes_model_card_and_predictions_match_the_predictor(digits, digits_run, kit):
    card = build_card(digits_run, digits.model)
    with client_for(digits, card) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        info = client.get("/v1/model").json()
        records = [kit.digit(i) for i in range(5)]
        response = client.post("/v1/predict", json={"inputs": records})
    assert info["task"] == "classification" and info["labels"] == [str(d) for d in range(10)]
    assert info["can_generate"] is False and info["version"] == __import__("bigmodel").__version__
    assert info["input_schema"] == digits.task.input_schema()
    eval_json = json.loads((digits_run / "eval.json").read_text())
    assert info["card"]["metrics"]["test"]["accuracy"] == eval_json["test"]["accuracy"]
    assert "confusion_matrix" not in info["card"]["metrics"]["test"]  # scalars only
    assert info["card"]["per_class"] == eval_json["test"]["per_class"]
    assert info["card"]["run"] == digits_run.name and info["card"]["recipe"] == "digits-mlp"
    assert info["card"]["parameters"] == sum(p.numel() for p in digits.model.parameters())
    assert response.status_code == 200
    assert response.json() == {"predictions": json.loads(json.dumps(digits.predict(records)))}


def test_not_ready_outside_the_lifespan(digits, kit):
    client = client_for(digits)  # not entered: the batcher never started
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    response = client.post("/v1/predict", json={"inputs": [kit.digit(0)]})
    assert response.status_code == 503 and "starting or shutting down" in response.json()["error"]


def test_the_page_is_served_from_its_folder_only(digits, tmp_path):
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<!doctype html><title>hi</title>")
    (page / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("do not serve")
    with client_for(digits, page_dir=page) as client:
        index = client.get("/")
        assert index.status_code == 200 and "<title>hi</title>" in index.text
        assert index.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in index.headers["content-security-policy"]
        script = client.get("/page/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        for path in ("/page/missing.css", "/page/..%2Fsecret.txt", "/page/.hidden", "/page/%2e%2e",
                     "/page/secret.txt", "/page/%2e%2e%2fsecret.txt", "/page/..%5Csecret.txt"):  # fmt: skip
            response = client.get(path)
            assert response.status_code == 404, path
            assert "do not serve" not in response.text and "error" in response.json()
    # names a client would normalise away are refused by the handler itself
    for name in ("..", "../secret.txt", ".", "", "page/../../secret.txt", "/etc/passwd"):
        with pytest.raises(HTTPError) as info:
            _page_file(page.resolve(), name)
        assert info.value.status == 404, name
    with client_for(digits, page_dir=tmp_path / "absent") as client:
        response = client.get("/")
        assert response.status_code == 404 and "web page is not installed" in response.json()["error"]


def test_the_shipped_page_is_served_when_present(digits):
    from bigmodel.serve.app import PAGE_DIR

    with client_for(digits) as client:
        response = client.get("/")
    assert response.status_code == (200 if (PAGE_DIR / "index.html").is_file() else 404)


# --- refusals: 4xx naming the field, never 500 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, r"body: not valid JSON \(Expecting property name"),
        (b"", 422, "body: empty"),
        (b"[1, 2]", 422, r"body: expected a JSON object"),
        (b'{"inputs": NaN}', 422, "NaN is not a JSON number"),
        (b"\xff\xfe", 422, "not UTF-8"),
        (b"[" * 100000 + b"]" * 100000, 422, "body: "),
        (b'{"records": []}', 422, "records: unknown field. Allowed fields: inputs"),
        (b"{}", 422, "inputs: this field is required"),
        (b'{"inputs": {}}', 422, "inputs: expected an array of records"),
        (b'{"inputs": []}', 422, "inputs: empty"),
        (b'{"inputs": [5]}', 422, r"inputs\[0\]: expected a record"),
        (b'{"inputs": [{}]}', 422, r"inputs\[0\]\.image: this field is required and missing"),
        (b'{"inputs": [{"image": "x", "colour": 1}]}', 422, r"inputs\[0\]\.(image|colour)"),
        (b'{"inputs": [{"image": [[[1]]]}]}', 422, r"inputs\[0\]\.image\[0\]: must hold at least 8 item"),
        (b'{"inputs": [{"image": "abc"}]}', 422, r'inputs\[0\]\.image: expected an array, got "abc"'),
    ],
)
def test_bad_json_bodies_are_422_naming_the_field(digits, body, status, message):
    with client_for(digits) as client:
        response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"]), response.json()


def test_unknown_field_and_wrong_type_name_the_record_and_field(digits, kit):
    good = kit.digit(0)
    with client_for(digits) as client:
        extra = client.post("/v1/predict", json={"inputs": [good, {**good, "colour": "red"}]})
        typed = client.post("/v1/predict", json={"inputs": [good, good, {"image": [[["x"] * 8] * 8]}]})
        boolean = client.post("/v1/predict", json={"inputs": [{"image": [[[True] * 8] * 8]}]})
    assert extra.status_code == 422
    assert extra.json()["error"] == "inputs[1].colour: unknown field. Allowed fields: image."
    assert typed.status_code == 422
    assert typed.json()["error"].startswith('inputs[2].image[0][0][0]: expected a number, got "x"')
    assert boolean.status_code == 422 and "expected a number, got true" in boolean.json()["error"]


def test_a_task_error_is_422_with_its_message(lm):
    with client_for(lm) as client:
        response = client.post("/v1/predict", json={"inputs": [{"prompt": "the"}, {"prompt": ""}]})
    assert response.status_code == 422
    assert response.json()["error"] == "inputs[1].prompt: must not be empty."


def test_wrong_content_type_is_415(digits):
    with client_for(digits) as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": content_type} if content_type else {}
            response = client.post("/v1/predict", content=b'{"inputs": []}', headers=headers)
            assert response.status_code == 415, content_type
            assert "Content-Type" in response.json()["error"]


def test_oversize_bodies_are_413_by_content_length_or_by_counting(digits, kit):
    big = json.dumps({"inputs": [kit.digit(i) for i in range(40)]}).encode()
    assert len(big) > 4000

    async def scenario(client, app):
        declared = await client.post("/v1/predict", content=big, headers={"content-type": "application/json"})

        async def chunks():  # no Content-Length: the body streams in chunks
            for start in range(0, len(big), 512):
                yield big[start : start + 512]

        streamed = await client.post(
            "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        small = await client.post("/v1/predict", json={"inputs": [kit.digit(0)]})
        return declared, streamed, small

    declared, streamed, small = kit.run_app(digits, scenario, max_body_bytes=4000)
    assert "content-length" not in streamed.request.headers
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "larger than this server takes (4000 bytes" in response.json()["error"]
    assert small.status_code == 200


def test_more_records_than_max_inputs_is_413(digits, kit):
    with client_for(digits, max_inputs=3) as client:
        response = client.post("/v1/predict", json={"inputs": [kit.digit(i) for i in range(4)]})
        assert (
            client.post("/v1/predict", json={"inputs": [kit.digit(i) for i in range(3)]}).status_code == 200
        )
    assert response.status_code == 413 and "4 records" in response.json()["error"]


def test_unknown_paths_and_methods_are_json_errors(digits):
    with client_for(digits) as client:
        missing = client.get("/v2/predict")
        method = client.get("/v1/predict")
    assert missing.status_code == 404 and missing.json() == {"error": "/v2/predict: not found."}
    assert method.status_code == 405 and "method GET" in method.json()["error"]


# --- base64 fields and multipart forms (a stub task with an image field) -------------------------------


def test_base64_fields_are_decoded_to_bytes_and_bad_base64_is_422(kit):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    encoded = base64.b64encode(png).decode()
    with client_for(kit.EchoPredictor()) as client:
        ok = client.post("/v1/predict", json={"inputs": [{"image": encoded, "count": 3}]})
        url = client.post("/v1/predict", json={"inputs": [{"image": f"data:image/png;base64,{encoded}"}]})
        wrapped = client.post("/v1/predict", json={"inputs": [{"image": encoded[:60] + "\n" + encoded[60:]}]})
        bad = client.post("/v1/predict", json={"inputs": [{"image": encoded}, {"image": "not base64!"}]})
        path = client.post("/v1/predict", json={"inputs": [{"image": "/etc/passwd"}]})
        empty = client.post("/v1/predict", json={"inputs": [{"image": "===="}]})
        refused = client.post(
            "/v1/predict", json={"inputs": [{"image": base64.b64encode(b"not an image").decode()}]}
        )
        count = client.post("/v1/predict", json={"inputs": [{"image": encoded, "count": 101}]})
    assert ok.status_code == 200 and ok.json() == {
        "predictions": [{"bytes": len(png), "count": 3, "tag": None}]
    }
    assert url.json() == wrapped.json() == {"predictions": [{"bytes": len(png), "count": None, "tag": None}]}
    assert bad.status_code == 422 and bad.json()["error"].startswith("inputs[1].image: not valid base64")
    assert path.status_code == 422 and "inputs[0].image: not valid base64" in path.json()["error"]
    assert empty.status_code == 422 and "inputs[0].image" in empty.json()["error"]
    assert refused.status_code == 422
    assert refused.json()["error"] == "inputs: row 1, column 'image': cannot identify the image file."
    assert (
        count.status_code == 422 and count.json()["error"] == "inputs[0].count: must be at most 100, got 101."
    )


def test_multipart_form_with_a_file_part_is_one_record(kit, digits):
    png = b"\x89PNG\r\n\x1a\n" + bytes(50)
    with client_for(kit.EchoPredictor()) as client:
        ok = client.post(
            "/v1/predict", files={"image": ("a.png", png, "image/png")}, data={"count": "7", "tag": "x"}
        )
        as_text = client.post(
            "/v1/predict", files={"tag": (None, "y")}, data={"image": base64.b64encode(png).decode()}
        )
        missing = client.post("/v1/predict", files={"tag": (None, "y")})
        number = client.post("/v1/predict", files={"image": ("a.png", png)}, data={"count": "seven"})
        unknown = client.post("/v1/predict", files={"image": ("a.png", png)}, data={"colour": "red"})
        tag_file = client.post("/v1/predict", files={"image": ("a.png", png), "tag": ("t.txt", b"x")})
        empty = client.post("/v1/predict", files={"image": ("a.png", b"")})
        broken = client.post(
            "/v1/predict",
            content=b"--x\r\nnonsense",
            headers={"content-type": "multipart/form-data"},  # no boundary
        )
    assert ok.status_code == 200 and ok.json() == {
        "predictions": [{"bytes": len(png), "count": 7, "tag": "x"}]
    }
    assert as_text.json() == {"predictions": [{"bytes": len(png), "count": None, "tag": "y"}]}
    assert (
        missing.status_code == 422 and missing.json()["error"] == "image: this field is required and missing."
    )
    assert number.status_code == 422 and number.json()["error"] == 'count: "seven" is not a number.'
    assert unknown.status_code == 422 and unknown.json()["error"].startswith("colour: unknown field")
    assert tag_file.status_code == 422 and "tag: expected a string" in tag_file.json()["error"]
    assert empty.status_code == 422 and "image: the uploaded file is empty" in empty.json()["error"]
    assert broken.status_code == 422
    assert broken.json()["error"].startswith("body: not a valid multipart/form-data form (Missing boundary")
    # a real model through a form: the digits array field as JSON text
    with client_for(digits) as client:
        form = client.post("/v1/predict", files={"image": (None, json.dumps(kit.digit(3)["image"]))})
    assert form.status_code == 200 and form.json()["predictions"] == json.loads(
        json.dumps(digits.predict(kit.digit(3)))
    )


def test_a_real_image_model_takes_base64_json_and_file_uploads(stripes_run, kit):
    import numpy as np

    predictor = __import__("bigmodel").load(stripes_run)
    image = kit.png(kit.stripes("vertical", np.random.default_rng(5)))
    (expected,) = json.loads(json.dumps(predictor.predict(image)))
    encoded = base64.b64encode(image).decode()
    with client_for(predictor) as client:
        schema = client.get("/v1/model").json()["input_schema"]
        as_json = client.post("/v1/predict", json={"inputs": [{"image": encoded}, {"image": encoded}]})
        as_file = client.post("/v1/predict", files={"image": ("v.png", image, "image/png")})
        not_image = client.post(
            "/v1/predict", json={"inputs": [{"image": base64.b64encode(b"GIF89a?").decode()}]}
        )
        path = client.post(
            "/v1/predict", json={"inputs": [{"image": str(stripes_run / "model.safetensors")}]}
        )
    assert schema["properties"]["image"]["contentEncoding"] == "base64"
    assert as_json.status_code == 200 and as_json.json()["predictions"] == [expected, expected]
    assert as_file.status_code == 200 and as_file.json()["predictions"] == [expected]
    assert not_image.status_code == 422 and "row 1" in not_image.json()["error"]
    assert path.status_code == 422 and path.json()["error"].startswith("inputs[0].image: not valid base64")


# --- API keys ---------------------------------------------------------------------------------------------


def test_api_keys_protect_v1_and_metrics_only(digits, kit, tmp_path):
    other = "second-key-abcdefghijklmnop"
    with client_for(digits, api_keys=frozenset({kit.API_KEY, other})) as client:
        for path in ("/v1/model", "/metrics"):
            response = client.get(path)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert "API key is required" in response.json()["error"]
        wrong = client.get("/v1/model", headers={"Authorization": "Bearer wrong-key-0123456789"})
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
        body = {"inputs": [kit.digit(0)]}
        assert client.post("/v1/predict", json=body).status_code == 401
        assert client.post("/v1/predict", json=body, headers={"X-API-Key": other}).status_code == 200
        assert client.get("/v1/model", headers={"Authorization": f"Bearer {kit.API_KEY}"}).status_code == 200
        assert client.get("/metrics", headers={"X-API-Key": kit.API_KEY}).status_code == 200
        assert client.get("/v1/model", headers={"Authorization": f"Basic {kit.API_KEY}"}).status_code == 401
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    with client_for(digits) as client:  # no keys: open
        assert client.get("/v1/model").status_code == 200 and client.get("/metrics").status_code == 200


def test_load_api_keys_from_env_and_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# the team's keys\nfile-key-0123456789abcdef\n\n  spaced-key-0123456789abc  \n")
    keys = load_api_keys(path, environ={"BIGMODEL_API_KEYS": "env-key-0123456789abcdef, ,"})
    assert keys == {"file-key-0123456789abcdef", "spaced-key-0123456789abc", "env-key-0123456789abcdef"}
    assert load_api_keys(environ={}) == frozenset()
    path.write_text("# nothing\n\n")
    with pytest.raises(UserError, match="holds no key"):
        load_api_keys(path, environ={})
    path.write_text("short\n")
    with pytest.raises(UserError, match=r"keys.txt: line 1: an API key needs at least 16 characters"):
        load_api_keys(path, environ={})
    with pytest.raises(UserError, match="BIGMODEL_API_KEYS: key 2: .* found '\xe9'"):
        load_api_keys(environ={"BIGMODEL_API_KEYS": "a" * 20 + ",caf\xe9-0123456789abcdef"})
    with pytest.raises(UserError, match="cannot read"):
        load_api_keys(tmp_path / "absent.txt", environ={})


def test_settings_are_checked_by_field():
    for changes, match in (
        ({"max_batch": 0}, "serve.max_batch"),
        ({"timeout_s": 0}, "serve.timeout_s"),
        ({"max_wait_ms": float("nan")}, "serve.max_wait_ms"),
        ({"port": 70000}, "serve.port"),
        ({"api_keys": {"a"}}, "serve.api_keys"),
        ({"max_inputs": True}, "serve.max_inputs"),
    ):
        with pytest.raises(UserError, match=match):
            ServeSettings(**changes)
    assert ServeSettings().replace(max_batch=1).max_batch == 1
    with pytest.raises(UserError, match="serve.batch: unknown setting"):
        ServeSettings().replace(batch=1)


# --- the micro-batcher behind HTTP -------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_each_gets_its_own_predictions(digits, kit):
    slow = kit.GatedPredictor(digits, delay=0.05)  # a slower model: requests meet in the queue
    n = 12

    async def scenario(client, app):
        responses = await asyncio.gather(
            *[client.post("/v1/predict", json={"inputs": [kit.digit(i)]}) for i in range(n)]
        )
        return responses, (await client.get("/metrics")).text

    responses, text = kit.run_app(slow, scenario, max_batch=32, max_wait_ms=500)
    for i, response in enumerate(responses):  # batch shapes change float sums: equal to ~1e-6
        assert response.status_code == 200
        (got,), (expected,) = response.json()["predictions"], digits.predict(kit.digit(i))
        assert got["label"] == expected["label"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert metric(text, "bigmodel_batch_size_sum") == n
    assert metric(text, "bigmodel_batch_size_count") < n and len(slow.batches) < n
    assert metric(text, "bigmodel_requests_total", endpoint="/v1/predict", status="200") == n
    assert metric(text, "bigmodel_request_seconds_count", endpoint="/v1/predict") == n
    assert metric(text, "bigmodel_inference_seconds_count") == len(slow.batches)
    assert metric(text, "bigmodel_queue_depth") == 0


def test_batching_off_runs_one_request_per_forward(digits, kit):
    slow = kit.GatedPredictor(digits, delay=0.01)

    async def scenario(client, app):
        await asyncio.gather(*[client.post("/v1/predict", json={"inputs": [kit.digit(i)]}) for i in range(6)])

    kit.run_app(slow, scenario, max_batch=1)
    assert slow.batches == [1] * 6


def test_a_full_queue_is_503_with_retry_after(digits, kit):
    gated = kit.GatedPredictor(digits)
    gated.gate.clear()

    async def scenario(client, app):
        post = lambda i: client.post("/v1/predict", json={"inputs": [kit.digit(i)]})  # noqa: E731
        first = asyncio.create_task(post(0))
        await kit.until(gated.entered.is_set)
        queued = [asyncio.create_task(post(i)) for i in (1, 2)]
        await kit.until(lambda: app.state.batcher.queue_depth == 2)
        refused = await post(3)
        gated.gate.set()
        return refused, await first, await asyncio.gather(*queued)

    refused, first, queued = kit.run_app(gated, scenario, max_queue=2)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "busy" in refused.json()["error"]
    assert first.status_code == 200 and all(r.status_code == 200 for r in queued)


def test_a_request_past_its_timeout_is_504_and_is_never_run(digits, kit):
    gated = kit.GatedPredictor(digits)
    gated.gate.clear()

    async def scenario(client, app):
        first = asyncio.create_task(client.post("/v1/predict", json={"inputs": [kit.digit(0)]}))
        await kit.until(gated.entered.is_set)
        late = await client.post("/v1/predict", json={"inputs": [kit.digit(1), kit.digit(2)]})
        gated.gate.set()
        return await first, late

    first, late = kit.run_app(gated, scenario, timeout_s=0.3)
    assert late.status_code == 504 and "no result within 0.3 s" in late.json()["error"]
    assert first.status_code == 504  # its batch had started: it ran, its answer came too late
    assert gated.batches == [1]  # the queued request timed out before its batch: never run


def test_a_user_error_in_one_request_of_a_merged_batch_fails_only_that_request(digits, kit):
    poisoned = kit.PoisonedPredictor(digits)
    poisoned.gate.clear()
    bad = kit.digit(5)
    bad["image"][0][0][0] = -13

    async def scenario(client, app):
        post = lambda record: client.post("/v1/predict", json={"inputs": [record]})  # noqa: E731
        first = asyncio.create_task(post(kit.digit(0)))
        await kit.until(poisoned.entered.is_set)
        queued = [asyncio.create_task(post(r)) for r in (kit.digit(1), bad, kit.digit(2))]
        await kit.until(lambda: app.state.batcher.queue_depth == 3)
        poisoned.gate.set()
        return [await first, *await asyncio.gather(*queued)]

    first, one, poisoned_response, two = kit.run_app(poisoned, scenario)
    assert [first.status_code, one.status_code, two.status_code] == [200, 200, 200]
    assert two.json()["predictions"] == json.loads(json.dumps(digits.predict(kit.digit(2))))
    assert poisoned_response.status_code == 422
    assert (
        poisoned_response.json()["error"]
        == "inputs: row 1: the first pixel is -13, which this model refuses."
    )
    assert poisoned.batches == [1, 3, 1, 1, 1]  # the merged batch failed; each request ran alone


# --- text generation ---------------------------------------------------------------------------------------


def events(text: str) -> list[tuple[str, dict]]:
    """Server-sent events as (event name, data) pairs."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data = json.loads(value)
        out.append((name, data))
    return out


def test_generate_streams_events_then_done_and_equals_predict(lm):
    (expected,) = lm.predict("the cat")
    with client_for(lm) as client:
        assert client.get("/v1/model").json()["can_generate"] is True
        streamed = client.post("/v1/generate", json={"prompt": "the cat"})
        whole = client.post("/v1/generate?stream=false", json={"prompt": "the cat"})
        in_body = client.post("/v1/generate", json={"prompt": "the cat", "stream": False})
        empty = client.post("/v1/generate", json={"prompt": ""})
        extra = client.post("/v1/generate", json={"prompt": "a", "temperature": 2})
        query = client.post("/v1/generate?stream=maybe", json={"prompt": "a"})
        form = client.post("/v1/generate", data={"prompt": "a"})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    got = events(streamed.text)
    assert got[-1] == ("done", {}) and len(got) > 3
    assert all(name == "message" and set(data) == {"text"} for name, data in got[:-1])
    assert "".join(data["text"] for _, data in got[:-1]) == expected["text"]
    assert whole.json() == in_body.json() == {"text": expected["text"]}
    assert empty.status_code == 422 and empty.json()["error"] == "prompt: must not be empty."
    assert extra.status_code == 422 and extra.json()["error"].startswith("temperature: unknown field")
    assert query.status_code == 422 and query.json()["error"].startswith(
        "stream: Input should be a valid boolean"
    )
    assert form.status_code == 415


def test_generate_is_404_for_a_task_that_does_not_generate(digits):
    with client_for(digits) as client:
        response = client.post("/v1/generate", json={"prompt": "x"})
        paths = client.get("/openapi.json").json()["paths"]
    assert response.status_code == 404 and "does not generate text" in response.json()["error"]
    assert "/v1/generate" not in paths and "/v1/predict" in paths


class EndlessTask:
    """A task that generates forever; ``closed`` is set when the generation ends."""

    name = "endless"

    def __init__(self):
        self.closed, self.pieces = threading.Event(), 0

    def input_schema(self) -> dict:
        return {"type": "object"}

    def stream(self, model, prompt):
        try:
            while True:
                self.pieces += 1
                yield "x"
                time.sleep(0.002)
        finally:
            self.closed.set()


def test_a_client_disconnect_stops_the_generation():
    from torch import nn

    task = EndlessTask()
    app = create_app(Predictor(nn.Identity(), task), None, ServeSettings(max_streams=1, timeout_s=0.2))
    body = json.dumps({"prompt": "go"}).encode()

    async def scenario():
        sent_body, received, disconnected = False, [], asyncio.Event()

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            received.append(message)
            if sum(m["type"] == "http.response.body" for m in received) >= 5:
                disconnected.set()  # the client goes away after 5 events

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/generate", "raw_path": b"/v1/generate",
                 "root_path": "", "query_string": b"", "server": ("test", 80), "client": ("test", 1),
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())]}  # fmt: skip
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), 10)
        return received

    received = asyncio.run(scenario())
    assert received[0]["status"] == 200
    assert task.closed.wait(5), "the generation thread kept running after the client left"
    pieces = task.pieces
    time.sleep(0.05)
    assert task.pieces == pieces  # stopped, not merely slowed
    with TestClient(app) as client:  # its slot was freed: the next generation runs (and times out)
        assert client.post("/v1/generate?stream=false", json={"prompt": "go"}).status_code == 504


def test_too_many_concurrent_generations_is_503(kit):
    from torch import nn

    task = EndlessTask()

    async def scenario(client, app):
        first = asyncio.create_task(client.post("/v1/generate?stream=false", json={"prompt": "go"}))
        await kit.until(lambda: task.pieces > 0)
        second = await client.post("/v1/generate", json={"prompt": "go"})
        return second, await first

    second, first = kit.run_app(Predictor(nn.Identity(), task), scenario, max_streams=1, timeout_s=0.5)
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "1 generations running" in second.json()["error"]
    assert first.status_code == 504 and task.closed.wait(5)  # the timeout stopped the generation


# --- a real server: graceful shutdown on SIGTERM ---------------------------------------------------------

SERVER = textwrap.dedent(
    """
    import sys, time
    import torch
    import bigmodel
    from bigmodel.serve import Predictor, ServeSettings, serve

    class Slow(Predictor):
        def run(self, examples):
            time.sleep(1.5)
            return super().run(examples)

    torch.set_num_threads(1)
    p = bigmodel.load(sys.argv[1])
    serve(Slow(p.model, p.task), None, ServeSettings(port=0, graceful_shutdown_s=20, log_level="warning"))
    """
)


def test_sigterm_lets_the_in_flight_request_finish(digits_run, digits, kit):
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(digits_run)], stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + process.stderr.read()
        url = f"http://127.0.0.1:{found.group(1)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        answer: dict = {}

        def slow_request():
            answer["response"] = httpx.post(f"{url}/v1/predict", json={"inputs": [kit.digit(7)]}, timeout=30)

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)  # in flight: its batch sleeps 1.5 s
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert process.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        response = answer["response"]
        assert response.status_code == 200
        assert response.json()["predictions"] == json.loads(json.dumps(digits.predict(kit.digit(7))))
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


def test_serve_refuses_a_port_in_use(digits):
    import socket

    from bigmodel.serve import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"serve.port: cannot listen on 127.0.0.1:{port}"):
            serve(digits, None, ServeSettings(port=port))


# --- the record validator (jsonschema): one plain sentence per error kind, naming the path ----------------

RECORD = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "masked": {"type": "string", "pattern": r"\[MASK\]"},
        "code": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 3},
        "x": {"type": ["number", "null"], "minimum": -1, "exclusiveMaximum": 5},
        "c": {"type": ["string", "null"], "enum": ["a", "b", None]},
        "many": {"enum": list(range(30))},
        "n": {"type": "integer", "maximum": 10},
        "k": {"const": 1},
        "grid": {"type": "array", "maxItems": 3,
                 "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
        "words": {"anyOf": [{"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
        "image": {"type": "string", "minLength": 1, "contentEncoding": "base64"},
    },
    "required": ["text"],
    "additionalProperties": False,
}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": None, "c": "a"}, "inputs[3].text: this field is required and missing."),
        ({"colour": "red", "size": 2}, "inputs[3].colour: unknown field (so are: size). Allowed fields: "
         "text, masked, code, x, c, many, n, k, grid, words, image."),
        ({"n": 1.5}, "inputs[3].n: expected an integer, got 1.5."),
        ({"n": True}, "inputs[3].n: expected an integer, got true."),
        ({"text": 5}, "inputs[3].text: expected a string, got 5."),
        ({"x": float("inf")}, "inputs[3].x: expected a number or null, got inf (not a finite number)."),
        ({"image": 7}, "inputs[3].image: expected a base64 string, got 7."),
        ({"c": "d"}, 'inputs[3].c: "d" (a string) is not one of the allowed values: "a", "b", null.'),
        ({"many": 99}, "inputs[3].many: 99 is not one of the allowed values: "
         + ", ".join(str(i) for i in range(20)) + ", ... (30 in all)."),
        ({"k": 2}, "inputs[3].k: must be 1, got 2."),
        ({"text": ""}, "inputs[3].text: must not be empty."),
        ({"text": " \t"}, "inputs[3].text: must not be blank (it needs a non-space character), "
         r'got " \t" (a string).'),
        ({"masked": "no mask"}, 'inputs[3].masked: must contain "[MASK]", got "no mask" (a string).'),
        ({"code": "ab"}, 'inputs[3].code: must match the pattern /^[A-Z]+$/, got "ab" (a string).'),
        ({"code": "ABCD"}, "inputs[3].code: must hold at most 3 characters, got 4."),
        ({"x": -2}, "inputs[3].x: must be at least -1, got -2."),
        ({"x": 5}, "inputs[3].x: must be less than 5, got 5."),
        ({"n": 11}, "inputs[3].n: must be at most 10, got 11."),
        ({"grid": [[1, 2], [3, "4"], [5, "6"]]},
         'inputs[3].grid[1][1]: expected a number, got "4" (a string).'),
        ({"grid": [[1]]}, "inputs[3].grid[0]: must hold at least 2 items, got 1."),
        ({"grid": [[1, 2]] * 4}, "inputs[3].grid: must hold at most 3 items, got 4."),
        ({"words": 5}, "inputs[3].words: fits none of the allowed forms: expected a string, got 5; "
         "or expected an array, got 5."),
        ({"words": ["a", 5]}, "inputs[3].words[1]: expected a string, got 5."),
    ],
)  # fmt: skip
def test_each_error_kind_names_the_path_and_what_is_allowed(fields, message):
    from bigmodel.serve.codec import Validator

    record = {k: v for k, v in {"text": "hello", **fields}.items() if v is not None}
    validator = Validator(RECORD)
    assert validator.error(record, "inputs[3]") == message
    with pytest.raises(HTTPError) as info:
        validator.check(record, "inputs[3]")
    assert info.value.status == 422 and info.value.message == message
    assert validator.error({"text": "hello"}, "inputs[3]") is None


def test_file_bytes_pass_only_where_the_schema_says_base64_and_numbers_must_be_finite():
    from bigmodel.serve.codec import Validator

    validator = Validator(RECORD)
    assert validator.error({"text": "a", "image": b"\x89PNG"}, "") is None  # a file part, decoded
    assert validator.error({"text": b"a"}, "") == "text: expected a string, got a file upload."
    assert validator.error({"text": "a", "x": float("nan")}, "r") == (
        "r.x: expected a number or null, got nan (not a finite number)."
    )
    assert Validator({"oneOf": [{"type": "integer"}, {"type": "number"}]}).error(3, "v") == (
        "v: 3 fits more than one of the allowed forms; it must fit exactly one."
    )
    assert Validator(False).error(1, "v") == "v: no value is allowed here."


def test_a_bad_schema_is_refused_once_naming_its_owner():
    from bigmodel.serve.codec import Validator

    with pytest.raises(ValueError, match=r"task 'echo': not a valid JSON Schema .* at #/properties/n/type"):
        Validator({"type": "object", "properties": {"n": {"type": "numbr"}}}, owner="task 'echo'")
    with pytest.raises(ValueError, match=r"schema: not a valid JSON Schema .* at #/required: 'n' is not"):
        Validator({"type": "object", "required": "n"})


def test_a_bad_image_array_names_its_first_bad_number(digits):
    with client_for(digits) as client:
        image = [[[0.5] * 8 for _ in range(8)]]
        image[0][2][3], image[0][5][1] = "x", None
        response = client.post("/v1/predict", json={"inputs": [{"image": image}]})
    assert response.status_code == 422
    assert response.json()["error"] == 'inputs[0].image[0][2][3]: expected a number, got "x" (a string).'
