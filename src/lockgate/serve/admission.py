"""Admission to a version's batcher: a request is refused before it is queued (and, through
`admit`, before its body is even read) when the queue holds `max_queue_rows` rows, when its
expected wait exceeds `max_queue_wait`, or when it could not finish before its deadline (expected
wait + its own compute, from the runner's cost model scaled by what batches have really been
taking: `adapt`). A refusal must cost far less than a request, or overload turns into collapse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from lockgate.config import BatchConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.batch_stats import BatchStats
from lockgate.serve.queue import SLOWDOWN_WEIGHT, RequestQueue, WaitModel


class Admission:
    """The admission checks of one batcher, over its queue, wait model and counters."""

    def __init__(
        self,
        config: BatchConfig,
        queue: RequestQueue,
        waits: WaitModel,
        stats: BatchStats,
        label: str,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.queue = queue
        self.waits = waits
        self.stats = stats
        self.label = label  # "name vN", for messages
        self._clock = clock
        self.bounds()

    def admit(self, deadline: float | None = None) -> None:
        """Refuse before the request is even read when it would be refused once queued. Its rows
        are not known yet: it is judged as one row."""
        queued = self.queue.rows_in - self.queue.rows_out
        if queued >= self.config.max_queue_rows:
            self.shed(f"{queued} rows queued")
        if deadline is None:
            if queued > self.calm_rows:
                self.check_wait(queued, 1, float("inf"))
        elif queued > self.calm_rows or deadline - self._clock() < self.far:
            self.check_wait(queued, 1, deadline)

    def check_wait(self, queued: int, rows: int, deadline: float, now: float | None = None) -> None:
        """Refuse a request expected to wait longer than `max_queue_wait` (OVERLOADED), or to
        finish after its deadline (DEADLINE). Newest-first queues serve it next."""
        w, q = self.waits, self.queue
        wait = (min(queued, q.limit) if q.standing else queued) * w.per_queued_row * w.slowdown
        if wait > q.max_wait > 0:
            self.shed(f"expected wait {wait * 1000:.0f} ms")
        own = (w.fixed + w.per_row * rows) * w.slowdown
        if deadline - (self._clock() if now is None else now) < wait + own:
            self.stats.expired += 1
            raise LockgateError(
                ErrorKind.DEADLINE,
                f"deadline too close for {self.label}: it would wait about "
                f"{wait * 1000:.1f} ms and run {own * 1000:.1f} ms",
            )

    def shed(self, why: str) -> NoReturn:
        self.stats.shed += 1
        raise LockgateError(
            ErrorKind.OVERLOADED,
            f"model {self.label} is overloaded ({why})",
            retry_after=self.drain_estimate(),
        )

    def adapt(self, rows: int, compute_ns: int) -> None:
        """After a run: the slowdown follows what batches take (serve/queue.py)."""
        w = self.waits
        predicted = w.fixed + w.per_row * rows
        if predicted > 0:
            ratio = compute_ns / 1e9 / predicted
            ratio = 0.5 if ratio < 0.5 else 1000.0 if ratio > 1000.0 else ratio
            w.slowdown += SLOWDOWN_WEIGHT * (ratio - w.slowdown)
            if abs(w.slowdown - self._bounds_at) > 0.1 * self._bounds_at:
                self.bounds()

    def bounds(self) -> None:
        """Within these, admission has nothing to check (two comparisons per request): the
        queued rows whose expected wait stays under `max_queue_wait`, and a time beyond the
        longest any admitted request can expect to wait and run."""
        w, most = self.waits, self.config.max_queue_rows
        per_row = w.per_queued_row * w.slowdown
        max_wait = self.config.max_queue_wait
        self._bounds_at = w.slowdown
        self.calm_rows = max_wait / per_row if max_wait > 0 and per_row > 0 else float("inf")
        self.far = (most * (w.per_queued_row + w.per_row) + w.fixed) * w.slowdown

    def drain_estimate(self) -> float:
        """Seconds until the queue has drained: the Retry-After of a shed request."""
        return self.waits.queue(self.queue.rows + self.queue.limit)
