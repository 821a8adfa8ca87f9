"""HTTP bodies in and out: a request's records checked against the task's ``input_schema``, and
predictions as JSON.

Requests (``POST /v1/predict``):

- ``application/json``: ``{"inputs": [record, ...]}``;
- ``multipart/form-data``: one record, a form field per record field; image (and audio) fields may be
  file parts. Form values are text, so numbers and booleans are read by their field's schema.

Every record is validated against the task's JSON Schema (draft 2020-12, by the ``jsonschema``
library; numbers must be finite). A record that fails is refused with a message naming the field
(``inputs[2].image: ...``), what is wrong and what is allowed, before the task sees it;
``task.parse`` still checks what the schema cannot say (an image that is not an image). Fields whose
schema has ``contentEncoding: base64`` are decoded to ``bytes`` here, so a remote client never hands
the task a string that could name a file on the server.

Responses: PIL images become ``data:image/png;base64,...`` strings, speech (``Waveform``) becomes
``data:audio/wav;base64,...`` (16-bit PCM WAV), NumPy values and tensors become
numbers and lists, bytes become base64 text. Everything raised here is an :class:`HTTPError` with
the status and a one-line message; the app turns it into ``{"error": message}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import numpy as np
import torch
from jsonschema import Draft202012Validator
from jsonschema.exceptions import STRONG_MATCHES, WEAK_MATCHES, ValidationError, best_match

from bigmodel.data.audio import Waveform

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
# The jsonschema library checks the records; this section only turns its first error into one plain
# sentence that starts with the full path of the offending value (``inputs[2].image[0]: ...``).

# JSON has no NaN or infinity; a form value ("inf") or a huge literal (1e999) must not pass as a number.
_TYPES = Draft202012Validator.TYPE_CHECKER.redefine(
    "number", lambda checker, v: type(v) in (int, float) and math.isfinite(v)
)
_RecordValidator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)
_ERRORS_CONSIDERED = 100  # errors best_match chooses from: a body of bad numbers has one per number

_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_LITERAL = re.compile(r"(?:\\.|[^\\^$.|?*+()\[\]{}])+")  # a pattern that is an escaped literal


class Validator:
    """A task's JSON Schema (draft 2020-12), checked once, for the records of many requests.

    ``bytes`` in a top-level ``contentEncoding: base64`` field (a file part, already decoded) are
    validated as the base64 text a JSON client would have sent."""

    def __init__(self, schema: Mapping, owner: str = "schema"):
        """``owner`` names the schema's author in the error a bad schema raises (``task 'echo'``)."""
        try:
            _RecordValidator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            at = "/".join(str(part) for part in exc.absolute_path)
            raise ValueError(
                f"{owner}: not a valid JSON Schema (draft 2020-12) at #/{at}: {exc.message}"
            ) from exc
        self.schema = schema
        self._validator = _RecordValidator(schema)
        self._files = base64_fields(schema) if isinstance(schema, Mapping) else set()

    def error(self, value: Any, where: str) -> str | None:
        """The worst violation as ``"where.field: what is wrong and what is allowed"``, or None."""
        if isinstance(value, dict) and any(type(value.get(f)) in (bytes, bytearray) for f in self._files):
            value = {k: _as_text(v) if k in self._files else v for k, v in value.items()}
        errors = itertools.islice(self._validator.iter_errors(value), _ERRORS_CONSIDERED)
        worst = max(errors, key=_relevance, default=None)
        return None if worst is None else _describe(best_match([worst]), where)

    def check(self, value: Any, where: str) -> None:
        """Raise ``HTTPError(422)`` naming the place where ``value`` breaks the schema."""
        message = self.error(value, where)
        if message is not None:
            raise HTTPError(422, message)


def _relevance(error: ValidationError) -> tuple:
    """jsonschema's ranking (the shallowest error, not a weak anyOf/oneOf) without its tie-break by path,
    so that of sibling errors the first wins (``image[0][0]``, not the last bad pixel);
    ``best_match`` then descends into the anyOf/oneOf it picked."""
    return -len(error.path), error.validator not in WEAK_MATCHES, error.validator in STRONG_MATCHES


def _as_text(value):
    return base64.b64encode(value).decode("ascii") if type(value) in (bytes, bytearray) else value


def _describe(error: ValidationError, where: str) -> str:
    """``where`` + the error's path, then what is wrong in plain words."""
    path, message = _explain(error)
    return f"{_place(where, path) or 'body'}: {message}"


def _place(where: str, path) -> str:
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where


def _explain(error: ValidationError) -> tuple[list, str]:
    """The path of the offending value (below the validated one) and a sentence saying what is wrong."""
    path, kind, rule, value = (
        list(error.absolute_path),
        error.validator,
        error.validator_value,
        error.instance,
    )
    if kind == "required":
        missing = [name for name in rule if name not in value]
        others = f" (so are: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        return [*path, missing[0]], f"this field is required and missing{others}."
    if kind == "additionalProperties" and rule is False:
        extra = _unknown_fields(value, error.schema)
        allowed = ", ".join(error.schema.get("properties") or {}) or "none"
        others = f" (so are: {', '.join(extra[1:])})" if len(extra) > 1 else ""
        return [*path, extra[0]], f"unknown field{others}. Allowed fields: {allowed}."
    return path, _sentence(error, kind, rule, value)


def _sentence(error: ValidationError, kind, rule, value) -> str:
    if kind == "type":
        return f"expected {_expected(error.schema)}, got {show(value)}."
    if kind == "enum":
        allowed = ", ".join(json.dumps(o) for o in rule[:20])
        allowed += f", ... ({len(rule)} in all)" if len(rule) > 20 else ""
        return f"{show(value)} is not one of the allowed values: {allowed}."
    if kind == "const":
        return f"must be {json.dumps(rule)}, got {show(value)}."
    if kind == "minLength":
        if rule == 1:
            return "must not be empty."
        return f"must hold at least {_count(rule, 'character')}, got {len(value)}."
    if kind == "maxLength":
        return f"must hold at most {_count(rule, 'character')}, got {len(value)}."
    if kind == "pattern":
        if rule == r"\S":
            return f"must not be blank (it needs a non-space character), got {show(value)}."
        if _LITERAL.fullmatch(rule):  # a literal the text must hold (a mask token)
            literal = re.sub(r"\\(.)", r"\1", rule)
            return f"must contain {json.dumps(literal)}, got {show(value)}."
        return f"must match the pattern /{rule}/, got {show(value)}."
    bounds = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
              "exclusiveMaximum": "less than"}  # fmt: skip
    if kind in bounds:
        return f"must be {bounds[kind]} {rule}, got {show(value)}."
    if kind == "minItems":
        return f"must hold at least {_count(rule, 'item')}, got {len(value)}."
    if kind == "maxItems":
        return f"must hold at most {_count(rule, 'item')}, got {len(value)}."
    if kind in ("anyOf", "oneOf") and error.context:
        reasons = []
        for option in range(len(rule)):  # each allowed form's most relevant complaint
            found = best_match(e for e in error.context if e.relative_schema_path[0] == option)
            if found is not None:
                inner, sentence = _explain(found)
                inner = inner[len(error.absolute_path) :]
                reasons.append(f"{_place('', inner)}: {sentence}" if inner else sentence)
        return "fits none of the allowed forms: " + "; or ".join(r.rstrip(".") for r in reasons) + "."
    if kind == "oneOf":
        return f"{show(value)} fits more than one of the allowed forms; it must fit exactly one."
    if kind is None:  # the `false` schema
        return "no value is allowed here."
    message = error.message  # a rarer keyword: the library's own words (they hold the value's repr)
    return message if len(message) <= 200 else message[:200] + "…"


def _unknown_fields(record: Mapping, schema: Mapping) -> list[str]:
    known, patterns = schema.get("properties") or {}, list(schema.get("patternProperties") or {})
    return [k for k in record if k not in known and not any(re.search(p, k) for p in patterns)]


def _count(n, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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
        return f"an array of {_count(len(value), 'item')}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bytes | bytearray):
        return "a file upload"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} (not a finite number)"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:40] + "…"


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
    """A prediction as plain JSON values: images as PNG data URLs, speech as WAV data URLs, arrays and
    tensors as lists."""
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
    if isinstance(value, Waveform):
        return "data:audio/wav;base64," + base64.b64encode(value.wav_bytes()).decode("ascii")
    if _is_pil_image(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return str(value)


def _is_pil_image(value) -> bool:
    module = type(value).__module__
    return module.startswith("PIL.") and hasattr(value, "save") and hasattr(value, "mode")
