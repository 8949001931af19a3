"""The one-call fold of a slice into drift windows (kernels/window.py) against the step-by-step
path: each window's histogram built on its own, scored by `drift.evaluate` (exact KS and
Wasserstein from its rows, or binned after a merge) and the alert streaks written out in numpy;
and a monitor that builds no reports (the drain's) against one that builds them all."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from lockgate.monitor import drift
from lockgate.monitor.kernels import divergence as dv
from lockgate.monitor.kernels import histogram as hist
from lockgate.monitor.kernels import window as wn

Array = np.ndarray[Any, Any]


def _reference(rng: np.random.Generator, features: int) -> Array:
    """Continuous, constant, categorical, NaN-laden and infinite columns."""
    ref = rng.normal(size=(int(rng.integers(300, 4000)), features))
    ref[:, 0] = np.round(ref[:, 0], 1)  # heavy ties
    if features > 1:
        ref[:, 1] = 2.5  # a constant column
    if features > 2:
        ref[:, 2] = rng.choice([0, 1, 2, 7], size=ref.shape[0], p=[0.4, 0.3, 0.2, 0.1])
    if features > 3:
        ref[rng.random(ref.shape[0]) < 0.3, 3] = np.nan
        ref[:5, 3] = [np.inf, -np.inf, 1e300, -0.0, 0.0]
    return ref


def _slice(rng: np.random.Generator, rows: int, features: int, shift: float) -> Array:
    data = rng.normal(shift, rng.uniform(0.5, 2.0), size=(rows, features))
    data[rng.random(data.shape) < 0.05] = np.nan
    if features > 1:
        data[:, 1] = rng.choice([2.5, 2.5, 2.5, -1.0], size=rows)
    if features > 2:
        data[:, 2] = rng.choice([0, 1, 2, 7, 9], size=rows, p=rng.dirichlet(np.ones(5)))
    if features > 3 and rows:
        data[rng.random(rows) < 0.02, 3] = rng.choice([np.inf, -np.inf, 1e300])
    return data


class StepByStep:
    """The expected reports: windows split in numpy, each scored by `evaluate`, streaks in numpy."""

    def __init__(self, profile: drift.ReferenceProfile, config: drift.DriftConfig) -> None:
        self.profile, self.config = profile, config
        f = profile.n_features
        self.rows = np.empty((0, f))
        self.merged = hist.new_counts(profile.edges)
        self.on, self.hits, self.misses = (np.zeros(f, bool), *np.zeros((2, f), np.int64))
        self.ds = [False, 0, 0]

    def add(self, data: Array) -> list[tuple[drift.WindowScores, Array, bool]]:
        self.rows = np.concatenate([self.rows, data.astype(np.float64)])
        out = []
        size = self.config.window_rows - int(self.merged[0].sum())
        while self.rows.shape[0] >= size:
            window, self.rows = self.rows[:size], self.rows[size:]
            counts = self.merged.copy()
            hist.histogram_update(window, self.profile.edges, self.profile.n_edges, counts)
            exact = None if self.merged.any() else window
            scores = drift.evaluate(self.profile, self.config, counts, exact)
            self._step(scores)
            out.append((scores, self.on.copy(), bool(self.ds[0])))
            self.merged = hist.new_counts(self.profile.edges)
            size = self.config.window_rows
        return out

    def _step(self, w: drift.WindowScores) -> None:
        cfg, hit, seen = self.config, w.alerting, w.scored
        miss = seen & ~hit
        self.hits = np.where(hit, self.hits + 1, np.where(miss, 0, self.hits))
        self.misses = np.where(miss, self.misses + 1, np.where(hit, 0, self.misses))
        self.on = (self.on | (self.hits >= cfg.alert_after)) & ~(self.misses >= cfg.clear_after)
        on, hits, misses = self.ds
        if w.dataset_alerting:
            hits, misses = hits + 1, 0
        elif seen.any():
            hits, misses = 0, misses + 1
        self.ds = [(on or hits >= cfg.alert_after) and not misses >= cfg.clear_after, hits, misses]


FIELDS = (
    "counts", "rows", "finite", "scores", "psi_floor", "ks_floor", "scored", "psi_warn",
    "alerting", "psi_alert", "ks_alert", "chi2_alert", "fwer_alerting", "dataset_alerting",
)  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_fold_matches_window_by_window_scoring(seed: int) -> None:
    rng = np.random.default_rng(seed)
    features = int(rng.integers(1, 9))
    profile = drift.build_profile(_reference(rng, features))
    config = drift.DriftConfig(
        window_rows=int(rng.choice([100, 250, 1000])),
        window_seconds=math.inf,
        min_rows=int(rng.integers(1, 100)),
        alert_after=int(rng.integers(1, 3)),
        clear_after=int(rng.integers(1, 4)),
        dataset_share=float(rng.choice([0.3, 0.5, 1.0])),
    )
    monitor = drift.DriftMonitor(profile, config, clock=lambda: 0.0)
    quiet = drift.DriftMonitor(profile, config, clock=lambda: 0.0)  # the drain's way: no reports
    expected = StepByStep(profile, config)
    index = merges = 0
    for step in range(30):
        rows = int(rng.choice([0, 1, 7, config.window_rows, int(rng.integers(0, 5000))]))
        shift = float(rng.choice([0.0, 0.0, 0.3, 2.0]))
        data = _slice(rng, rows, features, shift)
        if step % 2:
            with np.errstate(over="ignore"):  # 1e300 is +inf in float32, as the ring has it
                data = data.astype(np.float32)
        room = config.window_rows - monitor.state.open_rows
        if step >= 11 and room >= 2 and not expected.merged.any() and step % 11 == 0:
            # another worker's open window, added without filling this one: scored on bins
            foreign = hist.new_counts(profile.edges)
            part = _slice(rng, room // 2, features, 0.0)
            hist.histogram_update(part, profile.edges, profile.n_edges, foreign)
            expected.merged += foreign
            expected.rows = np.empty((0, features))  # rows already held are binned too
            held = monitor.window_counts
            expected.merged += held
            assert monitor.merge_window(foreign) == [] and quiet.merge_window(foreign) == []
            merges += 1
        want = expected.add(data.astype(np.float64) if data.dtype == np.float32 else data)
        got = monitor.update(data)
        assert len(got) == len(want)
        for report, (scores, on, dataset_on) in zip(got, want, strict=True):
            assert report.index == index and report.closed_by == "rows"
            for name in FIELDS:
                np.testing.assert_array_equal(
                    getattr(report.window, name), getattr(scores, name), err_msg=name
                )
            for share in ("share", "share_fwer"):
                np.testing.assert_array_equal(getattr(report.window, share), getattr(scores, share))
            np.testing.assert_array_equal(report.feature_alert, on)
            assert report.dataset_alert == dataset_on
            index += 1
        assert quiet.update(data, reports=False) == []
        np.testing.assert_equal(dataclasses.asdict(quiet.state), dataclasses.asdict(monitor.state))
        assert json.dumps(quiet.report()) == json.dumps(monitor.report())
    assert merges and index  # both kinds of window were closed
    state = monitor.state
    np.testing.assert_array_equal(state.feature_alert, expected.on)
    np.testing.assert_array_equal(state.alert_streak, expected.hits)
    np.testing.assert_array_equal(state.clean_streak, expected.misses)
    assert state.open_rows == expected.rows.shape[0] + int(expected.merged[0].sum())


def test_a_slice_of_many_windows_gives_scipy_ks_in_each() -> None:
    rng = np.random.default_rng(42)
    reference = rng.normal(size=(5000, 2))
    profile = drift.build_profile(reference)
    monitor = drift.DriftMonitor(
        profile, drift.DriftConfig(window_rows=300, window_seconds=math.inf), clock=lambda: 0.0
    )
    data = rng.normal(0.2, 1.0, size=(300 * 7 + 11, 2))
    reports = monitor.update(data)
    assert [r.window.rows for r in reports] == [300] * 7 and monitor.state.open_rows == 11
    for k, report in enumerate(reports):
        for f in range(2):
            window = data[300 * k : 300 * (k + 1), f]
            want = stats.ks_2samp(reference[:, f], window).statistic
            assert report.window.scores[f, dv.KS] == pytest.approx(want, abs=1e-12)
    np.testing.assert_array_equal(monitor.cumulative_counts.sum(axis=1), np.full(2, data.shape[0]))


def test_windows_closed_counts_every_boundary_crossed() -> None:
    assert wn.windows_closed(0, 0, 1000) == 0
    assert wn.windows_closed(999, 1, 1000) == 1
    assert wn.windows_closed(500, 2600, 1000) == 3
    assert wn.windows_closed(0, 999, 1000) == 0
