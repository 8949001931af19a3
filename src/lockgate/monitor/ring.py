"""The hand-over between the request path and the monitor's drain, per model version.

Each finished run is copied into preallocated columns at once, by one call of a small C writer
(`_ringwrite.c`): the monitored tensors cast to float32 into their columns, the requests' ids,
routes and timings and the run's times into preallocated arrays, whole or not at all. In Python
the same copy took a dozen numpy and array calls a run, or runs held and copied in groups, and
cost the event loop several microseconds a request (docs/design/monitor-tail-cost.md). A
summarised input (:mod:`lockgate.monitor.derived`) is derived from the run by `derive`, a few
vectorised calls whatever its rows, in the model thread that ran it (the batcher calls it there,
see serve/batch.py); only a run on the event loop anyway (an inline one) is derived by `append`
itself. There are two sets of columns: the request path fills one while the drain reads the
other, and the drain's `swap` (on the event loop, O(1)) exchanges them. A set holds `capacity`
rows; runs that do not fit before the drain comes are dropped and counted, never silently lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.monitor._ringwrite import (
    CLIENT,
    DONE_NS,
    ENQUEUED_NS,
    FROM_DERIVED,
    FROM_INPUTS,
    FROM_OUTPUTS,
    RECEIVED_NS,
    REQUEST_FIELDS,
    REQUEST_ROWS,
    ROUTE,
    RUN_FIELDS,
    RUN_REQUESTS,
    STARTED_NS,
    UNSUPPORTED,
    Writer,
)
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
# What the writer copies for each monitored tensor: (where from: FROM_INPUTS, FROM_OUTPUTS or
# FROM_DERIVED, the tensor's name or its index among the derived, matrix: 0 inputs or
# 1 outputs, first column, width). The rows of `Columns.requests` and `Columns.runs` are the
# writer's too (ROUTE ... REQUEST_ROWS, STARTED_NS ... RUN_REQUESTS).
Target = tuple[int, "str | int", int, int, int]


class Columns:
    """One set of ring columns, all preallocated: the rows' input and output matrices (float32),
    the requests' values (`requests`, int64 [REQUEST_FIELDS, capacity]: route and client codes,
    arrival and queue times, rows), the runs' (`runs`: start, end, requests; `run_ts`: unix
    seconds) and the requests' ids. `writer` fills them, one C call per run."""

    def __init__(
        self, matrices: tuple[Array, Array], targets: Sequence[Target], handle: SharedHandle | None
    ) -> None:
        self.inputs, self.outputs = matrices
        self.handle = handle  # the matrices' memory file, when the monitor process maps them
        capacity = self.inputs.shape[0]
        self.requests = np.empty((REQUEST_FIELDS, capacity), np.int64)
        self.runs = np.empty((RUN_FIELDS, capacity), np.int64)
        self.run_ts = np.empty(capacity, np.float64)
        self.ids: list[str] = []
        self.writer = Writer(
            self.inputs, self.outputs, targets, self.requests, self.runs, self.run_ts, self.ids
        )

    @classmethod
    def allocate(
        cls, capacity: int, widths: tuple[int, int], targets: Sequence[Target], shared: bool
    ) -> Columns:
        """`shared`: the matrices live in a memory file the monitor process maps (`handle`)."""
        if shared:
            inputs, outputs, handle = shared_matrices(capacity, widths)
            return cls((inputs, outputs), targets, handle)
        matrices = (np.empty((capacity, widths[0]), np.float32),
                    np.empty((capacity, widths[1]), np.float32))  # fmt: skip
        return cls(matrices, targets, None)

    @property
    def rows(self) -> int:
        return int(self.writer.rows)

    def request_values(self) -> Array:
        """The requests' values written so far, ``[REQUEST_FIELDS, requests]`` (a view)."""
        return self.requests[:, : self.writer.requests]

    def run_values(self) -> tuple[Array, Array]:
        """The runs' values and unix seconds written so far (views)."""
        return self.runs[:, : self.writer.runs], self.run_ts[: self.writer.runs]

    def clear(self) -> None:
        self.ids.clear()  # in place: the writer appends to this list
        self.writer.clear()

    def wire(self) -> list[Any]:
        """The requests' and runs' values as bytes, for the monitor process (copies on the
        event loop: no per-request work)."""
        runs, ts = self.run_values()
        return [self.rows, self.ids, self.request_values().tobytes(), runs.tobytes(), ts.tobytes()]

    @classmethod
    def received(cls, matrices: tuple[Array, Array], doc: list[Any]) -> Columns:
        """A set another process filled: its matrices (mapped) and `wire` of its values."""
        cols = cls(matrices, (), None)
        cols.ids += doc[1]
        requests = np.frombuffer(doc[2], np.int64).reshape(REQUEST_FIELDS, -1)
        runs = np.frombuffer(doc[3], np.int64).reshape(RUN_FIELDS, -1)
        cols.requests[:, : requests.shape[1]] = requests
        cols.runs[:, : runs.shape[1]] = runs
        cols.run_ts[: runs.shape[1]] = np.frombuffer(doc[4], np.float64)
        cols.writer.restore(int(doc[0]), requests.shape[1], runs.shape[1])
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
        self.targets: list[Target] = [
            *((FROM_INPUTS, name, 0, lo, hi - lo) for name, lo, hi in inputs),
            *((FROM_OUTPUTS, name, 1, lo, hi - lo) for name, lo, hi in outputs),
            *((FROM_DERIVED, i, 0, lo, hi - lo) for i, (_, lo, hi) in enumerate(summaries)),
        ]
        self.written = 0  # rows ever recorded, dropped ones included
        self.dropped = 0  # rows ever dropped before the drain took them
        self._mismatched = 0  # of the sets taken: see `mismatched`
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
    def mismatched(self) -> int:
        """Rows ever recorded as NaN for a tensor of an unexpected size."""
        return self._mismatched + int(self._filling.writer.mismatched)

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
        derived: list[Array | None] | None = None,
    ) -> None:
        """Copy one model run into the filling set (on the request path): `times` is
        (started_ns, done_ns, unix seconds); `derived`: `derive` of this run, made in the model
        thread (None: derived here). A run that does not fit, or cannot be copied, is dropped
        whole and counted. A monitored tensor whose values do not fill its columns for this
        run's rows (a shape the load-time run did not show) is recorded as NaN and counted in
        `mismatched`."""
        if derived is None and self.summaries:
            total = sum(rows)
            if not total:
                return
            derived = self.derive(feeds, total)  # a run made on the loop
        writer = self._filling.writer
        try:
            written = writer.write(feeds, outputs, derived, metas, rows, enqueued_ns, *times)
            if written == UNSUPPORTED:  # some tensor's type or layout: numpy casts it first
                feeds, outputs = self._as_float32(feeds, outputs)
                written = writer.write(feeds, outputs, derived, metas, rows, enqueued_ns, *times)
        except Exception:  # nothing was written: the run is dropped and counted
            self._drop(sum(rows))
            raise
        if written > 0:
            self.written += written
            if writer.rows > self._half >= writer.rows - written and self.on_half_full:
                self.on_half_full()
        elif written < 0:  # FULL (or, after numpy's cast, still UNSUPPORTED)
            self._drop(sum(rows))

    def _as_float32(self, feeds: Arrays, outputs: Arrays) -> tuple[Arrays, Arrays]:
        """The monitored tensors as C-contiguous float32, cast by numpy (float16, non-native
        byte order, strided views, objects holding numbers; beyond float32: inf)."""
        converted: tuple[Arrays, Arrays] = (dict(feeds), dict(outputs))
        with np.errstate(over="ignore"):
            sides = (self.input_slots, self.output_slots)
            for tensors, slots in zip(converted, sides, strict=True):
                for name, _, _ in slots:
                    if name in tensors:
                        tensors[name] = np.ascontiguousarray(tensors[name], np.float32)
        return converted

    def _drop(self, rows: int) -> None:
        self.written += rows
        self.dropped += rows
        self._dropped_since_take += rows

    def swap(self) -> tuple[Columns, int]:
        """Hand the filled columns to the drain and start filling the spare set (on the event
        loop: O(1)). Give them back with `release` once they are read."""
        taken, dropped = self._filling, self._dropped_since_take
        self._mismatched += int(taken.writer.mismatched)  # the set's count ends at `release`
        spare, self._spare = self._spare, None
        self._filling = spare if spare is not None else self._columns()
        self._dropped_since_take = 0
        return taken, dropped

    def _columns(self) -> Columns:
        return Columns.allocate(self.capacity, self.widths, self.targets, self.shared)

    def release(self, taken: Columns) -> None:
        """Columns the drain has finished with become the spare set (call on the event loop)."""
        taken.clear()
        self._spare = taken

    def assemble(self, cols: Columns, dropped: int) -> RingSlice:
        """Per-row columns of one taken set: one compiled call and the ids, whatever its size
        (:mod:`~lockgate.monitor.kernels.timing`). The matrices are views of the set's memory
        (valid until it is released)."""
        req = cols.request_values()
        runs, run_ts = cols.run_values()
        counts = req[REQUEST_ROWS]
        ts, latency, queue, route, first = request_rows(
            (runs[STARTED_NS], runs[DONE_NS], run_ts, runs[RUN_REQUESTS]),
            (req[RECEIVED_NS], req[ENQUEUED_NS], counts, req[ROUTE]),
        )
        ids = id_keys(cols.ids)
        clients = req[CLIENT].astype(np.int16)
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


def _width(slots: Slots) -> int:
    return slots[-1][2] if slots else 0
