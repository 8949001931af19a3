"""The queue of one model version's batcher, its discipline under overload, and the waits it
is expected to impose.

Oldest first, as long as the queue drains: then every request waits about as long as the queue
is deep, which the row bound and admission (serve/admission.py) keep short. When it does not drain
(its oldest request has waited more than half of `max_queue_wait`), the queue is *standing* and
is served newest first (adaptive LIFO): under a sustained overload a FIFO queue makes every
request wait the whole queue, so that, once that wait passes the clients' patience or deadlines,
every answer comes too late; served newest first, most requests are answered at once and only
the oldest wait. Whatever the order, a request never reaches the model once it has waited more
than `max_queue_wait` (shed: OVERLOADED) or could no longer finish before its deadline (DEADLINE):
the model's time goes to answers that can still be used.

Expected waits (for admission and Retry-After) come from the runner's cost model, the fastest
of its warm-up runs, scaled by a slowdown: what recent batches really took over what the model
predicted (other threads, the GIL, other processes). The cost model itself never changes, since
it decides what runs inline (serve/runner.py).

Threads: the event loop appends; one consumer at a time takes (the loop's drain, or the model
thread while it chains batches under load), so each row counter has a single writer and the
deque's appends and pops are atomic: no lock.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.errors import ErrorKind

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(slots=True)
class RunInfo:
    """How a request was served: what the monitor and the response headers may report."""

    queue_ns: int
    compute_ns: int
    batch_rows: int
    batch_requests: int


@dataclass(slots=True, eq=False)  # identity: the batcher keeps its unanswered ones in a dict
class Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[tuple[Arrays, RunInfo]]
    enqueued_ns: int  # perf_counter_ns: the queue time reported
    queued_at: float  # the queue's clock: the wait judged against `max_queue_wait`
    deadline: float  # on the queue's clock
    meta: Any = None  # opaque to the batcher; handed to the observer


Dropped = list[tuple[Pending, ErrorKind]]
SLOWDOWN_WEIGHT = 0.2  # how fast the slowdown follows what batches take


class WaitModel:
    """Seconds a version's batches are expected to take (see the module docstring). The
    batcher updates `slowdown` after every run."""

    def __init__(self, cost: Callable[[int], float], limit: int) -> None:
        """`cost(rows)`: the runner's predicted cost of a run (fixed + per row)."""
        self.fixed = cost(0)
        self.per_row = cost(1) - self.fixed
        self.per_queued_row = cost(limit) / limit  # queued rows run in full batches
        self.slowdown = 1.0

    def queue(self, rows: int) -> float:
        """To run `rows` queued rows."""
        return rows * self.per_queued_row * self.slowdown


class RequestQueue:
    def __init__(
        self,
        limit: int,
        max_wait: float,
        clock: Callable[[], float],
        least_cost: Callable[[int], float],
        ragged: tuple[str, ...] = (),
    ) -> None:
        self.limit = limit  # rows per batch (1 for a model that cannot batch)
        # inputs whose inner dimensions vary (images of any size): requests share a batch only
        # when these have the same shapes, since batches concatenate on the first axis
        self.ragged = ragged
        self.max_wait = max_wait  # seconds; 0 = no bound and never standing
        self.clock = clock
        self.least_cost = least_cost  # (rows) -> the least time a run of that many rows takes
        self._full_cost = least_cost(limit)
        self.standing = False  # as of the last take
        self.items: collections.deque[Pending] = collections.deque()  # append through `push`
        self.rows_in = 0  # written by the event loop only (`push`, or the batcher inline)
        self.rows_out = 0  # written by the consumer only

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rows(self) -> int:
        """Rows queued, including requests answered (expired, cancelled) but not yet removed."""
        return self.rows_in - self.rows_out

    def head(self) -> Pending | None:
        return self.items[0] if self.items else None

    def push(self, pending: Pending) -> None:
        self.items.append(pending)
        self.rows_in += pending.rows

    def take(self) -> tuple[list[Pending], int, Dropped]:
        """The next batch and its rows, plus the requests dropped on the way with the kind of
        their answer."""
        now = self.clock()
        dropped: Dropped = []
        items = self.items
        if self.max_wait > 0 and items:
            if now - items[0].queued_at > self.max_wait:
                self._drop_stale(now - self.max_wait, dropped)
            self.standing = bool(items) and now - items[0].queued_at > self.max_wait / 2
        else:
            self.standing = False
        if self.standing:
            pop, put_back = items.pop, items.append
        else:
            pop, put_back = items.popleft, items.appendleft
        horizon = now + self._full_cost  # no deadline beyond it needs a closer look
        batch: list[Pending] = []
        rows = 0
        while items and rows < self.limit:
            p = pop()
            if p.future.done():  # expired or cancelled while queued
                self.rows_out += p.rows
                continue
            if batch and (
                rows + p.rows > self.limit
                or (self.ragged and not _same_shapes(batch[0].inputs, p.inputs, self.ragged))
            ):
                put_back(p)
                break
            self.rows_out += p.rows
            if p.deadline < horizon and p.deadline < now + self.least_cost(rows + p.rows):
                dropped.append((p, ErrorKind.DEADLINE))
                continue
            batch.append(p)
            rows += p.rows
        return batch, rows, dropped

    def _drop_stale(self, oldest: float, dropped: Dropped) -> None:
        """Remove, from the head, the requests queued before `oldest`."""
        items = self.items
        while items and items[0].queued_at < oldest:
            p = items.popleft()
            self.rows_out += p.rows
            if not p.future.done():
                dropped.append((p, ErrorKind.OVERLOADED))


def _same_shapes(a: Arrays, b: Arrays, names: tuple[str, ...]) -> bool:
    """Requests concatenate on axis 0 only when their other dimensions agree."""
    return all(a[n].shape[1:] == b[n].shape[1:] for n in names)
