"""What a batcher reports: its plain counters, and the observer that sees every model run (the
monitor's ring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from lockgate.serve.runner import Array, Arrays

# Per-row columns an observer derives from a run's inputs, in its own order (None: a tensor it
# could not derive for this run). Made in the model thread, handed to `record` on the loop.
Derived = list["Array | None"]


class BatchObserver(Protocol):
    """Sees every successful model run (the monitor's ring). `derive` runs in the model thread
    right after the run (wide inputs' summaries: the costly part, kept off the event loop);
    `record`, on the event loop, must be quick. The batcher counts either's exceptions in
    `observer_errors`; a request never fails for them."""

    def derive(self, feeds: Arrays, rows: list[int]) -> Derived: ...

    def record(
        self,
        feeds: Arrays,
        outputs: Arrays,
        metas: list[Any],
        rows: list[int],
        enqueued_ns: list[int],
        started_ns: int,
        derived: Derived | None = None,
    ) -> None:
        """`derived`: what `derive` gave for this run; None where it was not called (runs on
        the event loop), and the observer derives itself."""
        ...


@dataclass(slots=True)
class BatchStats:
    """Plain counters read by tests, metrics and benchmarks (no locks: one event loop)."""

    requests: int = 0
    batches: int = 0
    rows: int = 0
    multi_request_batches: int = 0
    inline_batches: int = 0
    chained_batches: int = 0  # taken and run by the model thread itself (see serve/batch.py)
    gathers: int = 0  # waits for batch-mates (one-at-a-time transports)
    fruitless_gathers: int = 0  # ... that gathered no batch-mate
    shed: int = 0  # OVERLOADED: refused at admission, or waited too long in the queue
    expired: int = 0  # DEADLINE: passed, or could not be met, before the model ran it
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
