"""The id -> (prediction, time) window that labels are joined against: every id of the newest
half window is found with its own prediction and time, ids older than two half windows are
forgotten, and the index is built only from what was added (against a plain dict); and the
predictions a drain adds are its own, not views of the ring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import FeedbackResult, Monitor, RecentPredictions
from tests.monitor.recording import SPEC, record_rows


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


def test_labels_find_the_predictions_of_drained_rows_after_the_ring_is_reused(
    tmp_path: Path,
) -> None:
    """A drain keeps each request's prediction apart from the ring's memory: after both of
    the ring's column sets have been filled again, labels still meet the predictions their
    requests were given (single-row requests, where no row is picked, and multi-row ones)."""

    async def scenario() -> None:
        config = MonitorConfig(predlog=False, ring_rows=64, feedback_window=1000)
        monitor = Monitor(config, tmp_path)
        monitor.attach(SPEC)
        record_rows(monitor, 0, 10)  # y = i for request r{i}
        await monitor.drain()
        recorder = monitor.versions[("m", "1")].recorder
        x = np.array([[100, 100], [101, 101], [102, 102]], np.float32)
        metas = [recorder.meta("multi", "m", "", 0), recorder.meta("single", "m", "", 0)]
        recorder.record({"x": x}, {"y": x[:, :1]}, metas, [2, 1], [0, 0], 0)
        await monitor.drain()
        for first in (200, 300, 400):  # every set of the ring written over
            record_rows(monitor, first, 40)
            await monitor.drain()
        labels = [(f"r{i}", float(i)) for i in range(10)] + [("multi", 100.0), ("single", 7.0)]
        assert await monitor.submit_feedback(labels) == FeedbackResult(matched=12, unknown=0)
        accuracy = monitor.versions[("m", "1")].accuracy
        assert (accuracy.labelled, accuracy.correct) == (12, 11)  # y of "single" was 102
        assert accuracy.abs_error_sum == 95.0
        await monitor.close()

    asyncio.run(scenario())
