"""HTTP bodies in and out: a request's records checked against the task's ``input_schema``, and
predictions as JSON.

Requests (``POST /v1/predict``):

- ``application/json``: ``{"inputs": [record, ...]}``;
- ``multipart/form-data``: one record, a form field per record field; image (and audio) fields may be
  file parts. Form values are text, so numbers and booleans are read by their field's schema.

Every record is validated against the task's JSON Schema (the draft 2020-12 subset the tasks use:
``type``, ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties``, ``items``,
``min/maxItems``, ``min/maxLength``, ``pattern``, ``minimum``/``maximum`` and their exclusive forms,
``anyOf``/``oneOf``/``allOf``; other keywords are descriptions). A record that fails is refused with a
message naming the field (``inputs[2].image: ...``) before the task sees it; ``task.parse`` still
checks what the schema cannot say (an image that is not an image). Fields whose schema has
``contentEncoding: base64`` are decoded to ``bytes`` here, so a remote client never hands the task
a string that could name a file on the server.

Responses: PIL images become ``data:image/png;base64,...`` strings, NumPy values and tensors become
numbers and lists, bytes become base64 text. Everything raised here is an :class:`HTTPError` with
the status and a one-line message; the app turns it into ``{"error": message}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)
PERMISSIVE_SCHEMA: dict = {"type": "object"}


class HTTPError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx), a message naming the field, extra headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


# --- the task's record schema -------------------------------------------------------------------------


def record_schema_of(task) -> dict:
    """The task's JSON Schema of one input record; ``{"type": "object"}`` for a task without one."""
    method = getattr(task, "input_schema", None)
    schema = method() if callable(method) else None
    return schema if isinstance(schema, dict) and schema else dict(PERMISSIVE_SCHEMA)


def base64_fields(schema: Mapping) -> set[str]:
    """The record fields given as base64 text (``contentEncoding: base64``)."""
    properties = schema.get("properties") or {}
    return {name for name, field in properties.items() if _is_base64(field)}


def _is_base64(field) -> bool:
    return isinstance(field, Mapping) and field.get("contentEncoding") == "base64"


def predict_body_schema(record: Mapping, max_inputs: int) -> dict:
    """The JSON body of ``POST /v1/predict``: ``{"inputs": [record, ...]}``."""
    return {
        "type": "object",
        "properties": {
            "inputs": {
                "type": "array",
                "items": dict(record),
                "minItems": 1,
                "maxItems": max_inputs,
                "description": f"the records to predict for (1 to {max_inputs})",
            }
        },
        "required": ["inputs"],
        "additionalProperties": False,
    }


def form_body_schema(record: Mapping) -> dict:
    """The multipart form of ``POST /v1/predict``: one record, base64 fields as file uploads."""
    properties = {}
    for name, field in (record.get("properties") or {}).items():
        if _is_base64(field):
            media = field.get("contentMediaType", "application/octet-stream")
            properties[name] = {"type": "string", "format": "binary", "contentMediaType": media,
                                "description": field.get("description", "a file")}  # fmt: skip
        else:
            properties[name] = field
    schema = {k: v for k, v in record.items() if k not in ("properties", "anyOf", "oneOf", "allOf")}
    return {**schema, "type": "object", "properties": properties} if properties else {"type": "object"}


# --- validation ----------------------------------------------------------------------------------------
#
# A schema is compiled once into nested closures (a request checks many values: a 1x8x8 image is 64
# numbers). A check returns None, or a Failure whose path is built only when something failed.

_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


class Failure(NamedTuple):
    """What is wrong (``message``) and where below the checked value (``path``: field names, indices)."""

    path: tuple
    message: str

    def at(self, where: str) -> str:
        """The message prefixed with the full path: ``inputs[2].image[0]: ...``."""
        place = where
        for part in self.path:
            place += f"[{part}]" if isinstance(part, int) else (f".{part}" if place else str(part))
        return f"{place or 'body'}: {self.message}"


Check = Callable[[Any], "Failure | None"]


class Validator:
    """A JSON Schema compiled for repeated checks. ``bytes`` pass where the schema says
    ``contentEncoding: base64`` (a file part, already decoded)."""

    def __init__(self, schema: Mapping):
        self.schema = schema
        self._check = _compile(schema)

    def error(self, value: Any, where: str) -> str | None:
        """The first violation as ``"where.field: what is wrong"``, or None."""
        failure = self._check(value)
        return None if failure is None else failure.at(where)

    def check(self, value: Any, where: str) -> None:
        """Raise ``HTTPError(422)`` naming the first place where ``value`` breaks the schema."""
        failure = self._check(value)
        if failure is not None:
            raise HTTPError(422, failure.at(where))


def schema_error(value: Any, schema: Mapping, where: str) -> str | None:
    """The first violation of ``schema`` by ``value`` (compiling it: use a :class:`Validator` to repeat)."""
    return Validator(schema).error(value, where)


def _compile(schema) -> Check:
    if not isinstance(schema, Mapping):  # the `true` and `false` schemas
        return (
            (lambda v: None) if schema is not False else (lambda v: Failure((), "no value is allowed here."))
        )
    checks: list[Check] = []
    base64_ok = _is_base64(schema)
    expected = _expected(schema)
    if "const" in schema:
        const = schema["const"]
        shown = json.dumps(const)
        checks.append(lambda v: None if _equal(v, const) else Failure((), f"must be {shown}, got {show(v)}."))
    if "enum" in schema:
        options = list(schema["enum"])
        allowed = ", ".join(json.dumps(o) for o in options[:20]) + (", ..." if len(options) > 20 else "")
        checks.append(
            lambda v: (
                None
                if any(_equal(v, o) for o in options)
                else Failure((), f"{show(v)} is not one of the allowed values: {allowed}.")
            )
        )
    if schema.get("type") is not None:
        types = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        checks.append(_type_check(types, expected))
    for keyword in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(keyword), list):
            checks.append(_combined_check(keyword, [_compile(option) for option in schema[keyword]]))
    checks += _string_checks(schema) + _number_checks(schema) + _array_checks(schema) + _object_checks(schema)

    def check(value) -> Failure | None:
        if type(value) in (bytes, bytearray):
            return None if base64_ok else Failure((), f"expected {expected}, got a file upload.")
        for one in checks:
            failure = one(value)
            if failure is not None:
                return failure
        return None

    return check


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: type(v) is bool,
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
    "number": lambda v: type(v) is int or type(v) is float,
    "string": lambda v: type(v) is str,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}


def _type_check(types: list[str], expected: str) -> Check:
    tests = [_TYPE_TESTS[t] for t in types if t in _TYPE_TESTS]
    if len(tests) < len(types):  # an unknown type name constrains nothing
        return lambda v: None
    if len(tests) == 1:
        (test,) = tests
        return lambda v: None if test(v) else Failure((), f"expected {expected}, got {show(v)}.")
    return lambda v: None if any(t(v) for t in tests) else Failure((), f"expected {expected}, got {show(v)}.")


def _combined_check(keyword: str, options: list[Check]) -> Check:
    def check(value) -> Failure | None:
        failures = [option(value) for option in options]
        if keyword == "allOf":
            return next((f for f in failures if f is not None), None)
        passed = sum(f is None for f in failures)
        if passed == 0:  # anyOf, oneOf: say what each allowed form wanted
            if len(failures) == 1:
                return failures[0]
            reasons = "; or ".join(f.at("").split(": ", 1)[-1].rstrip(".") for f in failures if f is not None)
            return Failure((), f"fits none of the allowed forms: {reasons}.")
        if keyword == "oneOf" and passed > 1:
            return Failure(
                (), f"{show(value)} fits more than one of the allowed forms; it must fit exactly one."
            )
        return None

    return check


def _string_checks(schema: Mapping) -> list[Check]:
    low, high, pattern = schema.get("minLength", 0), schema.get("maxLength"), schema.get("pattern")
    compiled = re.compile(pattern) if isinstance(pattern, str) else None
    what = "must hold a non-space character" if pattern == r"\S" else f"must match /{pattern}/"

    def check(v) -> Failure | None:
        if type(v) is not str:
            return None
        if len(v) < low:
            return Failure((), f"must hold at least {low} character(s), got {show(v)}.")
        if high is not None and len(v) > high:
            return Failure((), f"must hold at most {high} characters, got {len(v)}.")
        if compiled is not None and compiled.search(v) is None:
            return Failure((), f"{what}, got {show(v)}.")
        return None

    return [check] if low or high is not None or compiled is not None else []


def _number_checks(schema: Mapping) -> list[Check]:
    bounds = [
        (schema[keyword], fails, words)
        for keyword, fails, words in (
            ("minimum", lambda x, b: x < b, "at least"),
            ("maximum", lambda x, b: x > b, "at most"),
            ("exclusiveMinimum", lambda x, b: x <= b, "more than"),
            ("exclusiveMaximum", lambda x, b: x >= b, "less than"),
        )
        if _TYPE_TESTS["number"](schema.get(keyword))
    ]

    def check(v) -> Failure | None:
        if type(v) is float and not math.isfinite(v):
            return Failure((), f"{v} is not a finite number.")
        if type(v) is int or type(v) is float:
            for bound, fails, words in bounds:
                if fails(v, bound):
                    return Failure((), f"must be {words} {bound}, got {show(v)}.")
        return None

    return [check]


def _array_checks(schema: Mapping) -> list[Check]:
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    items = _compile(schema["items"]) if "items" in schema else None

    plain_numbers = schema.get("items") == {"type": "number"}  # images and feature arrays: a fast path

    def check(v) -> Failure | None:
        if type(v) is not list:
            return None
        if len(v) < low:
            return Failure((), f"must hold at least {low} item(s), got {len(v)}.")
        if high is not None and len(v) > high:
            return Failure((), f"must hold at most {high} items, got {len(v)}.")
        if plain_numbers and all(type(x) is int or (type(x) is float and math.isfinite(x)) for x in v):
            return None
        if items is not None:
            for i, item in enumerate(v):
                failure = items(item)
                if failure is not None:
                    return Failure((i, *failure.path), failure.message)
        return None

    return [check]


def _object_checks(schema: Mapping) -> list[Check]:
    properties = {name: _compile(field) for name, field in (schema.get("properties") or {}).items()}
    required = list(schema.get("required", ()))
    extra = schema.get("additionalProperties", True)
    extra_check = None if isinstance(extra, bool) else _compile(extra)
    allowed = ", ".join(properties) or "none"

    def check(v) -> Failure | None:
        if type(v) is not dict:
            return None
        for name in required:
            if name not in v:
                return Failure((name,), "this field is required and missing.")
        for name, item in v.items():
            field = properties.get(name, extra_check)
            if field is None:
                if extra is False:
                    return Failure((name,), f"unknown field. Allowed fields: {allowed}.")
                continue
            failure = field(item)
            if failure is not None:
                return Failure((name, *failure.path), failure.message)
        return None

    return [check]


def _equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    return (a == b) and (isinstance(a, bool) == isinstance(b, bool))


def _expected(schema) -> str:
    if not isinstance(schema, Mapping):
        return "a value"
    if _is_base64(schema):
        return "a base64 string"
    types = schema.get("type")
    if types is None:
        return "a value of another form"
    types = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_NAMES.get(t, t) for t in types)


def show(value) -> str:
    """A value in a message: short, with its JSON type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = json.dumps(value if len(value) <= 40 else value[:40] + "…")
        return f"{shown} (a string)"
    if isinstance(value, list):
        return f"an array of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


# --- base64 ----------------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def decode_base64(text: str, where: str) -> bytes:
    """Standard base64 (whitespace and a ``data:...;base64,`` prefix allowed) as bytes."""
    body = _DATA_URL.sub("", text, count=1)
    body = "".join(body.split())
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(
            422, f"{where}: not valid base64 (the standard alphabet A-Z a-z 0-9 + / with = padding)."
        ) from None
    if not data:
        raise HTTPError(422, f"{where}: empty after base64 decoding; send the file's bytes.")
    return data


def decode_record(record: dict, fields: set[str], where: str) -> dict:
    """``record`` with its base64 ``fields`` (strings) decoded to bytes."""
    out = dict(record)
    for name in fields:
        value = out.get(name)
        if isinstance(value, str):
            out[name] = decode_base64(value, f"{where}.{name}" if where else name)
    return out


# --- request bodies ---------------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def json_records(body: bytes, validator: Validator, max_inputs: int) -> list[dict]:
    """The records of a JSON body ``{"inputs": [...]}``, validated and base64 fields decoded."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise HTTPError(422, f'body: expected a JSON object {{"inputs": [...]}}, got {show(payload)}.')
    for key in payload:
        if key != "inputs":
            raise HTTPError(422, f"{key}: unknown field. Allowed fields: inputs.")
    if "inputs" not in payload:
        raise HTTPError(422, 'inputs: this field is required and missing; send {"inputs": [record, ...]}.')
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise HTTPError(422, f"inputs: expected an array of records, got {show(inputs)}.")
    if not inputs:
        raise HTTPError(422, "inputs: empty; send at least one record.")
    if len(inputs) > max_inputs:
        raise HTTPError(413, f"inputs: {len(inputs)} records, more than this server takes per request "
                        f"({max_inputs}); split them over several requests.")  # fmt: skip
    fields = base64_fields(validator.schema)
    records = []
    for i, record in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(record, dict):
            raise HTTPError(422, f"{where}: expected a record (a JSON object), got {show(record)}.")
        validator.check(record, where)
        records.append(decode_record(record, fields, where))
    return records


def parse_json(body: bytes) -> Any:
    """Strict JSON (no NaN or Infinity) from UTF-8 bytes, or ``HTTPError(422)`` saying where it broke."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPError(422, f"body: not UTF-8 text (byte {exc.start}).") from None
    if not text.strip():
        raise HTTPError(422, "body: empty; send JSON.")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise HTTPError(
            422, f"body: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None
    except ValueError as exc:  # NaN / Infinity, or an integer too long to convert
        raise HTTPError(422, f"body: not valid JSON ({exc}).") from None
    except RecursionError:
        raise HTTPError(422, "body: JSON nested too deeply.") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def form_record(form, validator: Validator) -> dict:
    """One record from a parsed multipart form, each value read by its field's schema."""
    properties = validator.schema.get("properties") or {}
    record: dict = {}
    for name, value in form.multi_items():
        if name in record:
            raise HTTPError(422, f"{name}: given more than once; a form holds one record.")
        field = properties.get(name)
        if hasattr(value, "read"):  # an uploaded file
            if not _is_base64(field) and field is not None:
                raise HTTPError(
                    422, f"{name}: expected {_expected(field)} as a form value, got a file upload."
                )
            data = await value.read()
            if not data:
                raise HTTPError(422, f"{name}: the uploaded file is empty.")
            record[name] = data
        else:
            record[name] = _form_value(name, value, field)
    validator.check(record, "")
    return decode_record(record, base64_fields(validator.schema), "")


def _form_value(name: str, text: str, field) -> Any:
    """A form field's text as the JSON value its schema wants (numbers, booleans, arrays, null)."""
    if not isinstance(field, Mapping) or _is_base64(field):
        return text
    types = field.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "null" in types and text == "":
        return None
    if "string" in types or not types:
        return text
    if "integer" in types or "number" in types:
        try:
            number = float(text)
        except ValueError:
            raise HTTPError(422, f"{name}: {json.dumps(text[:40])} is not a number.") from None
        if "integer" in types and number.is_integer() and "." not in text and "e" not in text.lower():
            return int(text)
        return number
    if "boolean" in types:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "on", "yes"):
            return True
        if lowered in ("false", "0", "off", "no"):
            return False
        raise HTTPError(422, f"{name}: {json.dumps(text[:40])} is not true or false.")
    if "array" in types or "object" in types:
        try:
            return parse_json(text.encode())
        except HTTPError as exc:
            raise HTTPError(422, f"{name}: expected {_expected(field)} as JSON text; {exc.message}") from None
    return text


# --- predictions out --------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """A prediction as plain JSON values: images as PNG data URLs, arrays and tensors as lists."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if _is_pil_image(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return str(value)


def _is_pil_image(value) -> bool:
    module = type(value).__module__
    return module.startswith("PIL.") and hasattr(value, "save") and hasattr(value, "mode")
