"""The hand-over between the request path and the monitor's drain, per model version.

Each finished batch is copied, on the request path, into preallocated columns: one slice
assignment per monitored tensor, and C-level appends of the requests' ids, routes and timings.
A summarised input (:mod:`lockgate.monitor.derived`) is derived from the batch by `derive`, a
few vectorised calls whatever its rows, in the model thread that ran it (the batcher calls it
there, see serve/batch.py); `append` copies those columns in. Only a run on the event loop
anyway (an inline one) is derived by `append` itself. Keeping wide batches (images) alive for
the drain would hold hundreds of megabytes between drains, for no measured gain on a busy host.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.monitor.derived import Summary
from lockgate.monitor.kernels.timing import request_rows
from lockgate.monitor.shm import SharedHandle, shared_matrices

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
    values in growable C arrays (appending to them is one C call per batch). `targets`: where
    each monitored tensor goes, as (from the outputs?, tensor, view of its columns, values per
    row); a view of one column is 1-D and a view of whole rows is the matrix itself, the
    cheapest slices to assign to."""

    def __init__(
        self,
        capacity: int,
        widths: tuple[int, int],
        slots: tuple[Slots, Slots],
        shared: bool = False,
    ) -> None:
        """`shared`: the matrices live in a memory file the monitor process maps (`handle`)."""
        self.handle: SharedHandle | None = None
        if shared:
            self.inputs, self.outputs, self.handle = shared_matrices(capacity, widths)
        else:
            self.inputs = np.empty((capacity, widths[0]), np.float32)
            self.outputs = np.empty((capacity, widths[1]), np.float32)
        self.targets: list[tuple[bool, str, Array, int]] = []
        for from_outputs, matrix, side in (
            (False, self.inputs, slots[0]),
            (True, self.outputs, slots[1]),
        ):
            for name, lo, hi in side:
                if hi - lo == 1:
                    view = matrix[:, lo]
                elif lo == 0 and hi == matrix.shape[1]:
                    view = matrix
                else:
                    view = matrix[:, lo:hi]
                self.targets.append((from_outputs, name, view, hi - lo))
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

    def wire(self) -> list[Any]:
        """The per-request and per-batch values as bytes, for the monitor process (copies
        of C arrays, on the event loop: no per-request work)."""
        return [self.rows, self.ids, *(bytes(a) for a in self._arrays())]

    def _arrays(self) -> tuple[array[Any], ...]:
        return (
            self.routes, self.clients, self.received_ns, self.enqueued_ns, self.request_rows,
            self.started_ns, self.done_ns, self.ts, self.batch_requests,
        )  # fmt: skip

    @classmethod
    def received(cls, matrices: tuple[Array, Array], doc: list[Any]) -> Columns:
        """A set another process filled: its matrices (mapped) and `wire` of its values."""
        cols = cls.__new__(cls)
        cols.inputs, cols.outputs = matrices
        cols.targets, cols.handle = [], None
        cols.clear()
        cols.rows, cols.ids = int(doc[0]), list(doc[1])
        for values, data in zip(cols._arrays(), doc[2:], strict=True):
            values.frombytes(data)
        return cols


class PredictionRing:
    """Rows recorded since the drain last took them, at most `capacity` per set of columns."""

    def __init__(
        self,
        capacity: int,
        inputs: Slots,
        outputs: Slots,
        summaries: Summaries = (),
        shared: bool = False,
    ) -> None:
        """`shared`: column matrices in memory the monitor process maps (see monitor/shm.py)."""
        self.capacity = capacity
        self.shared = shared
        self.input_slots, self.output_slots = inputs, outputs
        self.summaries = tuple(summaries)  # inputs summarised into derived input columns
        widths = [hi for _, _, hi in summaries]
        self.widths = (max(_width(inputs), *widths, 0), _width(outputs))
        self.written = 0  # rows ever recorded
        self.dropped = 0  # rows ever dropped before the drain took them
        self.mismatched = 0  # rows recorded as NaN for a tensor of an unexpected size
        self.routes: list[tuple[str, str]] = []  # (endpoint, variant) by route code
        self.clients: list[str] = [""]  # client names by code; 0: no API keys configured
        self._codes: dict[tuple[str, str, str], tuple[int, int]] = {}  # see `codes`
        self._filling = self._columns()
        self._spare: Columns | None = None
        self._dropped_since_take = 0
        # Called (on the event loop) when the filling set passes half its rows: time to drain.
        self.on_half_full: Callable[[], None] | None = None
        self._half = capacity // 2

    @property
    def pending_rows(self) -> int:
        """Rows recorded and not yet taken by a drain."""
        return self._filling.rows

    def codes(self, endpoint: str, variant: str, client: str) -> tuple[int, int]:
        """The codes of (endpoint, variant) in `routes` and of `client` in `clients`, added
        when new: one dict probe per request, whatever the three are."""
        found = self._codes.get((endpoint, variant, client))
        if found is None:  # once per endpoint, variant and client
            found = _code(self.routes, (endpoint, variant)), _code(self.clients, client)
            self._codes[(endpoint, variant, client)] = found
        return found

    def derive(self, feeds: Arrays, total: int) -> list[Array | None]:
        """The columns of each summarised input for a run of `total` monitored rows, None for
        a tensor whose values do not fill them (in any thread: reads only `summaries`)."""
        derived: list[Array | None] = []
        for summary, _, _ in self.summaries:
            values = feeds[summary.tensor]
            fits = values.size == total * summary.width
            derived.append(summary.columns(values, total) if fits else None)
        return derived

    def append(
        self,
        feeds: Arrays,
        outputs: Arrays,
        metas: list[RequestMeta],
        rows: list[int],
        enqueued_ns: list[int],
        times: tuple[int, int, float],
        derived: Sequence[Array | None] | None = None,
        total: int | None = None,
    ) -> None:
        """Copy one model run in (on the request path): `times` is (started_ns, done_ns,
        unix seconds); `derived`: `derive` of this run, made in the model thread (None: derived
        here); `total`: sum(rows), when the caller has it. A run that does not fit is dropped
        whole and counted. A monitored tensor whose values do not fill its columns for this
        run's rows (a shape the load-time run did not show) is recorded as NaN and counted in
        `mismatched`; a malformed call raises."""
        if total is None:
            total = sum(rows)
        self.written += total
        cols = self._filling
        start, stop = cols.rows, cols.rows + total
        if stop > self.capacity:
            self._drop(total)
            return
        try:
            ids, routes, received, clients = zip(*metas, strict=True)
            for from_outputs, name, view, width in cols.targets:
                values = outputs[name] if from_outputs else feeds[name]
                if values.size != total * width:
                    view[start:stop] = np.nan
                    self.mismatched += total
                elif width == 1:
                    view[start:stop] = values.reshape(total)
                else:
                    view[start:stop] = values.reshape(total, width)
            if self.summaries:
                self._summarised(cols.inputs, start, stop, feeds, derived)
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
        if start <= self._half < stop and self.on_half_full is not None:
            self.on_half_full()

    def _summarised(
        self,
        matrix: Array,
        start: int,
        stop: int,
        feeds: Arrays,
        derived: Sequence[Array | None] | None,
    ) -> None:
        """Write the summarised inputs' columns of rows `start:stop` (NaN where they did not
        fit, counted), derived here when the run was not derived in the model thread."""
        total = stop - start
        if derived is None:
            derived = self.derive(feeds, total)
        for (_, lo, hi), columns in zip(self.summaries, derived, strict=True):
            if columns is not None:
                matrix[start:stop, lo:hi] = columns
            else:
                matrix[start:stop, lo:hi] = np.nan
                self.mismatched += total

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        self._dropped_since_take += rows

    def swap(self) -> tuple[Columns, int]:
        """Hand the filled columns to the drain and start filling the spare set (O(1), on the
        event loop). Give them back with `release` once they are read."""
        taken, dropped = self._filling, self._dropped_since_take
        spare, self._spare = self._spare, None
        self._filling = spare if spare is not None else self._columns()
        self._dropped_since_take = 0
        return taken, dropped

    def _columns(self) -> Columns:
        slots = (self.input_slots, self.output_slots)
        return Columns(self.capacity, self.widths, slots, self.shared)

    def release(self, taken: Columns) -> None:
        """Columns the drain has finished with become the spare set (call on the event loop)."""
        taken.clear()
        self._spare = taken

    def assemble(self, cols: Columns, dropped: int) -> RingSlice:
        """Per-row columns of one taken set: one compiled call and the ids, whatever its size
        (:mod:`~lockgate.monitor.kernels.timing`). The matrices are views of the set's memory
        (valid until it is released)."""
        counts = _int64s(cols.request_rows)
        ts, latency, queue, route, first = request_rows(
            (_int64s(cols.started_ns), _int64s(cols.done_ns), _float64s(cols.ts),
             _int64s(cols.batch_requests)),
            (_int64s(cols.received_ns), _int64s(cols.enqueued_ns), counts, _int64s(cols.routes)),
        )  # fmt: skip
        ids = id_keys(cols.ids)
        clients = np.array(cols.clients, np.int16)
        per_row = ts.shape[0] != ids.shape[0]  # some request has several rows
        return RingSlice(
            ts=ts,
            request_id=np.repeat(ids, counts) if per_row else ids,
            route=route,
            client=np.repeat(clients, counts) if per_row else clients,
            inputs=cols.inputs[: cols.rows],
            outputs=cols.outputs[: cols.rows],
            latency=latency,
            queue=queue,
            first=first,
            dropped=dropped,
        )


def _code(table: list[Any], value: Any) -> int:
    """`value`'s index in `table`, appended when absent (tables hold a few entries)."""
    if value not in table:
        table.append(value)
    return table.index(value)


def _int64s(values: array[int]) -> Array:
    """A C array's values without a copy (the set is not appended to while it is read)."""
    return np.frombuffer(values, np.int64) if len(values) else np.zeros(0, np.int64)


def _float64s(values: array[float]) -> Array:
    return np.frombuffer(values, np.float64) if len(values) else np.zeros(0, np.float64)


def _width(slots: Slots) -> int:
    return slots[-1][2] if slots else 0
