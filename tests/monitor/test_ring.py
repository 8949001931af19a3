"""The ring between the request path and the drain, against a plain list of rows: every row
assembled exactly once, in order, with its own request's id, route and timings; rows dropped
past capacity counted."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.monitor.ring import ID_BYTES, Batch, PredictionRing, RequestMeta, id_key, id_keys


def _batch(first_row: int, request_rows: list[int]) -> Batch:
    """Requests of the given sizes; row i carries the value i in every column."""
    total = sum(request_rows)
    seq = np.arange(first_row, first_row + total)
    starts = first_row + np.cumsum([0, *request_rows[:-1]])
    metas: list[RequestMeta] = [(f"r{s}", int(s % 5), 1_000_000 + int(s)) for s in starts]
    return Batch(
        feeds={"x": np.stack([seq, -seq], axis=1).astype(np.float32)},
        outputs={"y": (seq * 2).astype(np.float32)},
        metas=metas,
        rows=request_rows,
        enqueued_ns=[2_000_000 + int(s) for s in starts],
        started_ns=3_000_000 + first_row,
        done_ns=4_000_000 + first_row,
        ts=float(first_row),
        total=total,
    )


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 40),
    ops=st.lists(
        st.one_of(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.just([])), max_size=30
    ),
)
def test_ring_matches_a_list(capacity: int, ops: list[list[int]]) -> None:
    """A non-empty op records one batch of requests with those row counts; [] drains."""
    ring = PredictionRing(capacity, ["x"], ["y"], (2, 1))
    pending: list[Batch] = []
    written = seen = dropped = 0
    for op in [*ops, []]:
        if op:
            batch = _batch(written, op)
            ring.append(batch)
            pending.append(batch)
            written += batch.total
            while sum(b.total for b in pending) > capacity:  # the oldest batches go first
                dropped += pending.pop(0).total
            continue
        piece = ring.assemble(*ring.swap())
        want_rows = [row for b in pending for row in range(int(b.ts), int(b.ts) + b.total)]
        pending.clear()
        assert piece.rows == len(want_rows)
        np.testing.assert_array_equal(piece.inputs[:, 0], np.array(want_rows, np.float32))
        np.testing.assert_array_equal(piece.outputs[:, 0], np.array(want_rows, np.float32) * 2)
        seen += piece.rows
    assert seen + dropped == written and ring.dropped == dropped


def test_per_request_columns() -> None:
    ring = PredictionRing(100, ["x"], ["y"], (2, 1))
    ring.append(_batch(0, [2, 1, 3]))
    ring.append(_batch(6, [1]))
    piece = ring.assemble(*ring.swap())
    assert piece.request_id.tolist() == [b"r0", b"r0", b"r2", b"r3", b"r3", b"r3", b"r6"]
    assert piece.first.tolist() == [True, False, True, True, False, False, True]
    assert piece.route.tolist() == [0, 0, 2, 3, 3, 3, 1]
    assert piece.ts.tolist() == [0.0] * 6 + [6.0]
    # latency = done - received, queue = started - enqueued, per request, on each of its rows
    np.testing.assert_allclose(piece.latency[:3], [3e-3 - 0e-9, 3e-3, 3e-3 - 2e-9], rtol=1e-5)
    np.testing.assert_allclose(piece.queue[:3], [1e-3, 1e-3, 1e-3 - 2e-9], rtol=1e-5)
    assert ring.assemble(*ring.swap()).rows == 0


def test_single_row_requests() -> None:
    """The usual case, where no column needs spreading over rows, gives the same columns."""
    ring = PredictionRing(100, ["x"], ["y"], (2, 1))
    ring.append(_batch(0, [1, 1]))
    ring.append(_batch(2, [1]))
    piece = ring.assemble(*ring.swap())
    assert piece.request_id.tolist() == [b"r0", b"r1", b"r2"]
    assert piece.first.all() and piece.route.tolist() == [0, 1, 2]
    assert piece.ts.tolist() == [0, 0, 2]
    np.testing.assert_allclose(piece.latency, [3e-3, 3e-3 - 1e-9, 3e-3], rtol=1e-5)
    np.testing.assert_allclose(piece.queue, [1e-3, 1e-3 - 1e-9, 1e-3], rtol=1e-5)


def test_nothing_monitored_on_one_side() -> None:
    ring = PredictionRing(10, [], ["y"], (0, 1))
    ring.append(_batch(0, [3]))
    piece = ring.assemble(*ring.swap())
    assert piece.inputs.shape == (3, 0) and piece.outputs.shape == (3, 1)


def test_long_ids_are_digested_consistently() -> None:
    assert id_key("short-id") == b"short-id"
    long = "x" * 100
    assert len(id_key(long)) == ID_BYTES and id_key(long) == id_key(long) != id_key(long + "y")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789abcdef", max_size=40))))
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


def test_stepwise_assembly_equals_one_shot() -> None:
    """The drain assembles a long backlog a few batches at a time (handing the GIL back in
    between); the result must be exactly the one-shot assembly."""
    from types import SimpleNamespace

    from lockgate.monitor.drain import DRAIN_STEP_BATCHES, Monitor

    ring = PredictionRing(10_000, ["x"], ["y"], (2, 1))
    batches, first = [], 0
    for i in range(3 * DRAIN_STEP_BATCHES + 5):
        sizes = [1 + i % 3, 2]
        batches.append(_batch(first, sizes))
        first += sum(sizes)
    whole = ring.assemble(batches, 7)
    version = SimpleNamespace(recorder=SimpleNamespace(ring=ring))
    stepwise = Monitor._assemble(version, batches, 7)  # type: ignore[arg-type]
    assert stepwise.dropped == whole.dropped == 7
    for name in ("ts", "request_id", "route", "inputs", "outputs", "latency", "queue", "first"):
        np.testing.assert_array_equal(getattr(stepwise, name), getattr(whole, name))
