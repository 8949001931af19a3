"""Label delay (prediction -> label) where labels are joined to predictions: each joined label
lands in the bucket of its delay (checked against a bisect over the bounds), the counts and the
sum reach /metrics as a Prometheus histogram per version, and correct labels are counted."""

from __future__ import annotations

import asyncio
import bisect
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import Monitor
from lockgate.monitor.metrics import capture_monitor, render_metrics
from lockgate.monitor.snapshot import LABEL_DELAY_BOUNDS, Snapshot, label_delay_counts
from lockgate.types import ModelSpec, TensorSpec

SPEC = ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 1)),))
KEY = ("m", "1")
# one delay in each bucket's range, on both sides of some bounds, and beyond the last
DELAYS = [0.0, 0.2, 1.0, 1.5, 5.0, 14.0, 59.0, 61.0, 899.0, 3600.0, 7300.0, 86400.0, 700000.0, 1e7]


def _record(monitor: Monitor, count: int) -> None:
    recorder = monitor.versions[KEY].recorder
    values = np.arange(count, dtype=np.float32)
    recorder.record(
        {"x": np.stack([values, values], axis=1)},
        {"y": (values % 2).reshape(-1, 1)},
        [recorder.meta(f"r{i}", "m", "", 0) for i in range(count)],
        [1] * count,
        [0] * count,
        0,
    )


def _bucket(delay: float) -> int:
    """The bucket a delay belongs in: the first bound it does not exceed (else the last)."""
    return bisect.bisect_left(LABEL_DELAY_BOUNDS, delay)


@pytest.fixture
def joined(tmp_path: Path) -> Monitor:
    """A monitor with len(DELAYS) + 1 predictions drained and labelled: request i after
    DELAYS[i] seconds (the last one 5 s *before* its prediction: another host's clock)."""

    async def scenario() -> Monitor:
        monitor = Monitor(MonitorConfig(predlog=False), tmp_path)
        monitor.attach(SPEC)
        _record(monitor, len(DELAYS) + 1)
        await monitor.drain()
        return monitor

    monitor = asyncio.run(scenario())
    recent = monitor.versions[KEY].recent
    assert recent is not None
    ts = dict(zip(recent.request_id.tolist(), recent.ts.tolist(), strict=True))
    for i, delay in enumerate(DELAYS):  # label = prediction for even ids only
        result = monitor.feedback([(f"r{i}", 0.0)], now=ts[f"r{i}".encode()] + delay)
        assert result.matched == 1
    last = len(DELAYS)
    monitor.feedback([(f"r{last}", 1.0), ("nobody", 1.0)], now=ts[f"r{last}".encode()] - 5.0)
    return monitor


def test_each_label_lands_in_the_bucket_of_its_delay(joined: Monitor) -> None:
    accuracy = joined.versions[KEY].accuracy
    expected = np.zeros(len(LABEL_DELAY_BOUNDS) + 1, np.int64)
    for delay in [*DELAYS, 0.0]:  # the label from the future counts as no delay
        expected[_bucket(delay)] += 1
    assert accuracy.delay_counts.tolist() == expected.tolist()
    assert accuracy.delay_sum == pytest.approx(sum(DELAYS), rel=1e-9)
    assert accuracy.labelled == len(DELAYS) + 1 and joined.feedback_unknown == 1
    predictions = [i % 2 for i in range(len(DELAYS))] + [len(DELAYS) % 2]
    labels = [0.0] * len(DELAYS) + [1.0]
    assert accuracy.correct == sum(p == y for p, y in zip(predictions, labels, strict=True))


def test_the_histogram_reaches_metrics(joined: Monitor) -> None:
    snap = Snapshot(monitored=True)
    capture_monitor(snap, joined)
    again = Snapshot.from_bytes(snap.to_bytes())  # and survives the wire to the admin process
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(again).decode())}
    delay = families["lockgate_label_delay_seconds"]
    assert delay.type == "histogram"
    buckets = {
        float(s.labels["le"]): s.value
        for s in delay.samples
        if s.name.endswith("_bucket") and s.labels["model"] == "m"
    }
    counts = joined.versions[KEY].accuracy.delay_counts
    expected = np.cumsum(counts).tolist()
    assert [buckets[b] for b in LABEL_DELAY_BOUNDS] == expected[:-1]
    assert buckets[float("inf")] == expected[-1] == len(DELAYS) + 1
    total = {s.name: s.value for s in delay.samples if not s.name.endswith("_bucket")}
    assert total["lockgate_label_delay_seconds_count"] == len(DELAYS) + 1
    assert total["lockgate_label_delay_seconds_sum"] == pytest.approx(sum(DELAYS))
    correct = families["lockgate_feedback_correct"].samples[0]
    assert correct.name == "lockgate_feedback_correct_total"
    assert correct.value == joined.versions[KEY].accuracy.correct


def test_counts_are_one_pass_over_the_array() -> None:
    rng = np.random.default_rng(2)
    delays = np.concatenate([rng.exponential(600.0, 5000), LABEL_DELAY_BOUNDS, [0.0, 1e9]])
    counts = label_delay_counts(delays)
    expected = np.zeros(len(LABEL_DELAY_BOUNDS) + 1, np.int64)
    for delay in delays.tolist():
        expected[_bucket(delay)] += 1
    assert counts.tolist() == expected.tolist() and counts.dtype == np.int64
    assert label_delay_counts(np.zeros(0)).tolist() == [0] * (len(LABEL_DELAY_BOUNDS) + 1)
