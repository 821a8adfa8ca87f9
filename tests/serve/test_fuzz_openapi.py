"""Schemathesis reads the app's own OpenAPI document (whose /v1/predict body is the task's input schema)
and sends bodies generated from it, valid and invalid, to every operation: nothing may answer 5xx.

Four apps: the digits classifier (records of nested number arrays), the character LM (text records,
/v1/generate with server-sent events), an image classifier (base64 images: random bytes must be refused
by the image decoder, not crash it) and a stub task with a base64 image field, number and text fields
and multipart forms, behind an API key. ``BIGMODEL_FUZZ_EXAMPLES=N`` runs N examples per operation
(default 15)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

import bigmodel
from bigmodel.serve.app import ServeSettings, create_app

EXAMPLES = int(os.environ.get("BIGMODEL_FUZZ_EXAMPLES", "15"))


def openapi_of(app):
    config = SchemathesisConfig.from_dict({"generation": {"max-examples": EXAMPLES}})
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


@pytest.fixture(scope="session")
def digits_api(digits):
    return openapi_of(create_app(digits, None, ServeSettings(max_inputs=8, timeout_s=10)))


@pytest.fixture(scope="session")
def lm_api(lm):
    return openapi_of(create_app(lm, None, ServeSettings(max_inputs=4, timeout_s=10)))


@pytest.fixture(scope="session")
def stripes_api(stripes_run):
    return openapi_of(create_app(bigmodel.load(stripes_run), None, ServeSettings(max_inputs=4, timeout_s=10)))


@pytest.fixture(scope="session")
def echo_api(kit):
    settings = ServeSettings(api_keys=frozenset({kit.API_KEY}), max_body_bytes=64 * 1024, timeout_s=10)
    return openapi_of(create_app(kit.EchoPredictor(), None, settings))


OPERATIONS = ["GET /healthz", "GET /readyz", "GET /v1/model", "POST /v1/predict", "GET /metrics"]


def fuzz(schema, operation: str, headers: dict | None = None) -> None:
    """Send ``EXAMPLES`` generated cases, valid and invalid, to one operation; fail on any 5xx.

    (Hypothesis drives Schemathesis' strategies directly: its pytest plugin does not run on pytest 9.)"""
    method, path = operation.split(" ")
    api = schema[path][method]
    cases = st.one_of(api.as_strategy(GenerationMode.POSITIVE), api.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases)
    def check(case) -> None:
        case.call_and_validate(checks=[not_a_server_error], headers=headers)

    check()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_digits_app_never_answers_5xx(digits_api, operation):
    fuzz(digits_api, operation)


@pytest.mark.parametrize("operation", [*OPERATIONS, "POST /v1/generate"])
def test_lm_app_never_answers_5xx(lm_api, operation):
    fuzz(lm_api, operation)


@pytest.mark.parametrize("operation", ["POST /v1/predict"])
def test_image_model_app_never_answers_5xx(stripes_api, operation):
    fuzz(stripes_api, operation)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_image_field_app_never_answers_5xx(echo_api, operation, kit):
    fuzz(echo_api, operation, headers={"X-API-Key": kit.API_KEY})


def test_the_openapi_request_body_is_the_task_input_schema(digits_api, digits, lm_api):
    body = digits_api.raw_schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    inputs = body["application/json"]["schema"]["properties"]["inputs"]
    assert inputs["items"] == digits.task.input_schema() and inputs["maxItems"] == 8
    assert "multipart/form-data" in body
    paths = lm_api.raw_schema["paths"]
    assert paths["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"
    ] == ["prompt"]
