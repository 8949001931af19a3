"""Categorical features and the open-ended range slots: detection, exact category frequencies,
the chi-square test against scipy, new categories, calibration and power on seeded data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from lockgate.monitor import bins, drift
from lockgate.monitor.kernels import divergence as dv
from lockgate.monitor.kernels import histogram as hist
from lockgate.monitor.metrics import render_metrics
from lockgate.monitor.snapshot import DriftSnapshot, Snapshot, VersionSnapshot

Array = np.ndarray[Any, Any]
MIX = np.array([0.4, 0.3, 0.2, 0.1])
CODES = np.array([0.0, 1.0, 2.0, 5.0])


def _config(**kw: Any) -> drift.DriftConfig:
    return drift.DriftConfig(**{"window_seconds": math.inf, **kw})


def _draw(rng: np.random.Generator, shape: tuple[int, ...], p: Array = MIX) -> Array:
    return rng.choice(CODES, size=shape, p=p)


def _window(profile: drift.ReferenceProfile, data: Array) -> Array:
    counts = hist.new_counts(profile.edges)
    hist.histogram_update(np.ascontiguousarray(data), profile.edges, profile.n_edges, counts)
    return counts


def _columns(profile: drift.ReferenceProfile, keep: int) -> drift.ReferenceProfile:
    p = profile
    return drift.ReferenceProfile(
        p.names[:keep],
        p.edges[:keep],
        p.n_edges[:keep],
        p.counts[:keep],
        p.norms[:keep],
        p.rows,
        p.categorical[:keep],
    )


def test_detection_takes_few_integer_values_and_honours_declarations() -> None:
    rng = np.random.default_rng(1)
    ref = np.column_stack(
        [
            _draw(rng, (500,)),  # 4 codes
            rng.integers(0, 21, 500).astype(float),  # 21 values: too many to guess
            rng.normal(size=500),  # continuous
            np.where(rng.random(500) < 0.1, np.nan, rng.integers(0, 2, 500)),  # flag with NaN
            np.full(500, 0.5),  # constant, not an integer
        ]
    )
    assert drift.build_profile(ref).categorical.tolist() == [True, False, False, True, False]
    declared = drift.build_profile(ref, categorical=[1, 4])
    assert declared.categorical.tolist() == [True, True, False, True, True]
    assert declared.bins.tolist()[1] == np.unique(ref[:, 1]).size  # one slot per category
    with pytest.raises(ValueError, match="categorical feature 5"):
        drift.build_profile(ref, categorical=[5])
    with pytest.raises(ValueError, match="65 categories"):
        bins.category_edges(np.arange(65.0))


def test_category_slots_count_exact_frequencies_and_everything_else_is_unseen() -> None:
    ref = np.array([[0.0], [1.0], [1.0], [5.0], [np.nan]])
    profile = drift.build_profile(ref)
    window = np.array([[0.0], [1.0], [1.0], [1.0], [5.0], [3.0], [1.5], [-1.0], [9.0], [np.inf]])
    counts = _window(profile, window)[0]
    m = int(profile.n_edges[0])
    finite = counts[: m + 1]
    known = finite[1::2]  # the slot of each category
    np.testing.assert_array_equal(known, [1, 3, 1])
    assert finite[0::2].sum() == 5  # -1 below, 1.5 and 3 between, 9 and inf above
    scores = drift.evaluate(profile, _config(min_rows=1), _window(profile, window)).scores[0]
    assert scores[dv.UNSEEN_SHARE] == 0.5
    assert math.isnan(scores[dv.KS]) and math.isnan(scores[dv.WASSERSTEIN])


def test_declared_fractional_categories_match_their_float32_inputs() -> None:
    """Reference data is float64, FP32 model inputs arrive as float32: 0.1 must stay 0.1."""
    rng = np.random.default_rng(6)
    codes = np.array([0.1, 0.2, 0.7, 1e10 + 0.5])
    profile = drift.build_profile(rng.choice(codes, size=(1000, 1)), categorical=[0])
    window = rng.choice(codes, size=(500, 1)).astype(np.float32)
    window[:5] = np.float32(0.15)
    cfg = _config(min_rows=1)
    scores = drift.evaluate(profile, cfg, _window(profile, window)).scores[0]
    assert scores[dv.UNSEEN_SHARE] == 0.01
    exact64 = drift.evaluate(profile, cfg, _window(profile, window.astype(np.float64)))
    assert exact64.scores[0, dv.UNSEEN_SHARE] == 0.01
    with pytest.raises(ValueError, match="too close"):
        bins.category_edges(np.array([0.1, np.float32(0.1)]))


@pytest.mark.parametrize("seed", range(4))
def test_chi2_distance_is_scipys_contingency_statistic_over_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = _draw(rng, (int(rng.integers(50, 5000)), 1))
    profile = drift.build_profile(ref)
    p = rng.dirichlet(np.ones(4))
    data = _draw(rng, (int(rng.integers(1, 3000)), 1), p)
    data[rng.random(data.shape) < 0.05] = 7.0  # an unseen category
    scores = drift.evaluate(profile, _config(min_rows=1), _window(profile, data)).scores[0]
    table = np.array([profile.counts[0, :-1], _window(profile, data)[0, :-1]])
    table = table[:, table.sum(axis=0) > 0]
    n, big_n = table[1].sum(), table[0].sum()
    want = stats.chi2_contingency(table, correction=False).statistic * (1 / n + 1 / big_n)
    assert scores[dv.CHI2] == pytest.approx(want, rel=1e-12)
    q, r = table[1] / n, table[0] / big_n
    assert scores[dv.TVD] == pytest.approx(0.5 * np.abs(q - r).sum(), rel=1e-12)


def test_a_new_category_on_a_tenth_of_rows_alerts_in_the_first_window() -> None:
    rng = np.random.default_rng(2)
    profile = drift.build_profile(_draw(rng, (20_000, 1)))
    monitor = drift.DriftMonitor(profile, _config(), clock=lambda: 0.0)
    data = _draw(rng, (1000, 1))
    data[:100] = 9.0  # a code the reference never had, above its largest one
    (report,) = monitor.update(data)
    assert report.window.alerting[0] and report.feature_alert[0]
    assert report.window.scores[0, dv.UNSEEN_SHARE] == 0.1
    assert report.window.chi2_alert[0] and report.window.fwer_alerting[0]


def test_a_continuous_value_beyond_the_reference_range_lands_in_its_own_slot() -> None:
    rng = np.random.default_rng(3)
    profile = drift.build_profile(rng.normal(size=(20_000, 1)))
    beyond = profile.edges[0, profile.n_edges[0] - 1]  # the double just above the maximum
    monitor = drift.DriftMonitor(profile, _config(), clock=lambda: 0.0)
    data = rng.normal(size=(1000, 1))
    data[:100] = beyond  # one new extreme value, just past the reference maximum
    (report,) = monitor.update(data)
    assert report.window.scores[0, dv.UNSEEN_SHARE] >= 0.1
    assert report.window.psi_alert[0] and report.feature_alert[0]
    assert profile.counts[0, 0] == 0 and profile.counts[0, profile.n_edges[0]] == 0


@pytest.mark.parametrize("rows", [100, 1000, 5000])
def test_categorical_false_alerts_at_most_one_percent(rows: int) -> None:
    """Every column is an independent reference of the same mix; window j samples it again."""
    rng = np.random.default_rng(rows)
    windows = 600 if rows < 5000 else 200
    profile = _columns(drift.build_profile(_draw(rng, (20_000, windows))), windows)
    counts = _window(profile, _draw(rng, (rows, windows)))
    scores = drift.evaluate(profile, _config(min_rows=min(rows, 100)), counts)
    assert profile.categorical.all() and scores.scored.all()
    assert scores.alerting.mean() <= 0.01
    assert scores.fwer_alerting.mean() <= 0.005


def test_a_five_point_category_move_is_caught_in_most_1000_row_windows() -> None:
    """0.4/0.3/0.2/0.1 -> 0.35/0.30/0.20/0.15: scipy's noncentral chi-square gives the test's
    power at n = 1000, N = 20,000 (df 3, alpha 0.001) as ~0.93; the TVD band (0.03 vs 0.05)
    costs a little more. Binned as continuous it was caught in under a quarter of windows."""
    rng = np.random.default_rng(4)
    windows = 400
    profile = _columns(drift.build_profile(_draw(rng, (20_000, windows))), windows)
    moved = np.array([0.35, 0.30, 0.20, 0.15])
    counts = _window(profile, _draw(rng, (1000, windows), moved))
    scores = drift.evaluate(profile, _config(), counts)
    n, big_n = 1000, 20_000
    lam = n * big_n / (n + big_n) * float(np.sum((moved - MIX) ** 2 / MIX))
    power = stats.ncx2.sf(stats.chi2.ppf(1 - 0.001, 3), 3, lam)
    assert power > 0.9
    assert scores.alerting.mean() >= 0.8


def test_unseen_share_is_exported_for_categorical_features_only() -> None:
    rng = np.random.default_rng(5)
    ref = np.column_stack([rng.normal(size=2000), _draw(rng, (2000,))])
    profile = drift.build_profile(ref, names=["x", "code"])
    monitor = drift.DriftMonitor(profile, _config(window_rows=200), clock=lambda: 0.0)
    data = np.column_stack([rng.normal(size=200) + 9.0, _draw(rng, (200,))])
    data[:50, 1] = 3.0  # not a reference category
    (report,) = monitor.update(data)
    st = monitor.state
    snap = Snapshot(
        monitored=True,
        versions={
            ("m", "1"): VersionSnapshot(
                drift={
                    "input": DriftSnapshot(
                        names=profile.names,
                        alert=st.feature_alert,
                        scores=st.last_scores,
                        windows=st.windows,
                        share=st.share,
                        dataset_alert=st.dataset_alert,
                        counts=monitor.cumulative_counts,
                        categorical=profile.categorical,
                    )
                }
            )
        },
    )
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(snap).decode())}
    (sample,) = families["lockgate_drift_unseen_share"].samples
    assert sample.labels["feature"] == "code" and sample.value == 0.25
    stats_of = {
        (s.labels["feature"], s.labels["statistic"]): s.value
        for s in families["lockgate_drift_score"].samples
    }
    assert stats_of[("x", "unseen_share")] > 0.9  # out of range: in the score, not the family
    assert ("code", "ks") not in stats_of and ("x", "tvd") not in stats_of
    assert stats_of[("code", "tvd")] == report.window.scores[1, dv.TVD]
