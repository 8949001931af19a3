"""Preallocated per-version ring buffers of predictions.

The request path appends a whole batch with one vectorised copy per column and never blocks or
allocates; the drain copies out everything new since its last read. Both run on the event loop
thread, so no lock is needed. When the writer laps the reader the overwritten rows are counted
as dropped, never silently lost.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class RingSlice:
    """Rows copied out of a ring; `dropped` rows were overwritten before the drain saw them."""

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


class PredictionRing:
    def __init__(self, capacity: int, n_inputs: int, n_outputs: int) -> None:
        self.capacity = capacity
        self.ts = np.zeros(capacity, np.float64)
        self.request_id = np.zeros(capacity, f"S{ID_BYTES}")
        self.route = np.zeros(capacity, np.int16)
        self.inputs = np.zeros((capacity, n_inputs), np.float32)
        self.outputs = np.zeros((capacity, n_outputs), np.float32)
        self.latency = np.zeros(capacity, np.float32)
        self.queue = np.zeros(capacity, np.float32)
        self.first = np.zeros(capacity, np.bool_)
        self.written = 0  # rows ever appended; the next row goes to written % capacity
        self.read_upto = 0  # rows ever handed to the drain (or dropped)
        self.dropped = 0
        self.routes: list[tuple[str, str]] = []
        self._route_codes: dict[tuple[str, str], int] = {}

    @property
    def nbytes(self) -> int:
        columns = (self.ts, self.request_id, self.route, self.inputs, self.outputs)
        return sum(a.nbytes for a in (*columns, self.latency, self.queue, self.first))

    def route_code(self, endpoint: str, variant: str) -> int:
        key = (endpoint, variant)
        code = self._route_codes.get(key)
        if code is None:
            code = self._route_codes[key] = len(self.routes)
            self.routes.append(key)
        return code

    def append(
        self,
        *,
        ts: Array | float,
        request_id: Array,
        route: Array | int,
        inputs: Array,
        outputs: Array,
        latency: Array | float,
        queue: Array | float,
        first: Array | bool,
    ) -> None:
        """Append `len(request_id)` rows; scalars broadcast. Rows beyond the capacity in one
        call keep only the newest `capacity` rows (the rest count as dropped)."""
        rows = int(request_id.shape[0])
        skip = max(0, rows - self.capacity)
        start = (self.written + skip) % self.capacity
        head = min(rows - skip, self.capacity - start)
        columns: tuple[tuple[Array, Array | float | int | bool], ...] = (
            (self.ts, ts),
            (self.request_id, request_id),
            (self.route, route),
            (self.inputs, inputs),
            (self.outputs, outputs),
            (self.latency, latency),
            (self.queue, queue),
            (self.first, first),
        )
        for column, given in columns:
            if column.ndim == 2 and column.shape[1] == 0:
                continue  # a version with nothing to monitor on this side
            values = np.asarray(given)
            if values.ndim == 0:
                column[start : start + head] = values
                column[: rows - skip - head] = values
                continue
            column[start : start + head] = values[skip : skip + head]
            column[: rows - skip - head] = values[skip + head :]
        self.written += rows

    def peek(self, limit: int) -> RingSlice:
        """A copy of the newest `limit` rows, leaving the drain's position alone."""
        rows = min(limit, self.written, self.capacity)
        index = (np.arange(self.written - rows, self.written)) % self.capacity
        return RingSlice(
            ts=self.ts[index],
            request_id=self.request_id[index],
            route=self.route[index],
            inputs=self.inputs[index],
            outputs=self.outputs[index],
            latency=self.latency[index],
            queue=self.queue[index],
            first=self.first[index],
            dropped=0,
        )

    def take(self) -> RingSlice:
        """Copy out every row appended since the last take (the newest `capacity` at most)."""
        lost = max(0, self.written - self.read_upto - self.capacity)
        begin = self.read_upto + lost
        rows = self.written - begin
        self.dropped += lost
        self.read_upto = self.written
        start = begin % self.capacity
        head = min(rows, self.capacity - start)

        def copy(column: Array) -> Array:
            if head == rows:
                return column[start : start + rows].copy()
            return np.concatenate([column[start:], column[: rows - head]])

        return RingSlice(
            ts=copy(self.ts),
            request_id=copy(self.request_id),
            route=copy(self.route),
            inputs=copy(self.inputs),
            outputs=copy(self.outputs),
            latency=copy(self.latency),
            queue=copy(self.queue),
            first=copy(self.first),
            dropped=lost,
        )
