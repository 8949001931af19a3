"""Exact KS and Wasserstein per window against scipy on adversarial data: ties, constant
columns, NaN, infinities, signed zeros, tiny windows, subsampled references."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from lockgate.monitor import drift, reference
from lockgate.monitor.kernels import divergence as dv
from lockgate.monitor.kernels import exact

Array = np.ndarray[Any, Any]
INF = math.inf
# scipy's p-value for tiny samples warns (a division by zero); only its statistic is used here.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _ties(rng: np.random.Generator, n: int) -> Array:
    return rng.integers(0, 3, n).astype(np.float64) * 0.5


def _mixed(rng: np.random.Generator, n: int) -> Array:
    """Normal values with a point mass, signed zeros, infinities and huge magnitudes."""
    x = rng.normal(size=n)
    pick = rng.random(n)
    x[pick < 0.2] = 0.0
    x[(pick >= 0.2) & (pick < 0.25)] = -0.0
    x[(pick >= 0.25) & (pick < 0.27)] = INF
    x[(pick >= 0.27) & (pick < 0.29)] = -INF
    x[(pick >= 0.29) & (pick < 0.3)] = 1e300
    return x


KINDS: dict[str, Callable[[np.random.Generator, int], Array]] = {
    "normal": lambda rng, n: rng.normal(size=n),
    "ties": _ties,
    "constant": lambda rng, n: np.full(n, 2.5),
    "pareto": lambda rng, n: rng.pareto(0.8, n),
    "mixed": _mixed,
}


def _sorted(x: Array) -> Array:
    return np.sort(x[~np.isnan(x)])


def _pairs() -> list[tuple[str, str, int, int, int]]:
    sizes = [(1, 1), (1, 7), (2, 3), (5, 5), (50, 13), (1000, 100), (3000, 1000)]
    kinds = list(KINDS)
    return [(a, b, n, m, i) for i, (n, m) in enumerate(sizes) for a in kinds for b in kinds]


@pytest.mark.parametrize(("ref_kind", "win_kind", "n", "m", "seed"), _pairs())
def test_ks_and_wasserstein_match_scipy(
    ref_kind: str, win_kind: str, n: int, m: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = _sorted(KINDS[ref_kind](rng, n))
    b = _sorted(KINDS[win_kind](rng, m) + rng.choice([0.0, 0.5]))
    ks = exact.ks_sorted(a, b)
    assert ks == pytest.approx(stats.ks_2samp(a, b, method="asymp").statistic, abs=1e-15)
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    w = exact.wasserstein_sorted(a, b)
    if fa.size == 0 or fb.size == 0:
        assert math.isnan(w)
    else:
        want = stats.wasserstein_distance(fa, fb)
        assert w == pytest.approx(want, rel=1e-9, abs=1e-12 * max(1.0, float(np.abs(fa).max())))


def test_empty_sides_are_nan_and_identical_samples_are_zero() -> None:
    x = np.array([-INF, -1.0, 0.0, 0.0, 3.0, INF])
    assert exact.ks_sorted(x, x) == 0.0 and exact.wasserstein_sorted(x, x) == 0.0
    empty = np.empty(0)
    assert math.isnan(exact.ks_sorted(x, empty)) and math.isnan(exact.ks_sorted(empty, x))
    assert math.isnan(exact.wasserstein_sorted(np.array([INF]), x))
    assert exact.ks_sorted(np.array([-INF]), np.array([INF])) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_monitor_windows_are_scored_exactly_against_the_reference(seed: int) -> None:
    """Through a real monitor: NaN in reference and window, windows of 1 to 400 rows."""
    rng = np.random.default_rng(seed)
    ref = np.column_stack([KINDS[k](rng, 3000) for k in KINDS])
    ref[rng.random(ref.shape) < 0.05] = np.nan
    profile = drift.build_profile(ref)
    assert not profile.categorical.any()
    rows = int(rng.choice([1, 2, 17, 400]))
    cfg = drift.DriftConfig(window_rows=rows, min_rows=1, window_seconds=INF)
    monitor = drift.DriftMonitor(profile, cfg, clock=lambda: 0.0)
    window = np.column_stack([KINDS[k](rng, rows) * 1.1 for k in KINDS])
    window[rng.random(window.shape) < 0.1] = np.nan
    (report,) = monitor.update(window)
    for f in range(len(KINDS)):
        a, b = _sorted(ref[:, f] + 0.0), _sorted(window[:, f])
        ks, w = report.window.scores[f, dv.KS], report.window.scores[f, dv.WASSERSTEIN]
        if b.size == 0:
            assert math.isnan(ks) and math.isnan(w)
            continue
        assert ks == pytest.approx(stats.ks_2samp(a, b, method="asymp").statistic, abs=1e-15)
        fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
        if fb.size:
            want = stats.wasserstein_distance(fa, fb) / profile.norms[f]
            assert w == pytest.approx(want, rel=1e-9)


def test_a_subsampled_reference_moves_ks_by_at_most_one_over_the_sample() -> None:
    rng = np.random.default_rng(7)
    ref = np.column_stack([rng.normal(size=50_000), _ties(rng, 50_000)])
    samples, n_samples = reference.sorted_samples(ref, np.array([True, True]), limit=500)
    assert n_samples.tolist() == [500, 500]
    for f in range(2):
        for shift in (0.0, 0.05, 0.3):
            window = np.sort(ref[:1000, f] + shift)
            full = stats.ks_2samp(ref[:, f], window).statistic
            assert abs(exact.ks_sorted(samples[f], window) - full) <= 1 / 500


def test_merged_foreign_counts_make_the_window_binned() -> None:
    rng = np.random.default_rng(8)
    profile = drift.build_profile(rng.normal(size=(5000, 2)))
    cfg = drift.DriftConfig(window_rows=400, window_seconds=INF)
    own = drift.DriftMonitor(profile, cfg, clock=lambda: 0.0)
    other = drift.DriftMonitor(profile, cfg, clock=lambda: 0.0)
    other.update(rng.normal(0.3, 1.0, size=(150, 2)))
    own.update(rng.normal(0.3, 1.0, size=(250, 2)))
    (report,) = own.merge_window(other.window_counts)
    binned = drift.evaluate(profile, cfg, report.window.counts)
    np.testing.assert_array_equal(report.window.scores, binned.scores)
    (again,) = own.update(rng.normal(size=(400, 2)))  # the next window has all its rows again
    assert not np.array_equal(
        again.window.scores, drift.evaluate(profile, cfg, again.window.counts).scores
    )


def test_profiles_keep_their_sample_on_disk_and_drop_it_on_the_wire() -> None:
    rng = np.random.default_rng(9)
    ref = np.column_stack([rng.normal(size=900), rng.integers(0, 3, 900)])
    ref[::10, 0] = np.nan
    profile = drift.build_profile(ref)
    assert profile.n_samples.tolist() == [810, 0]  # categorical: no sample
    np.testing.assert_array_equal(profile.samples[0, :810], np.sort(ref[~np.isnan(ref[:, 0]), 0]))
    back = drift.ReferenceProfile.from_npz_bytes(profile.to_npz_bytes())
    for name in ("samples", "n_samples", "categorical"):
        assert np.array_equal(getattr(back, name), getattr(profile, name), equal_nan=True)
    light = drift.ReferenceProfile.from_npz_bytes(profile.to_npz_bytes(samples=False))
    assert not light.has_samples and light.samples.shape == (2, 0)
    assert len(profile.to_npz_bytes(samples=False)) < len(profile.to_npz_bytes()) / 2


def test_exact_statistics_remove_the_binning_bias() -> None:
    """The binned Wasserstein overstated the exact one and the binned KS understated it; the
    monitor's scores now equal scipy's on the window's own rows (normal data, 10 bins)."""
    rng = np.random.default_rng(10)
    ref = rng.normal(size=(20_000, 1))
    profile = drift.build_profile(ref)
    cfg = drift.DriftConfig(window_rows=1000, window_seconds=INF)
    monitor = drift.DriftMonitor(profile, cfg, clock=lambda: 0.0)
    window = rng.normal(0.1, 1.0, size=(20_000, 1))
    exact_ks, exact_w, binned_ks, binned_w = [], [], [], []
    for report in monitor.update(window):
        exact_ks.append(report.window.scores[0, dv.KS])
        exact_w.append(report.window.scores[0, dv.WASSERSTEIN])
        binned = drift.evaluate(profile, cfg, report.window.counts).scores[0]
        binned_ks.append(binned[dv.KS])
        binned_w.append(binned[dv.WASSERSTEIN])
    scipy_ks = [
        stats.ks_2samp(ref[:, 0], window[i : i + 1000, 0]).statistic for i in range(0, 20_000, 1000)
    ]
    np.testing.assert_allclose(exact_ks, scipy_ks, atol=1e-15)
    assert np.mean(binned_ks) < np.mean(exact_ks)  # binning only ever loses KS
    assert np.mean(binned_w) > np.mean(exact_w)
