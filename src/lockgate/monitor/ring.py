"""The hand-over between the request path and the monitor's drain, per model version.

Each finished run takes its rows in preallocated columns at once (so capacity and drops are
exact), and is held, with references to its arrays, until `HELD_RUNS` of them are copied in
together: one numpy copy per monitored tensor and C-level appends of the requests' ids,
routes and timings, for many runs. Copying run by run cost the event loop several times as
much (a numpy assignment per tensor per run, with cold caches each time); held for the drain
instead, the requests' arrays would die in the drain thread, under the GIL, and cost more
still. A summarised input (:mod:`lockgate.monitor.derived`) is derived from the run by
`derive`, a few vectorised calls whatever its rows, in the model thread that ran it (the
batcher calls it there, see serve/batch.py); only a run on the event loop anyway (an inline
one) is derived by `append` itself. There are two sets of columns: the request path fills one
while the drain reads the other, and the drain's `swap` (on the event loop: the runs held,
then O(1)) exchanges them. A set holds `capacity` rows; runs that do not fit before the drain
comes are dropped and counted, never silently lost.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from lockgate.monitor.derived import Summary
from lockgate.monitor.kernels.timing import request_rows
from lockgate.monitor.shm import SharedHandle, shared_matrices

log = logging.getLogger(__name__)

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


# Runs of at most HELD_ROWS rows are held and copied into the ring HELD_RUNS at a time.
HELD_RUNS = 32
HELD_ROWS = 64
# A run as `PredictionRing.append` takes it: feeds, outputs, metas, rows, enqueued_ns, times,
# derived columns, total rows.
_Run = tuple[Arrays, Arrays, list[RequestMeta], list[int], list[int], tuple[int, int, float],
             Sequence["Array | None"] | None, int]  # fmt: skip

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

    def values(self) -> tuple[list[str], *tuple[array[Any], ...]]:
        """The per-request and per-run values: the ids, then the C arrays."""
        return (self.ids, *self._arrays())

    def truncate(self, lengths: list[int], rows: int) -> None:
        """Back to `rows` rows and these lengths of `values` (after a failed copy)."""
        for values, length in zip(self.values(), lengths, strict=True):
            del values[length:]
        self.rows = rows

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
        hold: bool = True,
    ) -> None:
        """`shared`: column matrices in memory the monitor process maps (see monitor/shm.py);
        `hold`: runs may be held before they are copied (see `append`), for a version whose
        arrays are all small: every tensor followed value by value."""
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
        self._held: list[_Run] = []  # runs placed in the filling set, not yet copied
        # Runs with summarised inputs are never held: their images would be kept meanwhile.
        self._hold_rows = HELD_ROWS if hold and not self.summaries else 0
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
        """Take one model run (on the request path): `times` is (started_ns, done_ns, unix
        seconds); `derived`: `derive` of this run, made in the model thread (None: derived
        here); `total`: sum(rows), when the caller has it. A run that does not fit is dropped
        whole and counted. A monitored tensor whose values do not fill its columns for this
        run's rows (a shape the load-time run did not show) is recorded as NaN and counted in
        `mismatched`.

        Small runs are held and copied `HELD_RUNS` at a time (see `flush`): one numpy copy per
        tensor for many runs costs the loop far less than one per run, and the runs held are
        a few kilobytes. Their rows are placed at once, so capacity, drops and `pending_rows`
        are exact whatever is held."""
        if total is None:
            total = sum(rows)
        self.written += total
        cols = self._filling
        start, stop = cols.rows, cols.rows + total
        if stop > self.capacity:
            self._drop(total)
            return
        if derived is None and self.summaries:
            derived = self.derive(feeds, total)  # a run made on the loop
        run = (feeds, outputs, metas, rows, enqueued_ns, times, derived, total)
        if total <= self._hold_rows:
            self._held.append(run)
            cols.rows = stop
            if len(self._held) >= HELD_RUNS:
                self.flush()
        else:  # large, or summarised: on its own, after the runs held
            try:
                self.flush()
            except Exception:  # the runs held are dropped and counted; so is this one
                self._drop(total)
                raise
            cols.rows = stop
            self._copy(cols, start, [run])
        if start <= self._half < stop and self.on_half_full is not None:
            self.on_half_full()

    def flush(self) -> None:
        """Copy the runs held into the filling set (on the event loop; `swap` calls it)."""
        if self._held:
            held, self._held = self._held, []
            cols = self._filling
            self._copy(cols, cols.rows - sum(run[7] for run in held), held)

    def _copy(self, cols: Columns, start: int, runs: list[_Run]) -> None:
        """Write runs placed from row `start` on: per tensor one copy of all their values
        (a run's tensor that does not fill its columns: NaN, counted), then the
        per-request and per-run values. A run that cannot be written is dropped with all the
        runs copied with it, never left half-written."""
        stop = cols.rows
        lengths = [len(a) for a in cols.values()]
        try:
            with np.errstate(over="ignore"):  # beyond float32: inf, as the statistics expect
                self._columns_of(cols, start, stop, runs)
        except Exception:
            cols.truncate(lengths, start)
            self._drop(stop - start)
            raise

    def _columns_of(self, cols: Columns, start: int, stop: int, runs: list[_Run]) -> None:
        """`_copy`'s writes: the monitored tensors, the summaries, the per-request values."""
        for from_outputs, name, view, width in cols.targets:
            parts = [(run[1] if from_outputs else run[0])[name] for run in runs]
            values = parts[0] if len(parts) == 1 else _joined(parts)
            if values.size == (stop - start) * width:
                self._place(view, start, stop, width, values)
            else:  # some run's tensor has an unexpected size: run by run
                row = start
                for run, part in zip(runs, parts, strict=True):
                    self._place(view, row, row + run[7], width, part)
                    row += run[7]
        if self.summaries:  # then a run is copied alone
            (derived,) = (run[6] for run in runs)
            self._place_summaries(cols.inputs, start, stop, derived)
        # Each column through a new C array and one block copy: `extend` takes a tuple value by
        # value through the iterator protocol, at twice the cost.
        metas = chain.from_iterable([run[2] for run in runs])
        ids, routes, received, clients = zip(*metas, strict=True)
        cols.ids += ids
        cols.routes += array("q", routes)
        cols.clients += array("q", clients)
        cols.received_ns += array("q", received)
        cols.enqueued_ns += array("q", list(chain.from_iterable([run[4] for run in runs])))
        cols.request_rows += array("q", list(chain.from_iterable([run[3] for run in runs])))
        started, done, ts = zip(*[run[5] for run in runs], strict=True)
        cols.started_ns += array("q", started)
        cols.done_ns += array("q", done)
        cols.ts += array("d", ts)
        cols.batch_requests += array("q", [len(run[2]) for run in runs])

    def _place(self, view: Array, start: int, stop: int, width: int, values: Array) -> None:
        """One tensor's values into rows `start:stop` of its columns; NaN, counted, when
        they do not fill them."""
        total = stop - start
        if values.size != total * width:
            view[start:stop] = np.nan
            self.mismatched += total
        elif width == 1:
            view[start:stop] = values.reshape(total)
        else:
            view[start:stop] = values.reshape(total, width)

    def _place_summaries(
        self, matrix: Array, start: int, stop: int, derived: Sequence[Array | None] | None
    ) -> None:
        """A run's summarised inputs into their columns of rows `start:stop`; NaN, counted,
        for a tensor that did not fit them."""
        assert derived is not None  # `append` derives what the model thread did not
        for (_, lo, hi), columns in zip(self.summaries, derived, strict=True):
            if columns is not None:
                matrix[start:stop, lo:hi] = columns
            else:
                matrix[start:stop, lo:hi] = np.nan
                self.mismatched += stop - start

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        self._dropped_since_take += rows

    def swap(self) -> tuple[Columns, int]:
        """Hand the filled columns to the drain and start filling the spare set (on the event
        loop: O(1) but for the runs held). Give them back with `release` once they are read."""
        try:
            self.flush()
        except Exception:  # the runs held are counted as dropped; the drain goes on
            log.exception("recording runs for the monitor failed")
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


def _joined(parts: list[Array]) -> Array:
    """The values of several runs' arrays one after the other (flat when their shapes
    differ beyond the leading dimension)."""
    try:
        return np.concatenate(parts)
    except ValueError:
        return np.concatenate(parts, axis=None)


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
