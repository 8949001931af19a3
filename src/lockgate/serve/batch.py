"""Per-model-version adaptive batcher.

Greedy: when the model is idle a request runs at once; while a batch runs, new requests queue and
the next batch takes everything queued, up to `max_batch_rows` rows. Nothing waits for a timer at
low load, and batches grow exactly as fast as load does. The queue is bounded in rows: a full queue
sheds the request (OVERLOADED) instead of letting latency grow without bound. Every request has a
deadline; an expired request is answered DEADLINE and never reaches the model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lockgate.config import BatchConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.runner import Arrays, ModelRunner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunInfo:
    """How a request was served: what the monitor and the response headers may report."""

    queue_ns: int
    compute_ns: int
    batch_rows: int
    batch_requests: int


@dataclass(slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[tuple[Arrays, RunInfo]]
    enqueued_ns: int
    meta: Any = None  # opaque to the batcher; handed to the observer


class BatchObserver(Protocol):
    """Sees every successful model run (the monitor's ring); must be quick and never raise."""

    def record(
        self,
        feeds: Arrays,
        outputs: Arrays,
        metas: list[Any],
        rows: list[int],
        enqueued_ns: list[int],
        started_ns: int,
    ) -> None: ...


@dataclass(slots=True)
class BatchStats:
    """Plain counters read by tests, metrics and benchmarks (no locks: one event loop)."""

    requests: int = 0
    batches: int = 0
    rows: int = 0
    multi_request_batches: int = 0
    inline_batches: int = 0
    shed: int = 0
    expired: int = 0
    failed: int = 0
    observer_errors: int = 0
    compute_ns: int = 0


class Batcher:
    def __init__(
        self,
        runner: ModelRunner,
        config: BatchConfig,
        executor: Executor,
        observer: BatchObserver | None = None,
    ) -> None:
        self.runner = runner
        self.observer = observer
        self.config = config
        self.stats = BatchStats()
        self._executor = executor
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0  # requests submitted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(
        self, inputs: Arrays, rows: int, deadline: float, meta: Any = None
    ) -> tuple[Arrays, RunInfo]:
        """Queue one request's rows; return exactly its own output rows. `meta` goes to the
        observer with the request's rows."""
        if self._closed:
            raise LockgateError(ErrorKind.UNAVAILABLE, f"model {self._label()} is shutting down")
        if self._queued_rows and self._queued_rows + rows > self.config.max_queue_rows:
            self._shed()
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, rows, loop.create_future(), time.perf_counter_ns(), meta)
        self._queue.append(pending)
        self._queued_rows += rows
        self._in_flight += 1
        self._idle.clear()
        if self._task is None:
            # Started on the next loop turn, so requests parsed in this turn join the first batch.
            self._task = loop.create_task(self._drain())
        timer = loop.call_at(deadline, self._expire, pending) if deadline != float("inf") else None
        try:
            return await pending.future
        finally:
            if timer is not None:
                timer.cancel()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def admit(self) -> None:
        """Refuse before the request is even read when the queue is already full: a rejection
        must cost far less than a request, or overload turns into collapse."""
        if self._queued_rows >= self.config.max_queue_rows:
            self._shed()

    def _shed(self) -> None:
        self.stats.shed += 1
        raise LockgateError(
            ErrorKind.OVERLOADED,
            f"model {self._label()} is overloaded ({self._queued_rows} rows queued)",
            retry_after=self._drain_estimate(),
        )

    def _expire(self, pending: _Pending) -> None:
        if not pending.future.done():
            self.stats.expired += 1
            pending.future.set_exception(
                LockgateError(ErrorKind.DEADLINE, f"deadline exceeded waiting for {self._label()}")
            )

    async def _drain(self) -> None:
        busy = False  # the first batch after an idle period never waits
        try:
            while self._queue:
                if busy and self.config.max_queue_delay > 0:
                    await self._gather_more()
                busy = True
                batch = self._take()
                if batch:
                    await self._run(batch)
        finally:
            self._task = None

    async def _gather_more(self) -> None:
        """Busy-period option: give a short batch up to `max_queue_delay` to fill."""
        oldest = self._queue[0].enqueued_ns
        limit = oldest + int(self.config.max_queue_delay * 1e9)
        while self._queued_rows < self.config.max_batch_rows:
            remaining = (limit - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.0005))

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        limit = self.config.max_batch_rows if self.runner.spec.batchable else 1
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # expired or cancelled while queued
                self._queue.popleft()
                self._queued_rows -= head.rows
                continue
            if batch and (rows + head.rows > limit or not self.runner.spec.batchable):
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            batch.append(head)
            rows += head.rows
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        rows = sum(p.rows for p in batch)
        feeds = batch[0].inputs if len(batch) == 1 else _concat([p.inputs for p in batch])
        start = time.perf_counter_ns()
        try:
            outputs = await self._compute(feeds, rows)
        except LockgateError as exc:
            if len(batch) > 1:  # one bad request must not fail its neighbours: retry alone
                for p in batch:
                    await self._run([p])
                return
            self.stats.failed += 1
            _fail(batch, exc)
            return
        except Exception as exc:
            self.stats.failed += 1
            _fail(batch, LockgateError(ErrorKind.MODEL_FAILED, f"{self._label()}: {exc}"))
            return
        compute_ns = time.perf_counter_ns() - start
        self._count(batch, rows, compute_ns)
        if self.observer is not None:
            self._observe(feeds, outputs, batch, start)
        offset = 0
        for p in batch:
            end = offset + p.rows
            if not p.future.done():
                out = outputs if len(batch) == 1 else {k: v[offset:end] for k, v in outputs.items()}
                p.future.set_result(
                    (out, RunInfo(start - p.enqueued_ns, compute_ns, rows, len(batch)))
                )
            offset = end

    def _observe(self, feeds: Arrays, outputs: Arrays, batch: list[_Pending], start: int) -> None:
        assert self.observer is not None
        try:
            self.observer.record(
                feeds,
                outputs,
                [p.meta for p in batch],
                [p.rows for p in batch],
                [p.enqueued_ns for p in batch],
                start,
            )
        except Exception:  # the monitor must never fail a request
            self.stats.observer_errors += 1
            if self.stats.observer_errors == 1:
                log.exception("recording a batch for the monitor failed")

    async def _compute(self, feeds: Arrays, rows: int) -> Arrays:
        """Run inline when the predicted compute is below the cost of a thread hand-off."""
        if self.runner.predicted_cost(rows) < self.config.inline_threshold:
            self.stats.inline_batches += 1
            return self.runner.run(feeds)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.runner.run, feeds)

    def _count(self, batch: list[_Pending], rows: int, compute_ns: int) -> None:
        s = self.stats
        s.compute_ns += compute_ns
        s.batches += 1
        s.requests += len(batch)
        s.rows += rows
        if len(batch) > 1:
            s.multi_request_batches += 1

    def _drain_estimate(self) -> float:
        batches = self._queued_rows / max(self.config.max_batch_rows, 1) + 1
        return batches * self.runner.predicted_cost(self.config.max_batch_rows)

    def _label(self) -> str:
        return f"{self.runner.spec.name} v{self.runner.spec.version}"

    async def close(self, timeout: float) -> bool:
        """Refuse new work and wait for queued and running requests; True if all finished."""
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _concat(parts: list[Arrays]) -> Arrays:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _fail(batch: list[_Pending], exc: LockgateError) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
