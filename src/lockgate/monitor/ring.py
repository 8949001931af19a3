"""The hand-over between the request path and the monitor's drain, per model version.

Each finished batch is copied, on the request path, into preallocated columns: one slice
assignment per monitored tensor, and C-level appends of the requests' ids, routes and timings.
A summarised input (:mod:`lockgate.monitor.derived`) is derived on the batch right here, a
few vectorised calls whatever its rows: keeping wide batches (images) alive for the drain would
hold hundreds of megabytes between drains, for no measured gain on a busy host.
Nothing of the request is kept (its arrays, dicts and records die with it, on the event loop
that made them, while they are still in cache): keeping them for the drain cost several percent
of throughput. There are two sets of columns: the request path fills one while the drain reads
the other, and the drain's `swap` (O(1), on the event loop) exchanges them. A set holds
`capacity` rows; batches that do not fit before the drain comes are dropped and counted, never
silently lost.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.monitor.derived import Summary

ID_BYTES = 32  # request ids are stored as their first 32 bytes, or a digest when longer

Array = np.ndarray[Any, Any]
Arrays = dict[str, Array]


def id_key(request_id: str) -> bytes:
    """The stored form of a request id; feedback looks ids up through the same function."""
    raw = request_id.encode()
    if len(raw) <= ID_BYTES:
        return raw
    return hashlib.blake2b(raw, digest_size=ID_BYTES // 2).hexdigest().encode()


# What the pipeline attaches to a queued request for the monitor: (request id, code of
# (endpoint, variant) in the ring's route table, time.perf_counter_ns() at arrival, code of the
# client (its API key's name) in the ring's client table). A plain tuple: one is made per
# request, and the ring transposes a batch's at once.
RequestMeta = tuple[str, int, int, int]


def id_keys(request_ids: Sequence[str]) -> Array:
    """`id_key` of many ids as an S32 array, without a Python loop for the usual kinds (the
    drain holds the GIL meanwhile): ids of one length, such as generated ones, go through one
    joined string; other short ASCII ids through numpy's own conversion."""
    if not request_ids:
        return np.zeros(0, f"S{ID_BYTES}")
    joined = "".join(request_ids)
    if joined.isascii():
        lengths = set(map(len, request_ids))
        width = max(lengths)
        if len(lengths) == 1 and 0 < width <= ID_BYTES:
            return np.frombuffer(joined.encode(), f"S{width}").astype(f"S{ID_BYTES}")
        if width <= ID_BYTES:
            return np.array(request_ids, dtype=f"S{ID_BYTES}")
    return np.array([id_key(i) for i in request_ids], dtype=f"S{ID_BYTES}")


@dataclass(frozen=True, slots=True)
class RingSlice:
    """Rows assembled by the drain; `dropped` rows were discarded before it could take them."""

    ts: Array  # float64 unix seconds
    request_id: Array  # S32
    route: Array  # int16 code of (endpoint, variant), see PredictionRing.routes
    client: Array  # int16 code of the client, see PredictionRing.clients
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
        """The last `limit` rows, copied (a slice's columns are views of ring memory that is
        written again after the next swap)."""
        start = max(0, self.rows - limit)
        columns = {name: getattr(self, name)[start:].copy() for name in _COLUMNS}
        return RingSlice(**columns, dropped=0)


_COLUMNS = ("ts", "request_id", "route", "client", "inputs", "outputs", "latency", "queue", "first")


def concat_slices(*pieces: RingSlice) -> RingSlice:
    columns = {n: np.concatenate([getattr(p, n) for p in pieces]) for n in _COLUMNS}
    return RingSlice(**columns, dropped=sum(p.dropped for p in pieces))


Slots = list[tuple[str, int, int]]  # (tensor name, first column, end column)
Summaries = Sequence[tuple[Summary, int, int]]  # (how a tensor is summarised, its columns)


class Columns:
    """One set of ring columns: per-row matrices preallocated, per-request and per-batch
    values in growable C arrays (appending to them is one C call per batch)."""

    def __init__(self, capacity: int, widths: tuple[int, int]) -> None:
        self.inputs = np.empty((capacity, widths[0]), np.float32)
        self.outputs = np.empty((capacity, widths[1]), np.float32)
        self.clear()

    def clear(self) -> None:
        self.rows = 0
        self.ids: list[str] = []  # per request
        self.routes = array("q")
        self.clients = array("q")
        self.received_ns = array("q")
        self.enqueued_ns = array("q")
        self.request_rows = array("q")
        self.started_ns = array("q")  # per batch
        self.done_ns = array("q")
        self.ts = array("d")
        self.batch_requests = array("q")


class PredictionRing:
    """Rows recorded since the drain last took them, at most `capacity` per set of columns."""

    def __init__(
        self, capacity: int, inputs: Slots, outputs: Slots, summaries: Summaries = ()
    ) -> None:
        self.capacity = capacity
        self.input_slots, self.output_slots = inputs, outputs
        self.summaries = tuple(summaries)  # inputs summarised into derived input columns
        widths = [hi for _, _, hi in summaries]
        self.widths = (max(_width(inputs), *widths, 0), _width(outputs))
        self.written = 0  # rows ever recorded
        self.dropped = 0  # rows ever dropped before the drain took them
        self.mismatched = 0  # rows recorded as NaN for a tensor of an unexpected size
        self.routes: list[tuple[str, str]] = []
        self._route_codes: dict[tuple[str, str], int] = {}
        self.clients: list[str] = [""]  # code 0: no API keys configured
        self._client_codes: dict[str, int] = {"": 0}
        self._filling = Columns(capacity, self.widths)
        self._spare: Columns | None = None
        self._dropped_since_take = 0

    def route_code(self, endpoint: str, variant: str) -> int:
        key = (endpoint, variant)
        code = self._route_codes.get(key)
        if code is None:
            code = self._route_codes[key] = len(self.routes)
            self.routes.append(key)
        return code

    def client_code(self, client: str) -> int:
        code = self._client_codes.get(client)
        if code is None:
            code = self._client_codes[client] = len(self.clients)
            self.clients.append(client)
        return code

    def append(
        self,
        feeds: Arrays,
        outputs: Arrays,
        metas: list[RequestMeta],
        rows: list[int],
        enqueued_ns: list[int],
        times: tuple[int, int, float],
    ) -> None:
        """Copy one model run in (on the request path): `times` is (started_ns, done_ns,
        unix seconds). A run that does not fit is dropped whole and counted. A monitored tensor
        whose values do not fill its columns for this run's rows (a shape the load-time run did
        not show) is recorded as NaN and counted in `mismatched`; a malformed call raises."""
        total = sum(rows)
        self.written += total
        cols = self._filling
        start, stop = cols.rows, cols.rows + total
        if stop > self.capacity:
            self._drop(total)
            return
        try:
            ids, routes, received, clients = zip(*metas, strict=True)
            for matrix, slots, arrays in (
                (cols.inputs, self.input_slots, feeds),
                (cols.outputs, self.output_slots, outputs),
            ):
                for name, lo, hi in slots:
                    values = arrays[name]
                    if values.size == total * (hi - lo):
                        matrix[start:stop, lo:hi] = values.reshape(total, hi - lo)
                    else:
                        matrix[start:stop, lo:hi] = np.nan
                        self.mismatched += total
            for summary, lo, hi in self.summaries:
                values = feeds[summary.tensor]
                if values.size == total * summary.width:
                    cols.inputs[start:stop, lo:hi] = summary.columns(values, total)
                else:
                    cols.inputs[start:stop, lo:hi] = np.nan
                    self.mismatched += total
        except Exception:
            self._drop(total)
            raise
        cols.ids += ids
        cols.routes.extend(routes)
        cols.clients.extend(clients)
        cols.received_ns.extend(received)
        cols.enqueued_ns.extend(enqueued_ns)
        cols.request_rows.extend(rows)
        cols.started_ns.append(times[0])
        cols.done_ns.append(times[1])
        cols.ts.append(times[2])
        cols.batch_requests.append(len(metas))
        cols.rows = stop

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        self._dropped_since_take += rows

    def swap(self) -> tuple[Columns, int]:
        """Hand the filled columns to the drain and start filling the spare set (O(1), on the
        event loop). Give them back with `release` once they are read."""
        taken, dropped = self._filling, self._dropped_since_take
        spare, self._spare = self._spare, None
        self._filling = spare if spare is not None else Columns(self.capacity, self.widths)
        self._dropped_since_take = 0
        return taken, dropped

    def release(self, taken: Columns) -> None:
        """Columns the drain has finished with become the spare set (call on the event loop)."""
        taken.clear()
        self._spare = taken

    def assemble(self, cols: Columns, dropped: int) -> RingSlice:
        """Per-row columns of one taken set: a handful of vectorised calls, whatever its size.
        The matrices are views of the set's memory (valid until it is released)."""
        counts = np.array(cols.request_rows, np.int64)
        requests = np.array(cols.batch_requests, np.int64)
        started = np.repeat(np.array(cols.started_ns, np.int64), requests)
        done = np.repeat(np.array(cols.done_ns, np.int64), requests)
        received = np.array(cols.received_ns, np.int64)
        enqueued = np.array(cols.enqueued_ns, np.int64)
        first = np.ones(len(cols.ids), np.bool_)
        per_row = _Repeat(counts)
        if per_row.needed:
            first = np.zeros(per_row.rows, np.bool_)
            first[np.cumsum(counts) - counts] = True
        return RingSlice(
            ts=per_row(np.repeat(np.array(cols.ts, np.float64), requests)),
            request_id=per_row(id_keys(cols.ids)),
            route=per_row(np.array(cols.routes, np.int16)),
            client=per_row(np.array(cols.clients, np.int16)),
            inputs=cols.inputs[: cols.rows],
            outputs=cols.outputs[: cols.rows],
            latency=per_row(((done - received) / 1e9).astype(np.float32)),
            queue=per_row(((started - enqueued) / 1e9).astype(np.float32)),
            first=first,
            dropped=dropped,
        )


def _width(slots: Slots) -> int:
    return slots[-1][2] if slots else 0


class _Repeat:
    """Spreads per-request values over their rows; a no-op when every request is one row."""

    def __init__(self, counts: Array) -> None:
        self.rows = int(counts.sum())
        self.counts = counts
        self.needed = self.rows != counts.shape[0]

    def __call__(self, values: Array) -> Array:
        return np.repeat(values, self.counts) if self.needed else values
