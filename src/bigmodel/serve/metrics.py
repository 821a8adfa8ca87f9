"""Prometheus metrics of one app, in a registry of its own (tests and embedders create many apps, and
the process-wide default registry would refuse a second metric of the same name).

- ``bigmodel_requests_total{endpoint,status}``: answered requests, by route template and status;
- ``bigmodel_request_seconds{endpoint}``: time from the request's first byte to the response's last;
- ``bigmodel_batch_size``: examples per forward pass of the micro-batcher;
- ``bigmodel_queue_depth``: requests waiting for a batch;
- ``bigmodel_inference_seconds``: time of one forward pass (parsing excluded).
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
UNMATCHED = "unmatched"  # the endpoint label of a request no route took (a 404): bounded cardinality


class ServeMetrics:
    """The app's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bigmodel_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "bigmodel_request_seconds", "HTTP request latency in seconds", ["endpoint"],
            buckets=_LATENCY, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "bigmodel_batch_size", "Examples per forward pass", buckets=_SIZES, registry=self.registry
        )
        self.queue_depth = Gauge(
            "bigmodel_queue_depth", "Requests waiting for a batch", registry=self.registry
        )
        self.inference_seconds = Histogram(
            "bigmodel_inference_seconds", "Seconds per forward pass", buckets=_LATENCY, registry=self.registry
        )

    def observe_batch(self, examples: int, seconds: float) -> None:
        self.batch_size.observe(examples)
        self.inference_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware counting and timing every HTTP request by its route template (never the
    raw path, whose values are unbounded). Streaming responses are timed to their last byte."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when an exception escapes every handler

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or UNMATCHED
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
