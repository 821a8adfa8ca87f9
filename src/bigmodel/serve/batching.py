"""Micro-batching: the examples of many concurrent requests run through the model in one forward pass.

Design
------
- **An asyncio front, one worker thread.** Request handlers (on the event loop) call
  :meth:`MicroBatcher.submit`; it appends a job to a bounded queue and awaits an asyncio future.
  One worker thread takes jobs, runs ``prepare`` (the task's parsing) per job and ``run`` (the
  forward pass) on their examples together, and hands each job its slice of the results through
  ``loop.call_soon_threadsafe``. The event loop never runs the model, so it keeps accepting and
  answering requests while a batch runs; one thread means one forward at a time, so batches grow
  under load instead of forwards fighting over the CPU cores.
- **Greedy batches, short waits.** When the worker is free it takes the queued jobs in order, whole
  jobs only, up to ``max_batch`` examples (a single job larger than that runs alone). Under load the
  jobs that queued during the previous forward form the next batch, so batching needs no waiting.
  It waits for companions only while more requests are being received (announced by the front
  between reading the request and submitting it), and never longer than ``max_wait_ms`` after its
  first job arrived. So a lone request at concurrency 1 runs at once: batching adds no latency there.
  ``max_batch=1`` turns batching off.
- **Bounded queue.** More than ``max_queue`` waiting jobs: :class:`QueueFull` (HTTP 503 with
  ``Retry-After``, estimated from the recent forward times) instead of unbounded memory and latency.
- **Timeouts and cancellation.** A job waits at most ``timeout_s`` (HTTP 504). A job that timed out
  or whose request was cancelled is taken out of the queue, so it never costs a forward; one that
  had already started finishes and its result is dropped.
- **Isolated failures.** A merged batch that raises (a :class:`~bigmodel.errors.UserError` such as
  non-finite outputs for one request's rows, or anything else) is run again job by job, so only the
  job that fails alone gets the error; the others get their results. A job whose ``prepare`` fails
  gets that error and the rest of the batch runs without it.
- **Draining stop.** :meth:`MicroBatcher.stop` refuses new jobs and lets the worker finish every
  queued one before it exits, so a graceful shutdown answers what it accepted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bigmodel.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs (or the batcher is stopping): try again after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class NotRunning(Exception):
    """The batcher has not started, or has stopped: the server is starting or shutting down."""


class BatchTimeout(Exception):
    """A job got no result within ``timeout_s``."""


@dataclass(eq=False)
class _Job:
    payload: Any
    size: int  # examples the payload will make, as announced (for filling batches)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Merge concurrent jobs into batches that one worker thread runs.

    Args:
        prepare: ``payload -> list of examples`` for one job (may raise to refuse that job alone).
        run: ``examples -> list of results``, one per example, in order.
        max_batch: examples per batch at most (whole jobs only); 1 = no batching.
        max_wait_ms: how long a batch's first job may wait for jobs still being received.
        max_queue: waiting jobs at most; beyond, :class:`QueueFull`.
        timeout_s: how long a job may wait for its result; beyond, :class:`BatchTimeout`.
        on_batch: ``(examples, seconds)`` after every ``run`` (metrics).
        on_queue: ``(waiting jobs)`` when the queue changes (metrics).
    """

    def __init__(
        self,
        prepare: Callable[[Any], Sequence],
        run: Callable[[list], Sequence],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ):
        self.prepare, self.run = prepare, run
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.timeout_s = timeout_s
        self.on_batch, self.on_queue = on_batch, on_queue
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._arriving = 0  # requests being received that will submit a job
        self._state = "new"  # new -> running -> stopping -> stopped (-> running again)
        self._thread: threading.Thread | None = None
        self._forward_s = 0.0  # moving average of a batch's time, for Retry-After

    # -- life cycle -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the worker thread (again after :meth:`stop`)."""
        with self._cond:
            if self._state in ("running", "stopping"):
                return
            self._state = "running"
            # daemon: a batcher nobody stopped must not keep the interpreter from exiting
            self._thread = threading.Thread(target=self._work, name="bigmodel-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish every queued one, then stop the worker (waiting up to ``timeout``
        seconds; jobs still queued after that fail with :class:`NotRunning`)."""
        with self._cond:
            if self._state != "running":
                return
            self._state = "stopping"
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._state = "stopped"
        for job in left:
            _resolve(job, error=NotRunning("the server is shutting down; the request was not run."))
        self._report_queue(0)

    # -- the front (event loop) ---------------------------------------------------------------------

    def announce(self) -> None:
        """A request is being received and will :meth:`submit` (or :meth:`withdraw`): worth waiting for."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will not submit (it was refused while being read)."""
        with self._cond:
            self._arriving -= 1
            self._cond.notify_all()

    async def submit(self, payload: Any, size: int, announced: bool = False) -> Any:
        """Queue a job and wait for its results (what ``run`` returned for its examples, as a list).

        Raises:
            QueueFull: the queue is full (503). NotRunning: not started or stopping (503).
            BatchTimeout: no result within ``timeout_s`` (504). Whatever ``prepare``/``run`` raised
                for this job alone.
        """
        loop = asyncio.get_running_loop()
        job = _Job(payload, max(int(size), 1), loop, loop.create_future())
        with self._cond:
            if announced:
                self._arriving -= 1
            if self._state != "running":
                self._cond.notify_all()
                raise NotRunning("the server is starting or shutting down; try again shortly.")
            if len(self._queue) >= self.max_queue:
                self._cond.notify_all()
                raise QueueFull(
                    f"the server is busy ({len(self._queue)} requests queued); try again shortly.",
                    self._retry_after(),
                )
            self._queue.append(job)
            depth = len(self._queue)
            self._cond.notify_all()
        self._report_queue(depth)
        try:
            return await asyncio.wait_for(job.future, self.timeout_s)
        except asyncio.TimeoutError:
            self._abandon(job)
            raise BatchTimeout(
                f"no result within {self.timeout_s:g} s (the server is overloaded, or the inputs take long)."
            ) from None
        except asyncio.CancelledError:  # the client went away, or the server is cancelling requests
            self._abandon(job)
            raise

    def _abandon(self, job: _Job) -> None:
        """Take a job that nobody waits for out of the queue (if its batch has not started)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # already taken by the worker: its result will be dropped
            depth = len(self._queue)
        self._report_queue(depth)

    def _retry_after(self) -> int:
        """Seconds until the queue ahead has likely drained: batches ahead x recent batch time."""
        batches = math.ceil((len(self._queue) + 1) / self.max_batch)
        return max(1, math.ceil(batches * self._forward_s))

    # -- the worker thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (jobs := self._next_batch()) is not None:
                if jobs:
                    self._process(jobs)
        except BaseException:  # a bug here must not leave requests waiting forever
            log.exception("the micro-batcher's worker failed")
            with self._cond:
                left, self._state = list(self._queue), "stopped"
                self._queue.clear()
            for job in left:
                _resolve(job, error=NotRunning("the server's batch worker failed; see the server log."))
            raise

    def _next_batch(self) -> list[_Job] | None:
        """Jobs for the next batch (possibly none); None once stopping with nothing left."""
        with self._cond:
            while not self._queue:
                if self._state != "running":
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self.max_wait
            while (
                self.max_batch > 1
                and self._arriving > 0
                and self._state == "running"
                and sum(job.size for job in self._queue) < self.max_batch
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Job] = []
            total = 0
            while self._queue and (not batch or total + self._queue[0].size <= self.max_batch):
                job = self._queue.popleft()
                if job.future.done():  # cancelled between the wait and now
                    continue
                batch.append(job)
                total += job.size
            depth = len(self._queue)
        self._report_queue(depth)
        return batch

    def _process(self, jobs: list[_Job]) -> None:
        prepared: list[tuple[_Job, list]] = []
        for job in jobs:
            try:
                prepared.append((job, list(self.prepare(job.payload))))
            except Exception as exc:
                _resolve(job, error=exc)
        if not prepared:
            return
        try:
            results = self._run([example for _, examples in prepared for example in examples])
        except Exception as exc:
            if len(prepared) == 1:
                _resolve(prepared[0][0], error=exc)
                return
            for job, examples in prepared:  # only the job that fails alone gets the error
                try:
                    _resolve(job, result=self._run(examples))
                except Exception as job_exc:
                    _resolve(job, error=job_exc)
            return
        start = 0
        for job, examples in prepared:
            _resolve(job, result=results[start : start + len(examples)])
            start += len(examples)

    def _run(self, examples: list) -> list:
        start = time.perf_counter()
        results = list(self.run(examples))
        seconds = time.perf_counter() - start
        if len(results) != len(examples):
            raise RuntimeError(f"run returned {len(results)} results for {len(examples)} examples")
        self._forward_s = seconds if self._forward_s == 0 else 0.8 * self._forward_s + 0.2 * seconds
        if self.on_batch is not None:
            self.on_batch(len(examples), seconds)
        return results

    def _report_queue(self, depth: int) -> None:
        if self.on_queue is not None:
            self.on_queue(depth)


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a job's future from any thread (ignored when nobody waits any more)."""

    def complete() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(complete)
    except RuntimeError:  # the event loop is closed: nobody is left to answer
        pass
