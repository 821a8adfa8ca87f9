"""The HTTP API of a trained run: ``create_app(predictor, card, settings)`` and ``serve(...)``.

Endpoints (docs/serve in the plan; the OpenAPI document at ``/openapi.json`` describes the real bodies:
the task's ``input_schema`` is the record schema of ``POST /v1/predict``):

- ``GET /`` the web page, ``GET /page/{file}`` its files; ``GET /healthz``; ``GET /readyz``;
- ``GET /v1/model``: the task, labels, input schema and the run's model card;
- ``POST /v1/predict``: ``{"inputs": [record, ...]}`` (JSON) or one record as a multipart form, run
  through the micro-batcher (serve/batching.py);
- ``POST /v1/generate``: text generation streamed as server-sent events (tasks with ``stream``);
- ``GET /metrics``: Prometheus text.

Every refusal is ``{"error": "<message naming the field>"}`` with a 4xx status (401 key, 404, 413 too
large, 415 content type, 422 bad input, 503 busy or not ready with ``Retry-After``, 504 timeout);
a 500 means a bug, logged with its traceback. ``/v1/*`` and ``/metrics`` need an API key when keys are
configured; the page, ``/healthz``, ``/readyz`` and the OpenAPI docs stay open.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bigmodel.errors import UserError
from bigmodel.serve import codec
from bigmodel.serve.auth import api_key_dependency
from bigmodel.serve.batching import BatchTimeout, MicroBatcher, NotRunning, QueueFull
from bigmodel.serve.codec import HTTPError
from bigmodel.serve.metrics import MetricsMiddleware, ServeMetrics

log = logging.getLogger("bigmodel.serve")

PAGE_DIR = Path(__file__).resolve().parent / "page"
_PAGE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a plain file name: no '/', no leading '.'
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'",
}
_THREAD_BODY_BYTES = 64 * 1024  # bodies larger than this are decoded off the event loop
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what is wrong, naming the field"}},
    "required": ["error"],
}


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs. Every limit refuses with a clear status instead of degrading silently.

    Attributes:
        host, port: where to listen (loopback unless told; port 0 = any free port).
        max_batch: examples per forward pass at most (1 = no batching).
        max_wait_ms: how long a batch's first request may wait for requests still being received.
        max_queue: requests waiting for a batch at most (beyond: 503 + Retry-After).
        timeout_s: how long a request may wait for its prediction (beyond: 504).
        max_body_bytes: request body size at most (beyond: 413).
        max_inputs: records per request at most (beyond: 413).
        api_keys: keys accepted on ``/v1/*`` and ``/metrics``; empty = open.
        max_streams: concurrent ``/v1/generate`` generations at most (beyond: 503).
        graceful_shutdown_s: on SIGTERM, how long in-flight requests may take to finish.
        page_dir: the web page's folder (default: serve/page beside this module).
        log_level: uvicorn's log level.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_bytes: int = 10 * 2**20
    max_inputs: int = 64
    api_keys: frozenset[str] = field(default_factory=frozenset)
    max_streams: int = 4
    graceful_shutdown_s: float = 10.0
    page_dir: Path | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        at_least = {"max_batch": 1, "max_queue": 1, "max_body_bytes": 1, "max_inputs": 1, "max_streams": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"serve.{name}: must be a whole number >= {low}, got {value!r}.")
        for name in ("max_wait_ms", "timeout_s", "graceful_shutdown_s"):
            value = getattr(self, name)
            bad = not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
            if bad or value < 0 or (name == "timeout_s" and value == 0):
                low = "> 0" if name == "timeout_s" else ">= 0"
                raise UserError(f"serve.{name}: must be a finite number of seconds {low}, got {value!r}.")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise UserError(f"serve.port: must be a port number 0-65535, got {self.port!r}.")
        if not isinstance(self.host, str) or not self.host:
            raise UserError(f"serve.host: must be a host name or address, got {self.host!r}.")
        if not isinstance(self.api_keys, frozenset) or not all(
            isinstance(k, str) and k for k in self.api_keys
        ):
            raise UserError(
                "serve.api_keys: must be a frozenset of non-empty strings (see auth.load_api_keys)."
            )
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if self.log_level not in levels:
            raise UserError(f"serve.log_level: one of {', '.join(levels)}, got {self.log_level!r}.")

    def replace(self, **changes: Any) -> ServeSettings:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UserError(f"serve.{unknown[0]}: unknown setting. Allowed: {', '.join(sorted(known))}.")
        return ServeSettings(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


# --- the model card ------------------------------------------------------------------------------------


def build_card(run_dir: str | Path | None, model=None) -> dict:
    """The model card ``/v1/model`` shows, from a run directory's files (read as plain JSON/YAML; the run
    was already verified by whoever opened it): ``{"run", "recipe", "metrics", "per_class",
    "parameters"}`` — eval.json's single-number metrics per split and the test split's per-class rows."""
    card: dict = {"run": None, "recipe": None, "metrics": {}, "per_class": None, "parameters": None}
    if model is not None:
        card["parameters"] = int(sum(p.numel() for p in model.parameters()))
    if run_dir is None:
        return card
    path = Path(run_dir)
    card["run"] = path.name
    try:
        import yaml

        recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8"))
        card["recipe"] = recipe.get("name") if isinstance(recipe, dict) else None
    except (OSError, ValueError, ImportError, AttributeError):  # a card is best effort; the run opened
        pass
    try:
        report = json.loads((path / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    if isinstance(report, dict):
        for split, metrics in report.items():
            if isinstance(metrics, dict):
                card["metrics"][split] = {
                    k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
                }
        test = report.get("test")
        if isinstance(test, dict) and isinstance(test.get("per_class"), list):
            card["per_class"] = test["per_class"]
    return card


def _labels(task) -> list[str] | None:
    labels = getattr(task, "labels", None)
    names = getattr(labels, "names", labels)
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _version() -> str:
    import bigmodel

    return bigmodel.__version__


# --- the app -------------------------------------------------------------------------------------------


def create_app(predictor, card: Mapping | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (a :class:`~bigmodel.serve.Predictor`: ``parse``, ``run``,
    ``task``, ``model``). Its lifespan starts the micro-batcher and, on shutdown, drains it.

    Args:
        predictor: the loaded run.
        card: the model card (:func:`build_card`) shown by ``/v1/model``.
        settings: limits, batching and keys (:class:`ServeSettings`).
    """
    settings = settings or ServeSettings()
    task = predictor.task
    record_schema = codec.record_schema_of(task)
    records_validator = codec.Validator(
        record_schema, owner=f"task {getattr(task, 'name', type(task).__name__)!r}: input_schema()"
    )
    can_generate = callable(getattr(task, "stream", None))
    page_dir = Path(settings.page_dir).resolve() if settings.page_dir is not None else PAGE_DIR
    metrics = ServeMetrics()
    batcher = MicroBatcher(
        predictor.parse,
        lambda examples: [codec.to_jsonable(p) for p in predictor.run(examples)],
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        timeout_s=settings.timeout_s,
        on_batch=metrics.observe_batch,
        on_queue=metrics.queue_depth.set,
    )
    streams = threading.BoundedSemaphore(settings.max_streams)
    model_info = {
        "task": getattr(task, "name", None) or type(task).__name__,
        "labels": _labels(task),
        "input_schema": record_schema,
        "can_generate": can_generate,
        "version": _version(),
        "card": dict(card) if card is not None else build_card(None, predictor.model),
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:  # in a thread: the loop must stay free to deliver the drained requests' results
            await asyncio.to_thread(batcher.stop, settings.graceful_shutdown_s)

    app = FastAPI(
        title=f"bigmodel: {model_info['task']}",
        version=model_info["version"],
        description='Predictions from a trained bigmodel run. Errors are `{"error": message}`.',
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)
    protected = [Depends(api_key_dependency(settings.api_keys))] if settings.api_keys else []
    errors = {status: _error_response(text) for status, text in _ERRORS.items()}

    # -- the page and probes ------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page_index():
        return _page_file(page_dir, "index.html")

    @app.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str):
        return _page_file(page_dir, name)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and the batcher runs",
             responses={503: errors[503]})  # fmt: skip
    async def readyz():
        if batcher.running:
            return {"status": "ready"}
        return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})

    # -- the API ------------------------------------------------------------------------------------

    @app.get("/v1/model", summary="The task, its input schema and the model card", dependencies=protected,
             responses={401: errors[401]})  # fmt: skip
    async def model() -> dict:
        return model_info

    predict_extra = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": codec.predict_body_schema(record_schema, settings.max_inputs)},
                "multipart/form-data": {"schema": codec.form_body_schema(record_schema)},
            },
        }
    }
    predictions_schema = {
        "type": "object",
        "properties": {"predictions": {"type": "array", "items": {"type": "object"}}},
        "required": ["predictions"],
    }

    @app.post(
        "/v1/predict",
        summary="Predict for records (JSON) or one record (multipart form)",
        dependencies=protected,
        openapi_extra=predict_extra,
        responses={
            200: {"description": "one prediction per record", "content": _json(predictions_schema)},
            **{s: errors[s] for s in (401, 413, 415, 422, 503, 504)},
        },
    )
    async def predict(request: Request):
        kind = codec.media_type(request.headers.get("content-type"))
        if kind not in ("application/json", "multipart/form-data"):
            raise HTTPError(
                415,
                f"Content-Type: {kind or 'none'} is not accepted here; send application/json "
                '({"inputs": [record, ...]}) or multipart/form-data (one record).',
            )
        batcher.announce()
        try:
            body = await _read_body(request, settings.max_body_bytes)
            if kind == "application/json":
                records = await _off_loop_if_large(
                    len(body), codec.json_records, body, records_validator, settings.max_inputs
                )
            else:
                records = [await _form_record(request, body, records_validator)]
        except BaseException:
            batcher.withdraw()
            raise
        predictions = await batcher.submit(records, len(records), announced=True)
        return JSONResponse({"predictions": predictions})

    generate_schema = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "description": "the text to continue"},
            "stream": {"type": "boolean", "description": "false: one JSON answer instead of events"},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }
    generate_validator = codec.Validator(generate_schema)

    @app.post(
        "/v1/generate",
        summary="Continue a prompt, streamed as server-sent events",
        include_in_schema=can_generate,
        dependencies=protected,
        openapi_extra={"requestBody": {"required": True, "content": _json(generate_schema)}},
        responses={
            200: {
                "description": 'events `data: {"text": piece}`, then `event: done`; or `{"text": full}`',
                "content": {
                    "text/event-stream": {"schema": {"type": "string"}},
                    **_json({"type": "object", "properties": {"text": {"type": "string"}}}),
                },
            },  # fmt: skip
            **{s: errors[s] for s in (401, 404, 413, 415, 422, 503, 504)},
        },
    )
    async def generate(
        request: Request,
        stream: bool | None = Query(None, description="false: answer with one JSON object"),
    ):
        if not can_generate:
            raise HTTPError(404, f"/v1/generate: task {model_info['task']} does not generate text; "
                            "use /v1/predict.")  # fmt: skip
        kind = codec.media_type(request.headers.get("content-type"))
        if kind != "application/json":
            raise HTTPError(415, f'Content-Type: {kind or "none"} is not accepted here; send '
                            'application/json {"prompt": "..."}.')  # fmt: skip
        payload = codec.parse_json(await _read_body(request, settings.max_body_bytes))
        if not isinstance(payload, dict):
            raise HTTPError(
                422, f'body: expected a JSON object {{"prompt": "..."}}, got {codec.show(payload)}.'
            )
        generate_validator.check(payload, "")
        as_events = stream if stream is not None else payload.get("stream", True)
        if not streams.acquire(blocking=False):
            busy = f"the server is busy ({settings.max_streams} generations running); try again shortly."
            raise QueueFull(busy, retry_after=1)
        try:
            pieces = _TextStream(
                lambda: task.stream(predictor.model, payload["prompt"]), on_end=streams.release
            )
        except BaseException:  # no thread: nobody else would free the slot
            streams.release()
            raise
        try:  # a refused prompt is a 422 before any event is sent
            first = await asyncio.wait_for(pieces.next(), settings.timeout_s)
        except asyncio.TimeoutError:
            pieces.stop()
            raise BatchTimeout(f"no text within {settings.timeout_s:g} s.") from None
        except BaseException:
            pieces.stop()
            raise
        if not as_events:
            try:
                text = await asyncio.wait_for(pieces.rest(first), settings.timeout_s)
            except asyncio.TimeoutError:
                raise BatchTimeout(f"no result within {settings.timeout_s:g} s.") from None
            finally:
                pieces.stop()
            return {"text": text}
        return _EventStream(_events(first, pieces), on_close=pieces.stop)

    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}

    @app.get("/metrics", summary="Prometheus metrics", dependencies=protected,
             responses={200: text, 401: errors[401]})  # fmt: skip
    async def prometheus() -> Response:
        content, content_type = metrics.render()
        return Response(content, media_type=content_type)

    return app


_ERRORS = {
    401: "no API key, or a wrong one",
    404: "not found",
    413: "body or inputs larger than this server takes",
    415: "unsupported Content-Type",
    422: "the input breaks the schema or is refused by the task; the message names the field",
    503: "busy or not ready: try again after Retry-After seconds",
    504: "no result in time",
}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error_response(description: str) -> dict:
    return {"description": description, "content": _json(_ERROR_SCHEMA)}


# --- request bodies ---------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes: from Content-Length
    before reading, and by counting the bytes that stream in (a chunked body declares no length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, f"Content-Length: {declared[:20]!r} is not a number of bytes.") from None
        if size > limit:
            raise HTTPError(413, _too_large(limit, size))
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, _too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, size: int | None = None) -> str:
    got = f"{size} bytes" if size is not None else "more"
    return (
        f"body: {got}, larger than this server takes ({limit} bytes, max_body_bytes); send less per request."
    )


async def _off_loop_if_large(size: int, function: Callable, *args):
    """Decode a small body on the event loop (a thread hop costs more), a large one in a thread."""
    if size <= _THREAD_BODY_BYTES:
        return function(*args)
    return await asyncio.to_thread(function, *args)


async def _form_record(request: Request, body: bytes, validator: codec.Validator) -> dict:
    """One record from a multipart body (already read and size-checked)."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    fields = len(validator.schema.get("properties") or {}) or 64
    try:
        form = await Request(request.scope, replay).form(
            max_files=fields, max_fields=fields, max_part_size=len(body) + 1
        )
    except Exception as exc:  # whatever the form parser (a third party) raises on the client's bytes
        reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise HTTPError(422, f"body: not a valid multipart/form-data form ({reason}).") from None
    try:
        return await codec.form_record(form, validator)
    finally:
        await form.close()


# --- text streams ----------------------------------------------------------------------------------------


class _TextStream:
    """The pieces ``make()`` yields, produced in a thread of their own (generation never blocks the event
    loop) and read with :meth:`next`. :meth:`stop` ends the generation after the current piece."""

    _END = object()

    def __init__(self, make: Callable[[], Iterator[str]], on_end: Callable[[], None]):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stopped = threading.Event()
        self._on_end = on_end
        threading.Thread(target=self._produce, args=(make,), name="bigmodel-generate", daemon=True).start()

    def _produce(self, make: Callable[[], Iterator[str]]) -> None:
        try:
            pieces = make()
            try:
                for piece in pieces:
                    if self._stopped.is_set():
                        break
                    self._post(piece)
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
            self._post(self._END)
        except BaseException as exc:  # handed to the reader, who answers with it
            self._post(exc)
        finally:
            self._on_end()

    def _post(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()

    async def next(self) -> str | None:
        """The next piece; None at the end. Raises what the generation raised."""
        item = await self._queue.get()
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        return str(item)

    async def rest(self, first: str | None) -> str:
        """``first`` and every piece after it, joined."""
        parts = []
        piece = first
        while piece is not None:
            parts.append(piece)
            piece = await self.next()
        return "".join(parts)


def _event(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _events(first: str | None, pieces: _TextStream):
    """Server-sent events: ``data: {"text": piece}`` per piece, then ``event: done``; a failure after
    the first piece is ``event: error`` with ``{"error": message}``."""
    piece = first
    try:
        while piece is not None:
            if piece:
                yield _event({"text": piece})
            piece = await pieces.next()
        yield _event({}, "done")
    except UserError as exc:
        yield _event({"error": str(exc)}, "error")
    except Exception:
        log.exception("text generation failed")
        yield _event({"error": "generation failed; see the server log."}, "error")
    finally:
        pieces.stop()


class _EventStream(StreamingResponse):
    """``text/event-stream`` whose ``on_close`` runs however the response ends — finished, failed, or cut
    by the client before its body began (when the body iterator's own cleanup would never run)."""

    def __init__(self, events, on_close: Callable[[], None]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


# --- the page -------------------------------------------------------------------------------------------


def _page_file(page_dir: Path, name: str):
    """A file of the page's own folder (a plain name only: nothing above or beside the folder)."""
    if not _PAGE_NAME.match(name):
        raise HTTPError(404, f"/page/{name}: not found.")
    path = page_dir / name
    try:
        found = path.resolve().parent == page_dir and path.is_file()
    except OSError:
        found = False
    if not found:
        what = "the web page is not installed" if name == "index.html" else "not found"
        raise HTTPError(404, f"/page/{name}: {what}." if name != "index.html" else f"/: {what}.")
    return FileResponse(path, headers=_PAGE_HEADERS)


# --- errors ----------------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: HTTPError):
        return _error(exc.status, exc.message, exc.headers)

    async def starlette_http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"{request.url.path}: not found."
        elif exc.status_code == 405:
            message = f"{request.url.path}: method {request.method} is not allowed."
        return _error(exc.status_code, message, exc.headers)

    async def validation(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            got = f" (got {err['input']!r:.60})" if "input" in err else ""
            parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}{got}.")
        return _error(422, " ".join(parts) or "the request is not valid.")

    async def user_error(request: Request, exc: UserError):
        return _error(422, str(exc))

    async def busy(request: Request, exc: QueueFull):
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    async def not_running(request: Request, exc: NotRunning):
        return _error(503, str(exc), {"Retry-After": "1"})

    async def timeout(request: Request, exc: BatchTimeout):
        return _error(504, str(exc))

    async def disconnected(request: Request, exc: ClientDisconnect):
        return _error(400, "the client closed the connection before sending the whole body.")

    async def bug(request: Request, exc: Exception):  # Starlette re-raises it after: the server logs it
        return _error(500, "internal server error; see the server log.")

    app.add_exception_handler(HTTPError, http_error)
    app.add_exception_handler(StarletteHTTPException, starlette_http)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(QueueFull, busy)
    app.add_exception_handler(NotRunning, not_running)
    app.add_exception_handler(BatchTimeout, timeout)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, bug)


# --- running it -----------------------------------------------------------------------------------------


def serve(predictor, card: Mapping | None = None, settings: ServeSettings | None = None) -> None:
    """Serve ``predictor`` over HTTP with uvicorn until SIGINT/SIGTERM; then stop accepting, let
    in-flight requests finish (up to ``settings.graceful_shutdown_s``) and drain the batcher.

    Raises:
        UserError: the address cannot be bound (in use, not an address of this machine).
    """
    import uvicorn

    settings = settings or ServeSettings()
    app = create_app(predictor, card, settings)
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"bigmodel serve: http://{shown}:{port}/  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if not settings.api_keys and not _is_loopback(host):
        warning = (
            f"bigmodel serve: warning: listening on {host} without API keys: anyone who can reach "
            "this address can use the model (set BIGMODEL_API_KEYS or an API key file)."
        )
        print(warning, file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,  # what uvicorn's own start-up line shows (the socket is already bound)
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),
        lifespan="on",
        server_header=False,
        access_log=settings.log_level in ("debug", "trace"),
    )
    # The model, torch and the web stack are millions of long-lived objects: a full cyclic collection
    # walking them all paused every request for ~150 ms (p99 x3 under load). Frozen, they are skipped.
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"serve.host: cannot resolve {host!r} ({exc.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"serve.port: cannot listen on {host}:{port} ({exc.strerror}); is another server using it? "
            "Choose another port (0 picks a free one)."
        ) from None
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    return sock


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
