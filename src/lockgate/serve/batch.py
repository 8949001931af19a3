"""Per-model-version adaptive batcher.

Greedy: when the model is idle a request runs at once; while a batch runs, new requests queue and
the next batch takes what is queued, up to `max_batch_rows` rows. Nothing waits for a timer at
low load, and batches grow exactly as fast as load does.

Overload: a request is refused at admission (serve/admission.py), before it is queued. Queued
requests are served by the discipline of serve/queue.py. While a full batch is queued behind a
running one, the model thread takes and runs it itself instead of handing back to the event loop:
under overload a busy loop took longer to turn around than the batch took to run (a 64-row batch
of the demo `mlp`, 3.5 ms of compute, took 40 ms from batch to batch at 512 hammering
connections).

Requests handed over one at a time (gRPC) may wait for batch-mates: see serve/gather.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from lockgate.config import BatchConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.admission import Admission
from lockgate.serve.batch_stats import BatchObserver, BatchStats, Derived
from lockgate.serve.deadline_watch import DeadlineWatch
from lockgate.serve.gather import Gatherer
from lockgate.serve.queue import Dropped, Pending, RequestQueue, RunInfo, WaitModel
from lockgate.serve.runner import Arrays, ModelRunner

__all__ = ["Batcher"]
log = logging.getLogger(__name__)


# One model run: its requests, feeds, outputs (or the error they all get), rows, start, compute,
# and what the observer derived from its feeds in the model thread (or the exception it raised).
_Outcome = tuple[
    list[Pending], Arrays, "Arrays | LockgateError", int, int, int, "Derived | Exception | None"
]


class Batcher:
    def __init__(
        self,
        runner: ModelRunner,
        config: BatchConfig,
        executor: Executor,
        observer: BatchObserver | None = None,
        concurrency: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.observer = observer
        self.config = config
        self.stats = BatchStats()
        self._executor = executor
        self._clock = clock  # deadlines and queue waits; time.monotonic, as in the data plane
        limit = config.max_batch_rows if runner.spec.batchable else 1
        self.queue = RequestQueue(
            limit, config.max_queue_wait, clock, runner.predicted_cost, runner.spec.ragged
        )
        # The scheduled or running drain: a Task, or a plain callback where every batch runs
        # inline (see `_drain_inline`).
        self._task: asyncio.Task[None] | asyncio.Handle | None = None
        self._unanswered: dict[Pending, None] = {}  # submitted and not yet answered, in order
        self._deadlines = DeadlineWatch(self._expire_due)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        # Batches run in threads at once (a version with several sessions); 1: one at a time,
        # and only then may the model thread chain queued batches itself (see `_chain`).
        self._slots = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self._running: set[asyncio.Task[None]] = set()  # batches in their slots
        self._inline = config.inline_threshold
        self._size_limit = config.max_batch_rows  # batch sizes counted one by one up to this
        self.gatherer = Gatherer(config.gather_delay, config.max_batch_rows, runner.spec.batchable)
        # Every batch this batcher can form runs inline and none waits to fill: the drain can be
        # a plain callback (see `_drain_inline`). The runner is loaded, its cost model known.
        self._callback_drain = (
            runner.predicted_cost(limit) < self._inline and config.max_queue_delay <= 0
        )
        self.waits = WaitModel(runner.predicted_cost, limit)
        self.admission = Admission(config, self.queue, self.waits, self.stats, self._label(), clock)
        self.admit = self.admission.admit  # see serve/admission.py

    @property
    def queued_rows(self) -> int:
        return self.queue.rows

    async def submit(
        self, inputs: Arrays, rows: int, deadline: float, meta: Any = None, *, alone: bool = False
    ) -> tuple[Arrays, RunInfo]:
        """Queue one request's rows; return exactly its own output rows. `meta` goes to the
        observer with the request's rows. `alone`: the transport hands requests over one at a
        time (see serve/gather.py)."""
        if self._closed:
            raise LockgateError(ErrorKind.UNAVAILABLE, f"model {self._label()} is shutting down")
        gather = False
        if alone and self._task is None:
            gather = self.gatherer.wanted()
            if not gather and self.runner.predicted_cost(rows) < self._inline:
                # No future, no task, no loop turn: the cheapest way through.
                return self._run_now(inputs, rows, deadline, meta)
        q = self.queue
        queued = q.rows_in - q.rows_out
        a = self.admission
        if queued and queued + rows > self.config.max_queue_rows:
            a.shed(f"{queued} rows queued")
        now = self._clock()
        if queued > a.calm_rows or deadline - now < a.far:
            a.check_wait(queued, rows, deadline, now)
        loop = asyncio.get_running_loop()
        pending = Pending(
            inputs, rows, loop.create_future(), time.perf_counter_ns(), now, deadline, meta
        )
        q.items.append(pending)  # q.push, inline: the hot path
        q.rows_in += rows
        self._unanswered[pending] = None
        self._idle.clear()
        if self._task is None:
            # Started on the next loop turn, so requests parsed in this turn join the first batch.
            if gather or not self._callback_drain:
                self._task = loop.create_task(self._drain(gather))
            else:
                self._task = loop.call_soon(self._drain_inline)
        self._deadlines.note(deadline)
        try:
            return await pending.future
        finally:
            del self._unanswered[pending]
            if not self._unanswered:
                self._idle.set()

    def _run_now(
        self, inputs: Arrays, rows: int, deadline: float, meta: Any
    ) -> tuple[Arrays, RunInfo]:
        start = time.perf_counter_ns()
        if deadline <= self._clock():
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

    def _expire_due(self, now: float) -> float:
        """Answer the requests past their deadline at `now`, queued or running (see
        serve/deadline_watch.py); the earliest deadline of the others."""
        now = max(now, self._clock())
        earliest = math.inf
        for p in list(self._unanswered):
            if p.deadline <= now:
                self._expire(p)
            elif p.deadline < earliest and not p.future.done():
                earliest = p.deadline
        return earliest

    def _expire(self, pending: Pending) -> None:
        if not pending.future.done():
            self.stats.expired += 1
            pending.future.set_exception(
                LockgateError(ErrorKind.DEADLINE, f"deadline exceeded waiting for {self._label()}")
            )

    def _drop(self, dropped: Dropped) -> None:
        """Answer the requests the queue dropped without running them."""
        for p, kind in dropped:
            if p.future.done():
                continue
            if kind is ErrorKind.DEADLINE:
                self.stats.expired += 1
                why = f"deadline too close to run {self._label()}"
                p.future.set_exception(LockgateError(kind, why))
            else:
                self.stats.shed += 1
                wait = self.config.max_queue_wait * 1000
                why = f"model {self._label()} is overloaded (queued over {wait:.0f} ms)"
                retry = self.admission.drain_estimate()
                p.future.set_exception(LockgateError(kind, why, retry_after=retry))

    async def _drain(self, gather: bool = False) -> None:
        busy = False  # the first batch after an idle period never waits
        try:
            if gather:
                await self.gatherer.gather(self.queue)
                self.stats.gathers = self.gatherer.gathers
                self.stats.fruitless_gathers = self.gatherer.fruitless
            while self.queue.items:
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

    async def _run_in_slot(self, batch: list[Pending], rows: int) -> None:
        assert self._slots is not None
        try:
            await self._run(batch, rows)
        finally:
            self._slots.release()

    def _drain_inline(self) -> None:
        """`_drain` for models that always run inline, as a plain callback: a Task and its
        coroutines cost more than a tiny model's batch (about 5 us per batch, which a traffic
        split pays twice as often, its batches being half the size)."""
        queue = self.queue
        try:
            while queue.items:
                batch, rows, dropped = queue.take()
                if dropped:
                    self._drop(dropped)
                if batch:
                    self._done(self._compute(batch, rows), inline=True)
        finally:
            self._task = None

    async def _gather_more(self) -> None:
        """Busy-period option: give a short batch up to `max_queue_delay` to fill."""
        head = self.queue.head()
        if head is None:
            return
        limit = head.enqueued_ns + int(self.config.max_queue_delay * 1e9)
        while self.queue.rows < self.config.max_batch_rows:
            remaining = (limit - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.0005))

    def _take(self) -> tuple[list[Pending], int]:
        """The next batch, on the event loop; the requests dropped on the way are answered."""
        batch, rows, dropped = self.queue.take()
        if dropped:
            self._drop(dropped)
        return batch, rows

    async def _run(self, batch: list[Pending], rows: int) -> None:
        if self.runner.predicted_cost(rows) < self._inline:
            self._done(self._compute(batch, rows), inline=True)
            return
        loop = asyncio.get_running_loop()
        outcomes, chained = await loop.run_in_executor(
            self._executor, self._chain, loop, batch, rows
        )
        self._done(outcomes, False, chained)

    def _chain(
        self, loop: asyncio.AbstractEventLoop, batch: list[Pending], rows: int
    ) -> tuple[list[_Outcome], bool]:
        """In the model thread: run the batch, then, while a full batch is already queued, take
        and run it here (the loop gets each finished batch as one callback). Returns the last
        batch's outcomes, and whether this thread took it. Only while a full batch waits: a
        shorter one is left to the loop's drain, which lets it grow meanwhile (and honours
        `max_queue_delay`)."""
        outcomes, chained = self._compute(batch, rows, True), False
        while self._slots is None and self.queue.rows >= self.queue.limit:
            batch, rows, dropped = self.queue.take()
            if dropped:
                loop.call_soon_threadsafe(self._drop, dropped)
            if not batch:
                break
            loop.call_soon_threadsafe(self._done, outcomes, False, chained)
            outcomes, chained = self._compute(batch, rows, True), True
        return outcomes, chained

    def _compute(self, batch: list[Pending], rows: int, derive: bool = False) -> list[_Outcome]:
        """Run one batch in any thread; touches no state but the runner's. `derive`: in the
        model thread, let the observer derive its columns there too (see `_derive`; on the loop
        `record` does). If it fails with several requests, each runs alone: one bad request
        must not fail its neighbours."""
        feeds = batch[0].inputs
        start = time.perf_counter_ns()
        try:
            if len(batch) > 1:
                feeds = _concat([p.inputs for p in batch])
            outputs = self.runner.run(feeds)
        except Exception as exc:
            if len(batch) > 1:
                return [o for p in batch for o in self._compute([p], p.rows, derive)]
            if not isinstance(exc, LockgateError):
                exc = LockgateError(ErrorKind.MODEL_FAILED, f"{self._label()}: {exc}")
            return [(batch, feeds, exc, rows, start, 0, None)]
        compute_ns = time.perf_counter_ns() - start
        derived = self._derive(feeds, batch) if derive else None
        return [(batch, feeds, outputs, rows, start, compute_ns, derived)]

    def _derive(self, feeds: Arrays, batch: list[Pending]) -> Derived | Exception | None:
        """The observer's columns of a run, in the thread that ran it: summarising an image
        costs more than the event loop, the gateway's bottleneck, can spare per request (its kernel
        releases the GIL meanwhile). An exception is handed to the loop, which counts it."""
        if self.observer is None:
            return None
        try:
            return self.observer.derive(feeds, [p.rows for p in batch])
        except Exception as exc:  # counted in `_observe`, on the loop
            return exc

    def _done(self, outcomes: list[_Outcome], inline: bool = False, chained: bool = False) -> None:
        """On the event loop: answer the requests of finished runs."""
        for batch, feeds, result, rows, start, compute_ns, derived in outcomes:
            if isinstance(result, LockgateError):
                self.stats.failed += 1
                _fail(batch, result)
                continue
            self.stats.inline_batches += inline
            self.stats.chained_batches += chained
            self._finish(batch, feeds, result, rows, start, compute_ns, derived)

    def _finish(
        self,
        batch: list[Pending],
        feeds: Arrays,
        outputs: Arrays,
        rows: int,
        start: int,
        compute_ns: int,
        derived: Derived | Exception | None,
    ) -> None:
        self._count(len(batch), rows, compute_ns, start)
        if self.observer is not None:
            metas, sizes = [p.meta for p in batch], [p.rows for p in batch]
            enqueued = [p.enqueued_ns for p in batch]
            self._observe(feeds, outputs, metas, sizes, enqueued, start, derived)
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
        derived: Derived | Exception | None = None,
    ) -> None:
        """`derived`: from the model thread; None: `record` derives on the loop (inline)."""
        assert self.observer is not None
        try:
            if isinstance(derived, Exception):
                raise derived  # deriving failed in the model thread: one error for the run
            self.observer.record(feeds, outputs, metas, rows, enqueued_ns, start, derived)
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
        self.admission.adapt(rows, compute_ns)

    def _label(self) -> str:
        return f"{self.runner.spec.name} v{self.runner.spec.version}"

    async def close(self, timeout: float) -> bool:
        """Refuse new work and wait for queued and running requests; True if all finished."""
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        self._deadlines.cancel()
        return True


def _concat(parts: list[Arrays]) -> Arrays:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _fail(batch: list[Pending], exc: LockgateError) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
