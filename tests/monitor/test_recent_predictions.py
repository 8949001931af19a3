"""The id -> (prediction, time) window that labels are joined against: every id of the newest
half window is found with its own prediction and time, ids older than two half windows are
forgotten, and the index is built only from what was added (against a plain dict)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.monitor.drain import RecentPredictions


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(2, 40),
    chunks=st.lists(st.integers(1, 15), max_size=12),
    lookups_between=st.booleans(),
)
def test_window_against_a_dict(capacity: int, chunks: list[int], lookups_between: bool) -> None:
    recent = RecentPredictions(capacity)
    half = max(1, capacity // 2)
    young: dict[bytes, tuple[tuple[str, str], float, float]] = {}  # the rule, as plain dicts
    old: dict[bytes, tuple[tuple[str, str], float, float]] = {}
    young_rows = next_id = 0
    every_id: list[bytes] = []
    for i, size in enumerate(chunks):
        key = ("m", str(i % 2))
        ids = [f"id{next_id + j}".encode() for j in range(size)]
        predictions = np.arange(next_id, next_id + size, dtype=np.float32) / 2
        ts = 1.7e9 + np.arange(next_id, next_id + size, dtype=np.float64) / 3
        recent.add(key, np.array(ids, dtype="S32"), predictions, ts)
        young.update(
            {r: (key, float(p), float(t)) for r, p, t in zip(ids, predictions, ts, strict=True)}
        )
        young_rows += size
        if young_rows >= half:
            old, young, young_rows = young, {}, 0
        every_id += ids
        next_id += size
        if lookups_between:  # an index built early must still see later additions
            assert recent.get(ids[-1]) == {**old, **young}.get(ids[-1])
    expected = {**old, **young}
    for request_id in [*every_id, b"never-sent"]:
        assert recent.get(request_id) == expected.get(request_id)
