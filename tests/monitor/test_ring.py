"""The prediction ring against a plain list: every row taken exactly once, in order, and rows
overwritten before the drain saw them counted as dropped."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.monitor.ring import ID_BYTES, PredictionRing, id_key


def _batch(start: int, rows: int) -> dict[str, np.ndarray]:
    seq = np.arange(start, start + rows)
    return {
        "ts": seq.astype(np.float64),
        "request_id": np.array([str(i).encode() for i in seq], dtype="S32"),
        "route": (seq % 7).astype(np.int16),
        "inputs": np.stack([seq, -seq, seq * 2], axis=1).astype(np.float32),
        "outputs": seq[:, None].astype(np.float32),
        "latency": seq.astype(np.float32),
        "queue": seq.astype(np.float32) / 2,
        "first": seq % 3 == 0,
    }


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 40),
    ops=st.lists(st.one_of(st.integers(1, 60), st.just(0)), max_size=40),
)
def test_ring_matches_a_list(capacity: int, ops: list[int]) -> None:
    """ops: n > 0 appends n rows, 0 takes everything new."""
    ring = PredictionRing(capacity, 3, 1)
    written = taken = dropped = 0
    for op in [*ops, 0]:
        if op:
            batch = _batch(written, op)
            ring.append(**batch)
            written += op
            continue
        piece = ring.take()
        expected_rows = min(written - taken - dropped, capacity)
        dropped += piece.dropped
        first = written - expected_rows
        want = _batch(first, expected_rows)
        assert piece.rows == expected_rows
        for name, column in want.items():
            np.testing.assert_array_equal(getattr(piece, name), column)
        taken += piece.rows
    assert taken + dropped == written and ring.dropped == dropped


def test_scalars_broadcast_and_empty_feature_sides() -> None:
    ring = PredictionRing(8, 0, 2)
    ring.append(
        ts=5.0,
        request_id=np.array([b"a", b"b", b"c"], dtype="S32"),
        route=3,
        inputs=np.zeros((3, 0), np.float32),
        outputs=np.ones((3, 2), np.float32),
        latency=0.25,
        queue=0.0,
        first=True,
    )
    piece = ring.take()
    assert piece.ts.tolist() == [5.0] * 3 and piece.route.tolist() == [3] * 3
    assert piece.inputs.shape == (3, 0) and piece.latency.tolist() == [0.25] * 3


def test_long_ids_are_digested_consistently() -> None:
    assert id_key("short-id") == b"short-id"
    long = "x" * 100
    assert len(id_key(long)) == ID_BYTES and id_key(long) == id_key(long) != id_key(long + "y")
