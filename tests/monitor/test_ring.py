"""The ring between the request path and the drain, against a plain list of rows: every row
assembled exactly once, in order, with its own request's id, route and timings; runs that do
not fit before the drain comes are dropped whole and counted; every tensor type cast as numpy
casts it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lockgate.monitor.ring import (
    ID_BYTES,
    PredictionRing,
    RequestMeta,
    RingSlice,
    id_key,
    id_keys,
)

SLOTS = ([("x", 0, 2)], [("y", 0, 1)])


def _record(ring: PredictionRing, first_row: int, request_rows: list[int]) -> int:
    """Requests of the given sizes as one run; row i carries the value i in every column."""
    total = sum(request_rows)
    seq = np.arange(first_row, first_row + total)
    starts = first_row + np.cumsum([0, *request_rows[:-1]])
    metas: list[RequestMeta] = [
        (f"r{s}", int(s % 5), 1_000_000 + int(s), int(s % 3)) for s in starts
    ]
    ring.append(
        feeds={"x": np.stack([seq, -seq], axis=1).astype(np.float32)},
        outputs={"y": (seq * 2).astype(np.int64).reshape(total, 1)},
        metas=metas,
        rows=request_rows,
        enqueued_ns=[2_000_000 + int(s) for s in starts],
        times=(3_000_000 + first_row, 4_000_000 + first_row, float(first_row)),
    )
    return total


def _take(ring: PredictionRing) -> RingSlice:
    columns, dropped = ring.swap()
    piece = ring.assemble(columns, dropped)
    piece = piece.tail(piece.rows)  # a copy: the columns are written again once released
    ring.release(columns)
    return piece


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 400),
    ops=st.lists(
        st.one_of(
            st.lists(st.integers(1, 6), min_size=1, max_size=4),
            st.lists(st.integers(1, 40), min_size=1, max_size=3),
            st.just([]),
        ),
        max_size=100,
    ),
)
def test_ring_matches_a_list(capacity: int, ops: list[list[int]]) -> None:
    """A non-empty op records one run of requests with those row counts; [] drains."""
    ring = PredictionRing(capacity, *SLOTS)
    pending: list[int] = []  # rows the drain should see next
    written = seen = dropped = 0
    for op in [*ops, []]:
        if op:
            total = _record(ring, written, op)
            if len(pending) + total <= capacity:
                pending += range(written, written + total)
            else:  # the run does not fit in what is left: dropped whole
                dropped += total
            written += total
            continue
        piece = _take(ring)
        assert piece.rows == len(pending)
        np.testing.assert_array_equal(piece.inputs[:, 0], np.array(pending, np.float32))
        np.testing.assert_array_equal(piece.inputs[:, 1], -np.array(pending, np.float32))
        np.testing.assert_array_equal(piece.outputs[:, 0], np.array(pending, np.float32) * 2)
        pending.clear()
        seen += piece.rows
    assert seen + dropped == written and ring.dropped == dropped and ring.written == written


def test_per_request_columns() -> None:
    ring = PredictionRing(100, *SLOTS)
    _record(ring, 0, [2, 1, 3])
    _record(ring, 6, [1])
    piece = _take(ring)
    assert piece.request_id.tolist() == [b"r0", b"r0", b"r2", b"r3", b"r3", b"r3", b"r6"]
    assert piece.first.tolist() == [True, False, True, True, False, False, True]
    assert piece.route.tolist() == [0, 0, 2, 3, 3, 3, 1]
    assert piece.client.tolist() == [0, 0, 2, 0, 0, 0, 0]  # request start % 3, on each row
    assert piece.ts.tolist() == [0.0] * 6 + [6.0]
    # latency = done - received, queue = started - enqueued, per request, on each of its rows
    np.testing.assert_allclose(piece.latency[:3], [3e-3 - 0e-9, 3e-3, 3e-3 - 2e-9], rtol=1e-5)
    np.testing.assert_allclose(piece.queue[:3], [1e-3, 1e-3, 1e-3 - 2e-9], rtol=1e-5)
    assert _take(ring).rows == 0


def test_single_row_requests() -> None:
    """The usual case, where no column needs spreading over rows, gives the same columns."""
    ring = PredictionRing(100, *SLOTS)
    _record(ring, 0, [1, 1])
    _record(ring, 2, [1])
    piece = _take(ring)
    assert piece.request_id.tolist() == [b"r0", b"r1", b"r2"]
    assert piece.first.all() and piece.route.tolist() == [0, 1, 2]
    assert piece.ts.tolist() == [0, 0, 2]
    np.testing.assert_allclose(piece.latency, [3e-3, 3e-3 - 1e-9, 3e-3], rtol=1e-5)
    np.testing.assert_allclose(piece.queue, [1e-3, 1e-3 - 1e-9, 1e-3], rtol=1e-5)


def test_nothing_monitored_on_one_side() -> None:
    ring = PredictionRing(10, [], SLOTS[1])
    _record(ring, 0, [3])
    piece = _take(ring)
    assert piece.inputs.shape == (3, 0) and piece.outputs.shape == (3, 1)


def test_long_ids_are_digested_consistently() -> None:
    assert id_key("short-id") == b"short-id"
    long = "x" * 100
    assert len(id_key(long)) == ID_BYTES and id_key(long) == id_key(long) != id_key(long + "y")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789abcdef", max_size=40))))
@example(["0000000", "0000000000", "0000"])  # mixed lengths whose sum is a multiple of the first
def test_id_keys_match_id_key(ids: list[str]) -> None:
    """The bulk form (vectorised for short ASCII ids) agrees with the one the feedback uses."""
    keys = id_keys(ids)
    assert keys.dtype == np.dtype(f"S{ID_BYTES}")
    assert keys.tolist() == [id_key(i).rstrip(b"\0") for i in ids]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40).flatmap(lambda n: st.lists(st.text(min_size=n, max_size=n), min_size=1)))
def test_id_keys_of_one_length(ids: list[str]) -> None:
    """Ids of one length (generated ids, client uuids) take the joined-string path."""
    assert id_keys(ids).tolist() == [id_key(i).rstrip(b"\0") for i in ids]


def test_the_drain_reads_one_set_while_requests_fill_the_other() -> None:
    ring = PredictionRing(8, *SLOTS)
    _record(ring, 0, [2])
    taken, _ = ring.swap()
    _record(ring, 100, [3])  # arrives while the drain is reading
    np.testing.assert_array_equal(ring.assemble(taken, 0).inputs[:, 0], [0, 1])
    ring.release(taken)
    _record(ring, 200, [1])
    np.testing.assert_array_equal(_take(ring).inputs[:, 0], [100, 101, 102, 200])
    np.testing.assert_array_equal(_take(ring).inputs[:, 0], np.zeros(0))


def test_a_tensor_of_an_unexpected_size_is_recorded_as_nan_and_counted() -> None:
    """Never an error per batch: the run's rows are kept, the tensor that does not fill its
    columns is NaN for them, the other tensors are recorded, and the rows are counted."""
    ring = PredictionRing(8, *SLOTS)
    _record(ring, 0, [1])
    ring.append(  # three values a row where the schema monitors two
        feeds={"x": np.zeros((2, 3), np.float32)},
        outputs={"y": np.array([[7], [8]], np.float32)},
        metas=[("a", 0, 0, 0), ("b", 0, 0, 0)],
        rows=[1, 1],
        enqueued_ns=[0, 0],
        times=(0, 0, 0.0),
    )
    _record(ring, 1, [1])
    columns, dropped = ring.swap()
    piece = ring.assemble(columns, dropped)
    assert dropped == 0 and ring.written == 4 and ring.mismatched == 2
    assert piece.request_id.tolist() == [b"r0", b"a", b"b", b"r1"]
    assert np.isnan(piece.inputs[1:3]).all() and not np.isnan(piece.inputs[[0, 3]]).any()
    np.testing.assert_array_equal(piece.outputs[:, 0], [0, 7, 8, 2])


def test_one_run_of_an_unexpected_size_among_many() -> None:
    """The run whose tensor has an unexpected size is NaN alone, wherever it falls."""
    ring = PredictionRing(1000, *SLOTS)
    first = 0
    for i in range(70):
        if i == 37:
            ring.append(
                feeds={"x": np.zeros((1, 3), np.float32)},  # three values where two are monitored
                outputs={"y": np.array([[-1]], np.int64)},
                metas=[("odd", 0, 0, 0)],
                rows=[1],
                enqueued_ns=[0],
                times=(0, 0, 0.0),
            )
            odd = first
            first += 1
        first += _record(ring, first, [1 + i % 3])
    piece = _take(ring)
    assert piece.rows == first and ring.mismatched == 1 and ring.dropped == 0
    assert np.isnan(piece.inputs[odd]).all() and piece.outputs[odd, 0] == -1
    assert piece.request_id[odd] == b"odd"
    others = np.delete(np.arange(first), odd)
    np.testing.assert_array_equal(piece.inputs[others, 0], others)
    np.testing.assert_array_equal(piece.outputs[others, 0], others * 2)


def _record_malformed(ring: PredictionRing) -> None:
    """A one-row run whose request record has the wrong arity: it cannot be copied."""
    ring.append(
        feeds={"x": np.zeros((1, 2), np.float32)},
        outputs={"y": np.zeros((1, 1), np.int64)},
        metas=[("bad", 0, 0)],  # type: ignore[list-item]
        rows=[1],
        enqueued_ns=[0],
        times=(0, 0, 0.0),
    )


def test_a_run_that_cannot_be_copied_is_dropped_alone_and_counted() -> None:
    """A malformed run (here a request record of the wrong arity) raises, is counted as
    dropped and leaves nothing of itself in the set; the runs around it are kept."""
    ring = PredictionRing(100, *SLOTS)
    _record(ring, 0, [1, 2])
    with pytest.raises(TypeError):
        _record_malformed(ring)
    _record(ring, 3, [1])
    with pytest.raises(KeyError):  # a monitored tensor missing from the run
        ring.append({}, {"y": np.zeros((1, 1))}, [("m", 0, 0, 0)], [1], [0], (0, 0, 0.0))
    with pytest.raises(ValueError):  # values that are not numbers
        ring.append(
            {"x": np.array([["a", "b"]])}, {"y": np.zeros((1, 1))}, [("s", 0, 0, 0)], [1], [0],
            (0, 0, 0.0),
        )  # fmt: skip
    piece = _take(ring)
    assert ring.dropped == 3 and ring.written == 7
    assert piece.request_id.tolist() == [b"r0", b"r1", b"r1", b"r3"]
    np.testing.assert_array_equal(piece.inputs[:, 0], [0, 1, 2, 3])


CAST = [
    np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8,
    np.uint16, np.uint32, np.uint64, np.bool_, ">f4", ">i8", "<f8",
]  # fmt: skip


@pytest.mark.parametrize("dtype", CAST, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "fortran"])
def test_every_tensor_type_is_cast_as_numpy_casts_it(dtype: object, layout: str) -> None:
    """Whatever a model returns or a client sends (the writer's own casts, and numpy's for what
    it leaves to numpy: float16, other byte orders, views that are not C-contiguous)."""
    rng = np.random.default_rng(7)
    dt = np.dtype(dtype)  # type: ignore[call-overload]
    if dt.kind == "f":
        raw = rng.normal(0, 1e3, size=(5, 4)) * rng.choice([1, 1e40, 1e-50], size=(5, 4))
        raw[0, :2] = [np.nan, np.inf]
    elif dt.kind == "b":
        raw = rng.random((5, 4)) < 0.5
    else:
        native = dt.newbyteorder("=")
        info = np.iinfo(native)
        raw = rng.integers(info.min, info.max, size=(5, 4), dtype=native, endpoint=True)
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.asarray(raw).astype(dt)
    x = {"contiguous": values[:, :2], "strided": values[:, ::2], "fortran": values[:, :2]}[layout]
    if layout == "contiguous":
        x = np.ascontiguousarray(x)
    elif layout == "fortran":
        x = np.asfortranarray(x)
    y = values[:, 2:3].copy()
    ring = PredictionRing(16, *SLOTS)
    metas: list[RequestMeta] = [(f"r{i}", 0, 0, 0) for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ring.append({"x": x}, {"y": y}, metas, [1] * 5, [0] * 5, (0, 0, 0.0))
    piece = _take(ring)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(piece.inputs, x.astype(np.float32))
        np.testing.assert_array_equal(piece.outputs, y.astype(np.float32))
    assert ring.dropped == 0 and ring.mismatched == 0


def test_values_beyond_float32_become_infinite_without_a_warning() -> None:
    ring = PredictionRing(8, *SLOTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ring.append(
            feeds={"x": np.array([[1e300, -1e300]])},
            outputs={"y": np.array([[2.0]])},
            metas=[("a", 0, 0, 0)],
            rows=[1],
            enqueued_ns=[0],
            times=(0, 0, 0.0),
        )
        piece = _take(ring)
    assert piece.inputs.tolist() == [[np.inf, -np.inf]] and ring.dropped == 0


@pytest.mark.parametrize("seed", range(5))
def test_timings_spread_over_rows_as_numpy_repeats_them(seed: int) -> None:
    """assemble's compiled pass against the same columns built with numpy repeats."""
    rng = np.random.default_rng(seed)
    ring = PredictionRing(10_000, *SLOTS)
    runs = []
    for _ in range(int(rng.integers(1, 60))):
        rows = [int(r) for r in rng.integers(1, 5, size=int(rng.integers(1, 9)))]
        if rng.random() < 0.5:
            rows = [1] * len(rows)
        received = rng.integers(0, 10**12, size=len(rows))
        enqueued = received + rng.integers(0, 10**6, size=len(rows))
        started = int(enqueued.max()) + int(rng.integers(0, 10**7))
        done = started + int(rng.integers(0, 10**9))
        ts = float(rng.uniform(0, 2e9))
        metas: list[RequestMeta] = [
            (f"id{len(runs)}-{i}", int(rng.integers(0, 7)), int(received[i]), i % 3)
            for i in range(len(rows))
        ]
        feeds = {"x": np.zeros((sum(rows), 2), np.float32)}
        outputs = {"y": np.zeros((sum(rows), 1), np.int64)}
        ring.append(feeds, outputs, metas, rows, [int(e) for e in enqueued], (started, done, ts))
        runs.append((rows, metas, enqueued, started, done, ts))
    columns, dropped = ring.swap()
    piece = ring.assemble(columns, dropped)
    counts = np.concatenate([np.array(rows) for rows, *_ in runs])
    per_request = len(counts)
    batch = np.repeat(np.arange(len(runs)), [len(rows) for rows, *_ in runs])
    done = np.array([run[4] for run in runs])[batch]
    started = np.array([run[3] for run in runs])[batch]
    received = np.array([m[2] for _, metas, *_ in runs for m in metas])
    enqueued = np.concatenate([run[2] for run in runs])
    assert per_request == received.shape[0]
    want_latency = np.repeat(((done - received) / 1e9).astype(np.float32), counts)
    want_queue = np.repeat(((started - enqueued) / 1e9).astype(np.float32), counts)
    np.testing.assert_array_equal(piece.latency, want_latency)
    np.testing.assert_array_equal(piece.queue, want_queue)
    np.testing.assert_array_equal(
        piece.ts, np.repeat(np.array([r[5] for r in runs])[batch], counts)
    )
    routes = np.array([m[1] for _, metas, *_ in runs for m in metas], np.int16)
    np.testing.assert_array_equal(piece.route, np.repeat(routes, counts))
    clients = np.array([m[3] for _, metas, *_ in runs for m in metas], np.int16)
    np.testing.assert_array_equal(piece.client, np.repeat(clients, counts))
    first = np.zeros(int(counts.sum()), bool)
    first[np.cumsum(counts) - counts] = True
    np.testing.assert_array_equal(piece.first, first)
    ids = [m[0].encode() for _, metas, *_ in runs for m in metas]
    assert piece.request_id.tolist() == [
        i for i, c in zip(ids, counts, strict=True) for _ in range(c)
    ]


def test_a_shared_set_assembles_the_same_in_another_process_view() -> None:
    """A ring with its matrices in a memory file: the set rebuilt from its handle (mapped
    again, as the monitor process does) and its per-request values sent as bytes assembles
    to exactly the rows of the set itself."""
    from lockgate.monitor.ring import Columns
    from lockgate.monitor.shm import map_matrices

    ring = PredictionRing(64, *SLOTS, shared=True)
    for first, rows in ((0, [1, 3]), (4, [2]), (6, [1, 1, 1])):
        _record(ring, first, rows)
    columns, dropped = ring.swap()
    assert columns.handle is not None
    received = Columns.received(map_matrices(columns.handle, ring.widths), columns.wire())
    expected, got = ring.assemble(columns, dropped), ring.assemble(received, dropped)
    for name in ("ts", "request_id", "route", "client", "inputs", "outputs", "latency", "first"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), name)
    assert got.rows == 9 and got.inputs[5].tolist() == [5.0, -5.0]
    ring.release(columns)


def test_requests_without_rows_and_numpy_integers() -> None:
    """A request of no rows batched with others keeps its place among the requests; row
    counts and times given as numpy integers are taken as the same integers."""
    ring = PredictionRing(8, *SLOTS)
    x = np.array([[1, 2], [3, 4]], np.float32)
    metas: list[RequestMeta] = [("e", 1, 10, 0), ("a", 2, np.int64(20), 1), ("z", 0, 30, 0)]  # type: ignore[list-item]
    rows = [0, np.int64(2), 0]
    ring.append({"x": x}, {"y": np.ones((2, 1))}, metas, rows, [0, 0, 0], (40, 50, 1.0))  # type: ignore[arg-type]
    columns, _ = ring.swap()
    assert columns.ids == ["e", "a", "z"] and columns.request_values()[4].tolist() == [0, 2, 0]
    piece = ring.assemble(columns, 0)
    assert piece.request_id.tolist() == [b"a", b"a"] and piece.route.tolist() == [2, 2]
    np.testing.assert_array_equal(piece.inputs, x)


def test_a_set_full_of_requests_drops_the_run() -> None:
    """Capacity bounds the requests of a set as well as its rows (requests of no rows take no
    row; a run is written only with a row, so runs never outnumber rows)."""
    ring = PredictionRing(4, *SLOTS)
    metas: list[RequestMeta] = [(f"r{i}", 0, 0, 0) for i in range(5)]
    x = np.zeros((1, 2), np.float32)
    # five requests, one row among them: fits in rows, not in requests
    ring.append({"x": x}, {"y": np.zeros((1, 1))}, metas, [1, 0, 0, 0, 0], [0] * 5, (0, 0, 0.0))
    assert ring.dropped == 1 and ring.pending_rows == 0
    for _ in range(5):
        ring.append({"x": x}, {"y": np.zeros((1, 1))}, metas[:1], [1], [0], (0, 0, 0.0))
    assert ring.dropped == 2 and ring.pending_rows == 4
    ring = PredictionRing(4, *SLOTS)
    with pytest.raises(ValueError):  # negative rows: a caller's bug, the run dropped
        ring.append({"x": x}, {"y": x[:, :1]}, metas[:2], [-1, 2], [0, 0], (0, 0, 0.0))
    assert ring.dropped == 1 and ring.pending_rows == 0


def test_a_writers_counts_are_set_only_within_its_capacity() -> None:
    """The writer indexes its arrays by its counts without bounds checks, so they are read-only
    and `restore` (a set filled by another process) refuses counts outside the set."""
    ring = PredictionRing(4, *SLOTS)
    _record(ring, 0, [1, 2])
    columns, _ = ring.swap()
    writer = columns.writer
    with pytest.raises(AttributeError):
        writer.rows = 100  # type: ignore[misc]
    for counts in ((5, 1, 1), (1, 5, 1), (1, 1, 5), (-1, 1, 1)):
        with pytest.raises(ValueError, match="outside a set of 4 rows"):
            writer.restore(*counts)
    assert (writer.rows, writer.requests, writer.runs) == (3, 2, 1)  # unchanged
    writer.restore(4, 4, 4)
    assert (writer.rows, writer.requests, writer.runs) == (4, 4, 4)
    ring.release(columns)
    assert (writer.rows, writer.requests, writer.runs, writer.mismatched) == (0, 0, 0, 0)
