"""The hand-over between the request path and the monitor's drain, per model version.

The request path appends a reference to each finished batch (its feeds and outputs arrays, the
requests' ids, routes and timings): O(1), no numpy call, no copy. The drain swaps the whole
backlog out every drain interval (500 ms by default) and assembles it into columns with one
vectorised call per column for the entire interval, on its own thread. The backlog is bounded
in rows: when the drain falls behind, the oldest batches are dropped and counted, never
silently lost.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

ID_BYTES = 32  # request ids are stored as their first 32 bytes, or a digest when longer

Array = np.ndarray[Any, Any]


def id_key(request_id: str) -> bytes:
    """The stored form of a request id; feedback looks ids up through the same function."""
    raw = request_id.encode()
    if len(raw) <= ID_BYTES:
        return raw
    return hashlib.blake2b(raw, digest_size=ID_BYTES // 2).hexdigest().encode()


# What the pipeline attaches to a queued request for the monitor: (request id, code of
# (endpoint, variant) in the ring's route table, time.perf_counter_ns() at arrival). A plain
# tuple: one is made per request, and the drain transposes thousands at once.
RequestMeta = tuple[str, int, int]


def id_keys(request_ids: Sequence[str]) -> Array:
    """`id_key` of many ids as an S32 array, without a Python loop for the usual kinds (the
    drain holds the GIL meanwhile): ids of one length, such as generated ones, go through one
    joined string; other short ASCII ids through numpy's own conversion."""
    if not request_ids:
        return np.zeros(0, f"S{ID_BYTES}")
    joined = "".join(request_ids)
    width = len(request_ids[0])
    if joined.isascii():
        if 0 < width <= ID_BYTES and len(joined) == width * len(request_ids):
            return np.frombuffer(joined.encode(), f"S{width}").astype(f"S{ID_BYTES}")
        if max(map(len, request_ids)) <= ID_BYTES:
            return np.array(request_ids, dtype=f"S{ID_BYTES}")
    return np.array([id_key(i) for i in request_ids], dtype=f"S{ID_BYTES}")


@dataclass(slots=True)
class Batch:
    """One model run as the request path saw it: references only."""

    feeds: dict[str, Array]
    outputs: dict[str, Array]
    metas: list[RequestMeta]
    rows: list[int]  # per request
    enqueued_ns: list[int]  # per request
    started_ns: int
    done_ns: int
    ts: float  # unix seconds
    total: int


@dataclass(frozen=True, slots=True)
class RingSlice:
    """Rows assembled by the drain; `dropped` rows were discarded before it could take them."""

    ts: Array  # float64 unix seconds
    request_id: Array  # S32
    route: Array  # int16 code of (endpoint, variant), see PredictionRing.routes
    inputs: Array  # float32 [rows, input features]
    outputs: Array  # float32 [rows, output features]
    latency: Array  # float32 seconds, arrival -> answer (the request's, on each of its rows)
    queue: Array  # float32 seconds waiting for the model
    first: Array  # bool: the first row of its request (count requests, not rows)
    dropped: int

    @property
    def rows(self) -> int:
        return int(self.ts.shape[0])

    def tail(self, limit: int) -> RingSlice:
        start = max(0, self.rows - limit)
        columns = {name: getattr(self, name)[start:] for name in _COLUMNS}
        return RingSlice(**columns, dropped=0)


_COLUMNS = ("ts", "request_id", "route", "inputs", "outputs", "latency", "queue", "first")


def concat_slices(*pieces: RingSlice) -> RingSlice:
    columns = {n: np.concatenate([getattr(p, n) for p in pieces]) for n in _COLUMNS}
    return RingSlice(**columns, dropped=sum(p.dropped for p in pieces))


class PredictionRing:
    """Batches recorded since the drain last took them, at most `capacity` rows."""

    def __init__(
        self,
        capacity: int,
        input_tensors: list[str],
        output_tensors: list[str],
        widths: tuple[int, int],
    ) -> None:
        self.capacity = capacity
        self.input_tensors = input_tensors
        self.output_tensors = output_tensors
        self.widths = widths  # monitored input and output features
        self.written = 0  # rows ever recorded
        self.dropped = 0  # rows ever dropped before the drain took them
        self.routes: list[tuple[str, str]] = []
        self._route_codes: dict[tuple[str, str], int] = {}
        self._batches: deque[Batch] = deque()
        self._rows = 0
        self._dropped_since_take = 0

    def route_code(self, endpoint: str, variant: str) -> int:
        key = (endpoint, variant)
        code = self._route_codes.get(key)
        if code is None:
            code = self._route_codes[key] = len(self.routes)
            self.routes.append(key)
        return code

    def append(self, batch: Batch) -> None:
        """O(1) on the request path; drops (and counts) the oldest batches past capacity."""
        self._batches.append(batch)
        self._rows += batch.total
        self.written += batch.total
        while self._rows > self.capacity:
            old = self._batches.popleft()
            self._rows -= old.total
            self._dropped_since_take += old.total
            self.dropped += old.total

    def swap(self) -> tuple[list[Batch], int]:
        """Hand the backlog to the drain (O(1), on the event loop)."""
        batches, dropped = list(self._batches), self._dropped_since_take
        self._batches, self._rows, self._dropped_since_take = deque(), 0, 0
        return batches, dropped

    def assemble(self, batches: list[Batch], dropped: int) -> RingSlice:
        """Columns for a whole backlog: a handful of vectorised calls, whatever its size."""
        metas = list(chain.from_iterable(b.metas for b in batches))
        ids, routes, received_ns = zip(*metas, strict=True) if metas else ((), (), ())
        counts = np.fromiter(chain.from_iterable(b.rows for b in batches), np.int64, len(metas))
        enqueued = np.fromiter(
            chain.from_iterable(b.enqueued_ns for b in batches), np.int64, len(metas)
        )
        requests = [len(b.metas) for b in batches]
        started = np.repeat(np.fromiter((b.started_ns for b in batches), np.int64), requests)
        done = np.repeat(np.fromiter((b.done_ns for b in batches), np.int64), requests)
        received = np.array(received_ns, dtype=np.int64)
        first = np.ones(len(metas), np.bool_)
        per_row = _Repeat(counts)
        if per_row.needed:
            first = np.zeros(per_row.rows, np.bool_)
            first[np.cumsum(counts) - counts] = True
        return RingSlice(
            ts=per_row(np.repeat(np.fromiter((b.ts for b in batches), np.float64), requests)),
            request_id=per_row(id_keys(ids)),
            route=per_row(np.array(routes, dtype=np.int16)),
            inputs=_matrix([b.feeds for b in batches], self.input_tensors, self.widths[0]),
            outputs=_matrix([b.outputs for b in batches], self.output_tensors, self.widths[1]),
            latency=per_row(((done - received) / 1e9).astype(np.float32)),
            queue=per_row(((started - enqueued) / 1e9).astype(np.float32)),
            first=first,
            dropped=dropped,
        )


class _Repeat:
    """Spreads per-request values over their rows; a no-op when every request is one row."""

    def __init__(self, counts: Array) -> None:
        self.rows = int(counts.sum())
        self.counts = counts
        self.needed = self.rows != counts.shape[0]

    def __call__(self, values: Array) -> Array:
        return np.repeat(values, self.counts) if self.needed else values


def _matrix(arrays: list[dict[str, Array]], names: list[str], width: int) -> Array:
    """[rows, width] float32 from the named tensors of every batch, each flattened per row."""
    if not arrays:
        return np.zeros((0, width), np.float32)
    parts = [np.concatenate([a[n].reshape(a[n].shape[0], -1) for a in arrays]) for n in names]
    if not parts:
        rows = sum(next(iter(a.values())).shape[0] for a in arrays)
        return np.zeros((rows, 0), np.float32)
    matrix = parts[0] if len(parts) == 1 else np.hstack(parts)
    return np.ascontiguousarray(matrix, dtype=np.float32)
