"""Snapshots survive the wire bit for bit and merge by the documented rules."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import DriftSnapshot, Snapshot, VersionSnapshot, merged

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
                latency={("e", "stable"): latency}, rows=seed, drift={"input": drift}
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
