"""Snapshots survive the wire bit for bit and merge by the documented rules."""

from __future__ import annotations

from collections import Counter

import msgpack
import numpy as np

from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import (
    LABEL_DELAY_BOUNDS,
    DriftSnapshot,
    Snapshot,
    VersionSnapshot,
    label_delay_counts,
    merged,
)

KEY = ("m", "1")


def _snapshot(seed: int, revision: int, alert: bool) -> Snapshot:
    rng = np.random.default_rng(seed)
    latency = LatencySketch()
    latency.add(rng.exponential(0.002, size=500))
    drift = DriftSnapshot(
        names=("a", "b"),
        alert=np.array([alert, False]),
        scores=np.where(rng.random((2, 8)) < 0.2, np.nan, rng.random((2, 8))),
        windows=seed,
        share=0.5 if alert else 0.0,
        dataset_alert=alert,
        counts=rng.integers(0, 50, size=(2, 7)),
        categorical=np.array([False, True]),
    )
    return Snapshot(
        revision=revision,
        requests=Counter({("e", "stable", "m", "1", "http", "ok"): 10 * seed}),
        weights={("e", "stable", "m", "1"): 100.0 - revision},
        loaded={KEY},
        batch={KEY: Counter(batches=seed, rows=2 * seed)},
        queued_rows=Counter({KEY: seed}),
        monitored=True,
        versions={
            KEY: VersionSnapshot(
                latency={("e", "stable"): latency},
                rows=seed,
                drift={"input": drift},
                label_delay=label_delay_counts(rng.exponential(900.0, size=40 * seed)),
                label_delay_sum=12.5 * seed,
            )
        },
        feedback_unknown=seed,
    )


def test_wire_round_trip_is_exact() -> None:
    snap = _snapshot(3, 7, True)
    back = Snapshot.from_bytes(snap.to_bytes())
    assert back.to_bytes() == snap.to_bytes()
    categorical = back.versions[KEY].drift["input"].categorical
    assert categorical is not None and categorical.dtype == np.bool_
    assert categorical.tolist() == [False, True]
    assert (
        back.versions[KEY].latency[("e", "stable")] == snap.versions[KEY].latency[("e", "stable")]
    )
    delay = back.versions[KEY].label_delay
    assert delay.tolist() == snap.versions[KEY].label_delay.tolist() and delay.sum() == 120
    assert back.versions[KEY].label_delay_sum == 37.5


def test_a_snapshot_without_label_delays_reads_as_none_seen() -> None:
    """From a process that predates the label delay histogram (same wire format)."""
    doc = msgpack.unpackb(_snapshot(3, 7, True).to_bytes(), raw=False, strict_map_key=False)
    for *_, version in doc["versions"]:
        del version["label_delay"], version["label_delay_sum"]
    back = Snapshot.from_bytes(msgpack.packb(doc, use_bin_type=True))
    delay = back.versions[KEY].label_delay
    assert delay.tolist() == [0] * (len(LABEL_DELAY_BOUNDS) + 1)
    assert back.versions[KEY].label_delay_sum == 0.0
    total = merged([back, _snapshot(1, 2, False)])
    assert total.versions[KEY].label_delay.sum() == 40


def test_merge_adds_counts_and_applies_the_rules_to_point_values() -> None:
    a, b = _snapshot(1, 5, False), _snapshot(2, 4, True)
    total = merged([a, b])
    assert total.processes == 2
    assert total.requests == a.requests + b.requests
    assert total.revision == 4 and total.weights == b.weights  # the laggard's view
    assert total.batch[KEY] == a.batch[KEY] + b.batch[KEY]
    va, vb, vt = a.versions[KEY], b.versions[KEY], total.versions[KEY]
    expected = va.latency[("e", "stable")].copy()
    expected.merge(vb.latency[("e", "stable")])
    assert vt.latency[("e", "stable")] == expected
    da, db, dt = va.drift["input"], vb.drift["input"], vt.drift["input"]
    assert np.array_equal(dt.counts, da.counts + db.counts)
    assert dt.alert.tolist() == [True, False] and dt.dataset_alert
    assert np.array_equal(dt.scores, np.fmax(da.scores, db.scores), equal_nan=True)
    assert dt.windows == 3
    assert np.array_equal(vt.label_delay, va.label_delay + vb.label_delay)
    assert vt.label_delay_sum == va.label_delay_sum + vb.label_delay_sum == 37.5
    assert dt.categorical is not None and dt.categorical.tolist() == [False, True]
    # merging does not change its inputs
    assert np.array_equal(a.versions[KEY].drift["input"].counts, da.counts)


def test_counters_keep_only_what_adds_up() -> None:
    gone = _snapshot(2, 4, True).counters()
    live = _snapshot(1, 9, False)
    total = merged([gone, live])
    assert total.processes == 1 and total.revision == 9 and total.weights == live.weights
    assert total.queued_rows == live.queued_rows and total.loaded == live.loaded
    assert total.requests[("e", "stable", "m", "1", "http", "ok")] == 30
    assert not total.versions[KEY].drift["input"].dataset_alert
