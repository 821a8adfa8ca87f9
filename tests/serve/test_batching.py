"""MicroBatcher on its own (no model, no HTTP): which jobs share a batch, that each job gets its own
slice of the results, the queue bound, timeouts and cancellation, isolated failures, draining stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bigmodel.errors import UserError
from bigmodel.serve.batching import BatchTimeout, MicroBatcher, NotRunning, QueueFull


class Recorder:
    """``prepare``/``run`` for a batcher: a payload is a list of numbers, a result is 10x the number.
    ``run`` records its batches and waits for ``gate``; a payload holding 13 fails ``prepare``; a batch
    holding 666 fails ``run`` (with a UserError, or with ``bug`` if set)."""

    def __init__(self):
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.batches: list[list] = []
        self.prepared: list[list] = []
        self.bug: type[Exception] | None = None

    def prepare(self, payload: list) -> list:
        self.prepared.append(payload)
        if 13 in payload:
            raise UserError("inputs: 13 is refused when parsing")
        return payload

    def run(self, examples: list) -> list:
        self.batches.append(list(examples))
        self.entered.set()
        assert self.gate.wait(10)
        if 666 in examples:
            raise (self.bug or UserError)("inputs: 666 is refused when running")
        return [10 * x for x in examples]


def batcher(recorder: Recorder, **options) -> MicroBatcher:
    options = {"max_batch": 4, "max_wait_ms": 0, "max_queue": 8, "timeout_s": 10, **options}
    return MicroBatcher(recorder.prepare, recorder.run, **options)


async def held(b: MicroBatcher, r: Recorder, payloads: list[list]) -> list:
    """Submit a first job that holds the worker, queue ``payloads`` behind it, then let all run; the
    results (or exceptions) of the queued payloads."""
    r.gate.clear()
    first = asyncio.create_task(b.submit([0], 1))
    while not r.entered.is_set():
        await asyncio.sleep(0.002)
    tasks = [asyncio.create_task(b.submit(p, len(p))) for p in payloads]
    while b.queue_depth < len(payloads):
        await asyncio.sleep(0.002)
    r.gate.set()
    assert await first == [0]
    return await asyncio.gather(*tasks, return_exceptions=True)


def in_loop(b: MicroBatcher, scenario):
    async def main():
        b.start()
        try:
            return await scenario()
        finally:
            await asyncio.to_thread(b.stop)

    return asyncio.run(main())


def test_jobs_share_batches_whole_and_each_gets_its_own_results():
    r = Recorder()
    b = batcher(r)
    results = in_loop(b, lambda: held(b, r, [[1, 2], [3, 4], [5, 6, 7], [8]]))
    assert results == [[10, 20], [30, 40], [50, 60, 70], [80]]
    # whole jobs, at most 4 examples, in order: [1,2]+[3,4] fill one batch; [5,6,7]+[8] the next
    assert r.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_job_larger_than_max_batch_runs_alone_and_max_batch_1_turns_batching_off():
    r = Recorder()
    b = batcher(r)
    assert in_loop(b, lambda: held(b, r, [[1], [2, 3, 4, 5, 6], [7]])) == [[10], [20, 30, 40, 50, 60], [70]]
    assert r.batches == [[0], [1], [2, 3, 4, 5, 6], [7]]
    r = Recorder()
    b = batcher(r, max_batch=1)
    assert in_loop(b, lambda: held(b, r, [[1], [2], [3]])) == [[10], [20], [30]]
    assert r.batches == [[0], [1], [2], [3]]


def test_a_full_queue_refuses_with_retry_after():
    r = Recorder()
    b = batcher(r, max_queue=2)

    async def scenario():
        r.gate.clear()
        first = asyncio.create_task(b.submit([0], 1))
        while not r.entered.is_set():
            await asyncio.sleep(0.002)
        queued = [asyncio.create_task(b.submit([i], 1)) for i in (1, 2)]
        while b.queue_depth < 2:
            await asyncio.sleep(0.002)
        with pytest.raises(QueueFull) as info:
            await b.submit([3], 1)
        assert info.value.retry_after >= 1 and "busy" in str(info.value)
        r.gate.set()
        return [await first, *await asyncio.gather(*queued)]

    assert in_loop(b, scenario) == [[0], [10], [20]]


def test_a_job_that_times_out_in_the_queue_is_never_run():
    r = Recorder()
    b = batcher(r, timeout_s=0.2)

    async def scenario():
        r.gate.clear()
        first = asyncio.create_task(b.submit([0], 1))
        while not r.entered.is_set():
            await asyncio.sleep(0.002)
        started = time.monotonic()
        with pytest.raises(BatchTimeout, match="no result within 0.2 s"):
            await b.submit([5], 1)
        assert 0.15 < time.monotonic() - started < 2
        assert b.queue_depth == 0  # taken out of the queue at once
        with pytest.raises(BatchTimeout):
            await first  # it had started: it times out too, its result is dropped
        r.gate.set()
        assert await b.submit([7], 1) == [70]

    in_loop(b, scenario)
    assert r.batches == [[0], [7]] and [5] not in r.prepared


def test_a_cancelled_job_is_never_run():
    r = Recorder()
    b = batcher(r)

    async def scenario():
        r.gate.clear()
        first = asyncio.create_task(b.submit([0], 1))
        while not r.entered.is_set():
            await asyncio.sleep(0.002)
        cancelled = asyncio.create_task(b.submit([5], 1))
        kept = asyncio.create_task(b.submit([6], 1))
        while b.queue_depth < 2:
            await asyncio.sleep(0.002)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        r.gate.set()
        return await first, await kept

    assert in_loop(b, scenario) == ([0], [60])
    assert r.batches == [[0], [6]]


@pytest.mark.parametrize("bug", [None, ValueError])
def test_a_failing_merged_batch_is_retried_job_by_job_so_only_the_bad_job_fails(bug):
    r = Recorder()
    r.bug = bug
    b = batcher(r)
    results = in_loop(b, lambda: held(b, r, [[1], [666], [3]]))
    assert results[0] == [10] and results[2] == [30]
    assert isinstance(results[1], bug or UserError) and "666" in str(results[1])
    assert r.batches == [[0], [1, 666, 3], [1], [666], [3]]


def test_a_job_refused_while_preparing_fails_alone_and_the_others_run_together():
    r = Recorder()
    b = batcher(r)
    results = in_loop(b, lambda: held(b, r, [[1], [13], [3]]))
    assert results[0] == [10] and results[2] == [30]
    assert isinstance(results[1], UserError) and "13" in str(results[1])
    assert r.batches == [[0], [1, 3]]


def test_stop_drains_the_queue_then_refuses_new_jobs():
    r = Recorder()
    b = batcher(r)

    async def scenario():
        b.start()
        r.gate.clear()
        jobs = [asyncio.create_task(b.submit([i], 1)) for i in range(1, 7)]
        while not r.entered.is_set() or b.queue_depth + sum(map(len, r.batches)) < 6:
            await asyncio.sleep(0.002)
        stopping = asyncio.create_task(asyncio.to_thread(b.stop))
        await asyncio.sleep(0.05)
        assert not b.running
        with pytest.raises(NotRunning):
            await b.submit([9], 1)
        r.gate.set()
        results = await asyncio.gather(*jobs)
        await stopping
        return results

    assert asyncio.run(scenario()) == [[10 * i] for i in range(1, 7)]
    assert sum(map(len, r.batches)) == 6


def test_not_started_refuses():
    b = batcher(Recorder())
    with pytest.raises(NotRunning):
        asyncio.run(b.submit([1], 1))


def test_a_lone_request_does_not_wait_for_companions():
    r = Recorder()
    b = batcher(r, max_wait_ms=2000)

    async def scenario():
        start = time.monotonic()
        assert await b.submit([1], 1) == [10]
        return time.monotonic() - start

    assert in_loop(b, scenario) < 1.0  # nobody else is arriving: no 2 s wait


def test_the_first_job_waits_for_announced_requests_up_to_max_wait():
    r = Recorder()
    b = batcher(r, max_wait_ms=3000)

    async def scenario():
        b.announce()  # a request being read: the worker waits for it
        first = asyncio.create_task(b.submit([1], 1))
        await asyncio.sleep(0.2)
        assert r.batches == []
        second = await b.submit([2], 1, announced=True)
        return await first, second

    assert in_loop(b, scenario) == ([10], [20])
    assert r.batches == [[1, 2]]
    r = Recorder()
    b = batcher(r, max_wait_ms=100)

    async def withdrawn():
        b.announce()
        start = time.monotonic()
        assert await b.submit([1], 1) == [10]  # waited max_wait_ms at most
        b.withdraw()
        return time.monotonic() - start

    assert 0.08 < in_loop(b, withdrawn) < 2.0
