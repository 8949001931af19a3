"""Per-model-version adaptive batcher.

Greedy: when the model is idle a request runs at once; while a batch runs, new requests queue and
the next batch takes everything queued, up to `max_batch_rows` rows. Nothing waits for a timer at
low load, and batches grow exactly as fast as load does. The queue is bounded in rows: a full queue
sheds the request (OVERLOADED) instead of letting latency grow without bound. Every request has a
deadline; an expired request is answered DEADLINE and never reaches the model.

One exception: a transport that hands requests over one at a time (grpc.aio accepts one call per
completion-queue round trip) never lets batch-mates arrive while a tiny model runs, so under load
every request would pay a whole model call. Its requests, arriving at an idle model, wait for
batch-mates while the event loop is busy bringing in more (at most `gather_delay`), as long as such
waits pay; a wait that gathers too few backs the gathering off exponentially, so a lone client
almost never waits and a small convoy is not formed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lockgate.config import BatchConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.runner import Arrays, ModelRunner

log = logging.getLogger(__name__)

# Gathering one-at-a-time requests (see the module docstring). Measured with grpc.aio on 2 cores:
BUSY_TURN = 20e-6  # a loop turn longer than this ran other callbacks: requests are moving
IDLE_LOOP = 50e-6  # this long without a busy turn or an arrival: nobody else is coming
GATHER_PAYS = 3  # two batch-mates: below that, gathering a convoy costs more than it saves
MAX_GATHER_BACKOFF = 256  # after fruitless gathers, a lone client waits on one request in 257


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
    gathers: int = 0  # waits for batch-mates (one-at-a-time transports)
    fruitless_gathers: int = 0  # ... that gathered no batch-mate
    shed: int = 0
    expired: int = 0
    failed: int = 0
    observer_errors: int = 0
    compute_ns: int = 0
    # For Triton's statistics: summed over requests, the time each waited before its batch
    # started and the compute time of its batch; when the last batch started; and per batch
    # size (rows, up to max_batch_rows) the batches and their compute time.
    queue_ns: int = 0
    request_compute_ns: int = 0
    last_started_ns: int = 0
    size_batches: dict[int, int] = field(default_factory=dict)
    size_compute_ns: dict[int, int] = field(default_factory=dict)


class Batcher:
    def __init__(
        self,
        runner: ModelRunner,
        config: BatchConfig,
        executor: Executor,
        observer: BatchObserver | None = None,
        concurrency: int = 1,
    ) -> None:
        self.runner = runner
        self.observer = observer
        self.config = config
        self.stats = BatchStats()
        self._executor = executor
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        # The scheduled or running drain: a Task, or a plain callback where every batch runs
        # inline (see `_drain_inline`).
        self._task: asyncio.Task[None] | asyncio.Handle | None = None
        self._in_flight = 0  # requests submitted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        # Batches run in threads at once (a version with several sessions); 1: one at a time.
        self._slots = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self._running: set[asyncio.Task[None]] = set()  # batches in their slots
        self._inline = config.inline_threshold
        self._size_limit = config.max_batch_rows  # batch sizes counted one by one up to this
        # Gather only where batch-mates can share a run.
        self._gathers = config.gather_delay > 0 and runner.spec.batchable
        self._skip_gathers = 0  # one-at-a-time requests to run at once before gathering again
        self._backoff = 0
        # Every batch this batcher can form runs inline and none waits to fill: the drain can be
        # a plain callback (see `_drain_inline`). The runner is loaded, its cost model known.
        full = config.max_batch_rows if runner.spec.batchable else 1
        self._callback_drain = (
            runner.predicted_cost(full) < self._inline and config.max_queue_delay <= 0
        )

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(
        self, inputs: Arrays, rows: int, deadline: float, meta: Any = None, *, alone: bool = False
    ) -> tuple[Arrays, RunInfo]:
        """Queue one request's rows; return exactly its own output rows. `meta` goes to the
        observer with the request's rows. `alone`: the transport hands requests over one at a
        time (see the module docstring)."""
        if self._closed:
            raise LockgateError(ErrorKind.UNAVAILABLE, f"model {self._label()} is shutting down")
        gather = False
        if alone and self._task is None:
            if self._gathers and not self._skip_gathers:
                gather = True
            else:
                self._skip_gathers = max(0, self._skip_gathers - 1)
                if self.runner.predicted_cost(rows) < self._inline:
                    # No future, no task, no loop turn: the cheapest way through.
                    return self._run_now(inputs, rows, deadline, meta)
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
            if gather or not self._callback_drain:
                self._task = loop.create_task(self._drain(gather))
            else:
                self._task = loop.call_soon(self._drain_inline)
        timer = loop.call_at(deadline, self._expire, pending) if deadline != float("inf") else None
        try:
            return await pending.future
        finally:
            if timer is not None:
                timer.cancel()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _run_now(
        self, inputs: Arrays, rows: int, deadline: float, meta: Any
    ) -> tuple[Arrays, RunInfo]:
        start = time.perf_counter_ns()
        if deadline <= time.monotonic():
            self.stats.expired += 1
            raise LockgateError(ErrorKind.DEADLINE, f"deadline exceeded before {self._label()}")
        try:
            outputs = self.runner.run(inputs)
        except Exception as exc:
            self.stats.failed += 1
            if isinstance(exc, LockgateError):
                raise
            raise LockgateError(ErrorKind.MODEL_FAILED, f"{self._label()}: {exc}") from exc
        compute_ns = time.perf_counter_ns() - start
        self.stats.inline_batches += 1
        self._count(1, rows, compute_ns, start)
        if self.observer is not None:
            self._observe(inputs, outputs, [meta], [rows], [start], start)
        return outputs, RunInfo(0, compute_ns, rows, 1)

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

    async def _drain(self, gather: bool = False) -> None:
        busy = False  # the first batch after an idle period never waits
        try:
            if gather:
                await self._gather()
            while self._queue:
                if busy and self.config.max_queue_delay > 0:
                    await self._gather_more()
                busy = True
                batch, rows = self._take()
                if batch and self._slots is not None:
                    await self._slots.acquire()  # a free session: run beside the others
                    task = asyncio.get_running_loop().create_task(self._run_in_slot(batch, rows))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                elif batch:
                    await self._run(batch, rows)
        finally:
            self._task = None

    async def _run_in_slot(self, batch: list[_Pending], rows: int) -> None:
        assert self._slots is not None
        try:
            await self._run(batch, rows)
        finally:
            self._slots.release()

    def _drain_inline(self) -> None:
        """`_drain` for models that always run inline, as a plain callback: a Task and its
        coroutines cost more than a tiny model's batch (about 5 us per batch, which a traffic
        split pays twice as often, its batches being half the size)."""
        try:
            while self._queue:
                batch, rows = self._take()
                if batch:
                    self._run_inline(batch, rows)
        finally:
            self._task = None

    async def _gather(self) -> None:
        """Let one-at-a-time requests join the first while the event loop is busy (a loop turn
        that runs other callbacks is how the next request arrives), for at most `gather_delay`
        or until a batch is full; stop as soon as the loop has sat idle, since nobody else is
        coming then. Judge the wait by how many it gathered."""
        start = busy = previous = time.perf_counter()
        seen = len(self._queue)
        while self._queued_rows < self.config.max_batch_rows:
            await asyncio.sleep(0)
            now = time.perf_counter()
            if now - previous > BUSY_TURN or len(self._queue) != seen:
                busy, seen = now, len(self._queue)
            elif now - busy > IDLE_LOOP or now - start > self.config.gather_delay:
                break
            previous = now
        self.stats.gathers += 1
        if len(self._queue) >= GATHER_PAYS:
            self._backoff = 0
        else:
            self.stats.fruitless_gathers += 1
            self._backoff = min(max(1, 2 * self._backoff), MAX_GATHER_BACKOFF)
            self._skip_gathers = self._backoff

    async def _gather_more(self) -> None:
        """Busy-period option: give a short batch up to `max_queue_delay` to fill."""
        oldest = self._queue[0].enqueued_ns
        limit = oldest + int(self.config.max_queue_delay * 1e9)
        while self._queued_rows < self.config.max_batch_rows:
            remaining = (limit - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.0005))

    def _take(self) -> tuple[list[_Pending], int]:
        """The next batch from the queue's head, and its rows."""
        batch: list[_Pending] = []
        rows = 0
        spec = self.runner.spec
        limit = self.config.max_batch_rows if spec.batchable else 1
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # expired or cancelled while queued
                self._queue.popleft()
                self._queued_rows -= head.rows
                continue
            if batch and (
                rows + head.rows > limit
                or not spec.batchable
                or (spec.ragged and not _same_shapes(batch[0].inputs, head.inputs, spec.ragged))
            ):
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            batch.append(head)
            rows += head.rows
        return batch, rows

    async def _run(self, batch: list[_Pending], rows: int) -> None:
        if self.runner.predicted_cost(rows) < self._inline:
            self._run_inline(batch, rows)
            return
        feeds = batch[0].inputs if len(batch) == 1 else _concat([p.inputs for p in batch])
        start = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self.runner.run, feeds)
        except Exception as exc:
            if self._failed(batch, exc):
                for p in batch:
                    await self._run([p], p.rows)
            return
        self._finish(batch, feeds, outputs, rows, start)

    def _run_inline(self, batch: list[_Pending], rows: int) -> None:
        """Run on the event loop: the predicted compute is below the cost of a thread hand-off."""
        feeds = batch[0].inputs if len(batch) == 1 else _concat([p.inputs for p in batch])
        start = time.perf_counter_ns()
        try:
            outputs = self.runner.run(feeds)
        except Exception as exc:
            if self._failed(batch, exc):
                for p in batch:
                    self._run_inline([p], p.rows)
            return
        self.stats.inline_batches += 1
        self._finish(batch, feeds, outputs, rows, start)

    def _failed(self, batch: list[_Pending], exc: Exception) -> bool:
        """Fail the batch's requests, or return True: retry them one by one, since one bad
        request must not fail its neighbours."""
        if isinstance(exc, LockgateError):
            if len(batch) > 1:
                return True
        else:
            exc = LockgateError(ErrorKind.MODEL_FAILED, f"{self._label()}: {exc}")
        self.stats.failed += 1
        _fail(batch, exc)
        return False

    def _finish(
        self, batch: list[_Pending], feeds: Arrays, outputs: Arrays, rows: int, start: int
    ) -> None:
        compute_ns = time.perf_counter_ns() - start
        self._count(len(batch), rows, compute_ns, start)
        if self.observer is not None:
            metas, sizes = [p.meta for p in batch], [p.rows for p in batch]
            self._observe(feeds, outputs, metas, sizes, [p.enqueued_ns for p in batch], start)
        offset = queued = 0
        for p in batch:
            end = offset + p.rows
            waited = start - p.enqueued_ns
            queued += waited
            if not p.future.done():
                out = outputs if len(batch) == 1 else {k: v[offset:end] for k, v in outputs.items()}
                p.future.set_result((out, RunInfo(waited, compute_ns, rows, len(batch))))
            offset = end
        self.stats.queue_ns += queued

    def _observe(
        self,
        feeds: Arrays,
        outputs: Arrays,
        metas: list[Any],
        rows: list[int],
        enqueued_ns: list[int],
        start: int,
    ) -> None:
        assert self.observer is not None
        try:
            self.observer.record(feeds, outputs, metas, rows, enqueued_ns, start)
        except Exception:  # the monitor must never fail a request
            self.stats.observer_errors += 1
            if self.stats.observer_errors == 1:
                log.exception("recording a batch for the monitor failed")

    def _count(self, requests: int, rows: int, compute_ns: int, started_ns: int) -> None:
        s = self.stats
        s.compute_ns += compute_ns
        s.batches += 1
        s.requests += requests
        s.rows += rows
        s.request_compute_ns += compute_ns * requests
        s.last_started_ns = started_ns
        if rows <= self._size_limit:  # a larger request ran alone: totals only
            try:  # plain dicts: a Counter's += costs three times as much
                s.size_batches[rows] += 1
                s.size_compute_ns[rows] += compute_ns
            except KeyError:  # the first batch of this size (both dicts have the same keys)
                s.size_batches[rows] = 1
                s.size_compute_ns[rows] = compute_ns
        if requests > 1:
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


def _same_shapes(a: Arrays, b: Arrays, names: tuple[str, ...]) -> bool:
    """Requests concatenate on axis 0 only when their other dimensions agree."""
    return all(a[n].shape[1:] == b[n].shape[1:] for n in names)


def _concat(parts: list[Arrays]) -> Arrays:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _fail(batch: list[_Pending], exc: LockgateError) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
