"""Serving: throughput and latency over HTTP with micro-batching on and off, and the server's overhead.

A digits classifier (the shipped digits-mlp recipe, widened with ``--hidden`` so that one forward pass
at batch 1 takes a few milliseconds, trained for a few steps in a temporary folder) is served by
``bigmodel.serve.serve`` in a subprocess on loopback, once with batching on (``max_batch`` 32) and once
off (``max_batch`` 1), both at once. An async client (a minimal HTTP/1.1 keep-alive client on asyncio
streams; ``--client httpx`` for httpx, whose own CPU cost per request exceeds the server's here) keeps
1, 8 and 32 requests in flight (closed loop, one record per request) for a bounded number of requests
and seconds, after a warm-up, and measures throughput and p50/p99 latency. The two servers are
measured in turn, level by level, for ``--rounds`` rounds; the figures are medians over rounds. The
same request is timed in process on the bare Predictor (``predict``: parse + forward, batch 1) in each
round, so that

    server overhead at concurrency 1 = p50(server) - p50(bare predict).

Targets (issue 13): batching >= 3x the throughput at concurrency 32 with a p99 no worse than without;
overhead at concurrency 1 <= 2 ms. The client and the server share this machine's cores (and other
jobs may run on them): the figures are noisy, and the client's own cost is part of every latency.

Run: .venv/bin/python bench/serve.py [--hidden 3072] [--rounds 3] [--seconds 4] [--threads 1] [--client raw]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import bigmodel  # noqa: E402
from machine import machine  # noqa: E402

CONCURRENCY = (1, 8, 32)
SERVER = """
import sys
import torch
import bigmodel
from bigmodel.serve import ServeSettings, build_card, serve

run, max_batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
predictor = bigmodel.load(run)
settings = ServeSettings(port=0, max_batch=max_batch, max_queue=1024, log_level="warning")
serve(predictor, build_card(run, predictor.model), settings)
"""


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def bare_latency(run: Path, record: dict, threads: int, calls: int = 300) -> dict:
    """The in-process Predictor on one record: ``predict`` (parse + forward) and ``run`` (forward only)."""
    torch.set_num_threads(threads)
    predictor = bigmodel.load(run)
    examples = predictor.parse([record])
    for _ in range(30):
        predictor.predict([record])
    timings: dict[str, list[float]] = {"predict": [], "run": []}
    for _ in range(calls):
        start = time.perf_counter()
        predictor.predict([record])
        middle = time.perf_counter()
        predictor.run(examples)
        timings["predict"].append(middle - start)
        timings["run"].append(time.perf_counter() - middle)
    return {name: percentiles(values) for name, values in timings.items()}


@contextlib.contextmanager
def server(run: Path, max_batch: int, threads: int):
    """``bigmodel.serve.serve`` in a subprocess; yields its URL once /readyz answers; SIGTERM after."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(run), str(max_batch), str(threads)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        found = re.search(r"(http://\S+?)/\s", line)
        if not found:
            raise RuntimeError(f"the server did not start: {line}{process.stderr.read()}")
        url = found.group(1)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server never became ready")
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        process.stderr.close()


def batch_stats(metrics: str) -> tuple[float, float]:
    """(sum, count) of bigmodel_batch_size in a /metrics text."""
    values = dict(re.findall(r"^bigmodel_batch_size_(sum|count) (\S+)$", metrics, re.MULTILINE))
    return float(values.get("sum", 0)), float(values.get("count", 0))


class Connection:
    """A minimal HTTP/1.1 keep-alive client on raw asyncio streams (a few tens of microseconds of CPU per
    request, where httpx costs 1.5-4 ms here: with httpx the load generator, not the server, was
    measured)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if length is None:
            raise RuntimeError(f"no Content-Length in the response: {head[:200]!r}")
        return status, await self.reader.readexactly(int(length.group(1)))

    def close(self) -> None:
        self.writer.close()


def raw_request(url: str, body: bytes) -> bytes:
    host = urlsplit(url).netloc
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def load(url: str, body: bytes, concurrency: int, requests: int, seconds: float, client: str) -> dict:
    """Closed loop: ``concurrency`` clients each send a request as soon as their last one is answered,
    until ``requests`` are answered or ``seconds`` pass (after a warm-up of 2 x concurrency + 20)."""
    request = raw_request(url, body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as session:
        connections = [await Connection.open(url) for _ in range(concurrency)] if client == "raw" else []

        async def post(i: int) -> int:
            if client == "raw":
                status, answer = await connections[i].send(request)
                return status
            return (await session.post("/v1/predict", content=body, headers=headers)).status_code

        expected = json.loads((await session.post("/v1/predict", content=body, headers=headers)).content)
        if connections:  # the raw client reads the same answer
            status, answer = await connections[0].send(request)
            assert status == 200 and json.loads(answer) == expected, answer[:200]

        async def warm_up(i: int):
            for _ in range(2 + 20 // concurrency):
                assert await post(i) == 200

        await asyncio.gather(*[warm_up(i) for i in range(concurrency)])
        before = batch_stats((await session.get("/metrics")).text)
        latencies: list[float] = []
        failures = 0
        sent = 0
        deadline = time.perf_counter() + seconds

        async def worker(i: int):
            nonlocal sent, failures
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                status = await post(i)
                latencies.append(time.perf_counter() - start)
                failures += status != 200

        start = time.perf_counter()
        await asyncio.gather(*[worker(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - start
        after = batch_stats((await session.get("/metrics")).text)
        for connection in connections:
            connection.close()
    batches = after[1] - before[1]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        **percentiles(latencies),
        "mean_batch": round((after[0] - before[0]) / batches, 2) if batches else None,
    }


def median_level(levels: list[dict]) -> dict:
    """The per-round figures of one server and concurrency, as medians (and each round's throughput)."""
    out = {key: levels[0][key] for key in ("concurrency",)}
    for key in ("throughput_rps", "p50_ms", "p99_ms", "mean_batch"):
        values = [x[key] for x in levels if x[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["requests"] = sum(x["requests"] for x in levels)
    out["failures"] = sum(x["failures"] for x in levels)
    out["rounds_throughput_rps"] = [x["throughput_rps"] for x in levels]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=3072, help="width of digits-mlp's two hidden layers")
    parser.add_argument("--requests", type=int, default=2000, help="requests per level and round at most")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per level and round at most")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians over rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (and of bare)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the load generator")
    args = parser.parse_args()
    record = {"image": load_digits().data[0].reshape(1, 8, 8).tolist()}
    body = json.dumps({"inputs": [record]}).encode()
    modes = {"batching": 32, "no_batching": 1}
    measured: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in modes}
    bare_rounds = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        run = bigmodel.train(
            "digits-mlp",
            output=tmp,
            progress=False,
            model={"hidden_sizes": [args.hidden, args.hidden]},
            train={"max_steps": 30},
        ).path
        parameters = sum(p.numel() for p in bigmodel.load(run).model.parameters())
        # both servers run at once and are measured in turn, level by level and round by round, so that
        # the load other jobs put on this machine falls on both alike
        urls = {name: stack.enter_context(server(run, size, args.threads)) for name, size in modes.items()}
        gc.collect()
        gc.freeze()  # as serve() does: no full collection of torch's objects pauses the client mid-request
        for _ in range(args.rounds):
            bare_rounds.append(bare_latency(run, record, args.threads))
            for c in CONCURRENCY:
                for name, url in urls.items():
                    measured[name][c].append(
                        asyncio.run(load(url, body, c, args.requests, args.seconds, args.client))
                    )
    bare = {
        kind: {
            key: round(statistics.median(r[kind][key] for r in bare_rounds), 3)
            for key in ("p50_ms", "p99_ms")
        }
        for kind in ("predict", "run")
    }
    servers = {
        name: {"max_batch": modes[name], "levels": [median_level(measured[name][c]) for c in CONCURRENCY]}
        for name in modes
    }

    def level(name: str, concurrency: int) -> dict:
        return next(x for x in servers[name]["levels"] if x["concurrency"] == concurrency)

    on32, off32 = level("batching", 32), level("no_batching", 32)
    overhead_on = level("batching", 1)["p50_ms"] - bare["predict"]["p50_ms"]
    overhead_off = level("no_batching", 1)["p50_ms"] - bare["predict"]["p50_ms"]
    ratios = [
        a["throughput_rps"] / b["throughput_rps"]
        for a, b in zip(measured["batching"][32], measured["no_batching"][32], strict=True)
    ]
    summary = {
        "throughput_ratio_c32": round(statistics.median(ratios), 2),
        "throughput_ratio_c32_rounds": [round(r, 2) for r in ratios],
        "p99_ms_c32": {"batching": on32["p99_ms"], "no_batching": off32["p99_ms"]},
        "overhead_ms_c1": {"batching": round(overhead_on, 3), "no_batching": round(overhead_off, 3)},
    }
    targets = {
        "batching_3x_throughput_at_c32": summary["throughput_ratio_c32"] >= 3,
        "batching_p99_no_worse_at_c32": on32["p99_ms"] <= off32["p99_ms"],
        "overhead_at_c1_at_most_2ms": overhead_on <= 2.0,
    }
    print(
        json.dumps(
            {
                "machine": machine(),
                "model": {
                    "recipe": "digits-mlp",
                    "hidden_sizes": [args.hidden] * 2,
                    "parameters": parameters,
                },
                "settings": {
                    "requests": args.requests,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "server_threads": args.threads,
                    "client": args.client,
                },
                "bare_predictor_batch1": bare,
                "server": servers,
                "summary": summary,
                "targets_met": targets,
                "note": "medians over rounds; client and server share this machine's 2 cores with other jobs",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
