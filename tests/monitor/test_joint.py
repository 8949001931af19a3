"""Joint drift: the RFF kernel against a plain numpy RFF-MMD, the profile, the windows, the
false-alarm rate on clean data and the catch rate of a correlation flip with equal marginals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from lockgate.monitor.drift import DriftConfig
from lockgate.monitor.joint import JointMonitor
from lockgate.monitor.joint_profile import (
    ALPHA,
    JointProfile,
    build_joint_profile,
    joint_columns,
    null_quantile,
)
from lockgate.monitor.kernels.rff import CLIP, rff_update
from lockgate.monitor.profiles import VersionProfiles
from lockgate.monitor.reference import build_profile


def correlated(rng: np.random.Generator, rows: int, features: int, rho: float) -> np.ndarray:
    """Standard normal columns; columns 0 and 1 bivariate normal with correlation `rho` (the
    marginals do not depend on `rho`)."""
    x = rng.standard_normal((rows, features))
    x[:, 1] = rho * x[:, 0] + math.sqrt(1.0 - rho**2) * x[:, 1]
    return x


def numpy_embedding(profile: JointProfile, values: np.ndarray) -> tuple[np.ndarray, int]:
    """The same RFF mean embedding, written plainly: standardise, project, cosine, average."""
    x = (values[:, profile.columns].astype(np.float64) - profile.center) * profile.scale
    x = np.clip(x[np.isfinite(x).all(axis=1)], -CLIP, CLIP)
    z = math.sqrt(2.0 / profile.features) * np.cos(x @ profile.omega + profile.phase)
    return z.mean(axis=0), x.shape[0]


@pytest.fixture(scope="module")
def profile8() -> JointProfile:
    reference = correlated(np.random.default_rng(11), 20_000, 8, 0.8)
    profile = build_joint_profile(reference, [f"x{i}" for i in range(8)], np.ones(8, np.bool_))
    assert profile is not None
    return profile


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_matches_numpy_on_adversarial_rows(profile8: JointProfile, dtype: type) -> None:
    rng = np.random.default_rng(3)
    values = (rng.standard_normal((500, 10)) * 3.0).astype(dtype)
    values[::7, 2] = np.nan  # incomplete rows are skipped
    values[::11, 5] = np.inf
    values[::13, 9] = np.nan  # column 9 is not followed: its NaN does not matter
    values[4] = 1e30 if dtype == np.float64 else 3e38  # huge but finite phases
    profile = dataclass_columns(profile8, [8, 0, 2, 3, 4, 5, 6, 7])  # not 1, 9
    sums = np.zeros(profile.features)
    p = profile
    rows = rff_update(values, p.columns, p.center, p.scale, p.omega, p.phase, sums)
    expected, n = numpy_embedding(profile, values)
    assert rows == n == 500 - len(set(range(0, 500, 7)) | set(range(0, 500, 11)))
    embedding = sums * math.sqrt(2.0 / profile.features) / rows  # rff.py's module doc
    np.testing.assert_allclose(embedding, expected, rtol=1e-9, atol=1e-12)
    assert profile.score(sums, rows) == pytest.approx(
        float(np.sum((expected - profile.embedding) ** 2)), rel=1e-9
    )
    empty = np.zeros(profile.features)
    assert rff_update(values[:0], p.columns, p.center, p.scale, p.omega, p.phase, empty) == 0
    assert not empty.any() and math.isnan(profile.score(empty, 0))


def dataclass_columns(profile: JointProfile, columns: list[int]) -> JointProfile:
    import dataclasses

    return dataclasses.replace(profile, columns=np.array(columns, dtype=np.int64))


def test_kernel_refuses_shapes_it_cannot_read(profile8: JointProfile) -> None:
    p = profile8
    with pytest.raises(ValueError, match="out of range"):
        rff_update(np.zeros((3, 4)), p.columns, p.center, p.scale, p.omega, p.phase, np.zeros(128))
    with pytest.raises(ValueError, match="one entry per feature"):
        rff_update(np.zeros((3, 8)), p.columns, p.center, p.scale, p.omega, p.phase, np.zeros(3))


def test_profile_is_the_reference_embedding_and_survives_serialisation(
    profile8: JointProfile,
) -> None:
    reference = correlated(np.random.default_rng(11), 20_000, 8, 0.8)
    expected, n = numpy_embedding(profile8, reference)
    assert n == profile8.rows == 20_000
    np.testing.assert_allclose(profile8.embedding, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(profile8.center, reference.mean(axis=0))
    np.testing.assert_allclose(1.0 / profile8.scale, reference.std(axis=0))
    back = JointProfile.from_npz_bytes(profile8.to_npz_bytes())
    for name in ("columns", "center", "scale", "omega", "phase", "embedding"):
        assert np.array_equal(getattr(back, name), getattr(profile8, name))
    assert (back.names, back.null_quantile, back.rows) == (
        profile8.names,
        profile8.null_quantile,
        profile8.rows,
    )
    # the same reference gives the same map: every worker and rebuild agrees
    again = build_joint_profile(reference, profile8.names, np.ones(8, np.bool_))
    assert again is not None and np.array_equal(again.omega, profile8.omega)
    assert again.null_quantile == profile8.null_quantile


def test_threshold_follows_the_window_size(profile8: JointProfile) -> None:
    q, big_n = profile8.null_quantile, profile8.rows
    for n in (100, 1000, 10_000):
        assert profile8.threshold(n) == pytest.approx(q * (1 / n + 1 / big_n))
    assert profile8.threshold(100) > profile8.threshold(1000) > profile8.threshold(10_000)


def test_null_quantile_is_the_chi_square_quantile_for_equal_weights() -> None:
    from scipy.stats import chi2

    # sum of k unit-weight chi2_1 is chi2_k: the Monte Carlo quantile is within a few percent
    for k in (1, 5, 40):
        got = null_quantile(np.ones(k), 0.01, seed=1)
        assert got == pytest.approx(chi2.ppf(0.99, k), rel=0.05)


def test_only_varying_continuous_columns_are_joint() -> None:
    rng = np.random.default_rng(0)
    table = np.column_stack(
        [rng.normal(size=500), np.full(500, 3.5), rng.integers(0, 3, 500), rng.normal(size=500)]
    )
    reference = build_profile(table)
    assert reference.categorical.tolist() == [False, False, True, False]
    assert joint_columns(table, ~reference.categorical) == [0, 3]
    joint = build_joint_profile(table, ["a", "b", "c", "d"], ~reference.categorical)
    assert joint is not None and joint.names == ("a", "d")
    # one column is no joint distribution; too few complete rows estimate nothing
    assert build_joint_profile(table[:, :3], ["a", "b", "c"], ~reference.categorical[:3]) is None
    short = table[:50]
    assert build_joint_profile(short, ["a", "b", "c", "d"], ~reference.categorical) is None


def test_version_profiles_carry_the_joint_profile(profile8: JointProfile) -> None:
    inputs = build_profile(correlated(np.random.default_rng(1), 300, 8, 0.8))
    back = VersionProfiles.from_npz_bytes(
        VersionProfiles(inputs, None, joint=profile8).to_npz_bytes()
    )
    assert back.joint is not None and np.array_equal(back.joint.embedding, profile8.embedding)
    assert (
        VersionProfiles.from_npz_bytes(VersionProfiles(inputs, None).to_npz_bytes()).joint is None
    )


def test_windows_split_exactly_and_slices_do_not_matter(profile8: JointProfile) -> None:
    rng = np.random.default_rng(4)
    data = correlated(rng, 2500, 8, -0.8)
    config = DriftConfig(window_rows=1000, window_seconds=math.inf)
    whole = JointMonitor(profile8, config).update(data)
    pieces = JointMonitor(profile8, config)
    sliced = [w for chunk in np.array_split(data, 17) for w in pieces.update(chunk)]
    assert [w.score for w in whole] == pytest.approx([w.score for w in sliced], rel=1e-12)
    assert len(whole) == 2 and pieces.state.open_rows == 500
    for i, w in enumerate(whole):  # each window is its own 1000 rows
        expected, n = numpy_embedding(profile8, data[i * 1000 : (i + 1) * 1000])
        assert n == w.rows == 1000
        assert w.score == pytest.approx(float(np.sum((expected - profile8.embedding) ** 2)))
        assert w.threshold == profile8.threshold(1000) and w.alarming


def test_time_windows_carry_and_the_alarm_has_hysteresis(profile8: JointProfile) -> None:
    now = [0.0]
    config = DriftConfig(window_rows=1000, window_seconds=10.0, min_rows=100)
    monitor = JointMonitor(profile8, config, clock=lambda: now[0])
    rng = np.random.default_rng(9)
    monitor.update(correlated(rng, 50, 8, -0.8))
    now[0] = 11.0
    assert monitor.tick() == [] and monitor.state.open_rows == 50  # too few rows: carried
    monitor.update(correlated(rng, 250, 8, -0.8))
    now[0] = 22.0
    (first,) = monitor.tick()
    assert first.rows == 300 and first.closed_by == "time" and first.alarm
    assert monitor.state.alarm and monitor.state.windows == 1
    clean = [monitor.update(correlated(rng, 1000, 8, 0.8))[0] for _ in range(2)]
    assert not clean[0].alarming and clean[0].alarm  # one clean window does not clear it
    assert not clean[1].alarm and not monitor.state.alarm
    # a window of incomplete rows is dropped unscored
    nan_rows = np.full((1000, 8), np.nan)
    assert monitor.update(nan_rows) == [] and monitor.state.windows == 3


def false_alarms(profile: JointProfile, rows: int, windows: int, seed: int) -> int:
    config = DriftConfig(window_rows=rows, window_seconds=math.inf, min_rows=min(rows, 100))
    monitor = JointMonitor(profile, config)
    closed = monitor.update(correlated(np.random.default_rng(seed), rows * windows, 8, 0.8))
    assert len(closed) == windows
    return sum(w.alarming for w in closed)


def test_false_alarms_stay_under_one_percent_per_window(profile8: JointProfile) -> None:
    """3,000 clean windows of 200 rows: the one-sided 99 % Clopper-Pearson bound on the rate
    must be below 1 %; and 500 windows of 1,000 rows at most 1 %."""
    alarms = false_alarms(profile8, 200, 3000, seed=21)
    upper = float(beta.ppf(0.99, alarms + 1, 3000 - alarms))
    assert upper < 0.01, (alarms, upper)
    assert false_alarms(profile8, 1000, 500, seed=22) <= 5
    assert alarms <= 3000 * ALPHA * 3  # and near the nominal level, not just under the bound


@pytest.mark.parametrize("features", [2, 8])
def test_a_correlation_flip_with_equal_marginals_is_caught(features: int) -> None:
    rng = np.random.default_rng(30 + features)
    names = [f"x{i}" for i in range(features)]
    profile = build_joint_profile(
        correlated(rng, 20_000, features, 0.8), names, np.ones(features, np.bool_)
    )
    assert profile is not None
    config = DriftConfig(window_rows=1000, window_seconds=math.inf)
    windows = JointMonitor(profile, config).update(correlated(rng, 100_000, features, -0.8))
    caught = sum(w.alarming for w in windows) / len(windows)
    assert len(windows) == 100 and caught >= 0.95


def test_one_call_over_many_windows_steps_the_alarm_as_window_by_window(
    profile8: JointProfile,
) -> None:
    """The kernel closes, scores and steps the hysteresis of every window of a slice; the same
    rows one window per call, and the alarm streaks written out in Python, agree with it."""
    rng = np.random.default_rng(12)
    config = DriftConfig(window_rows=200, window_seconds=math.inf, alert_after=2, clear_after=3)
    flips = [-0.8, 0.8, -0.8, -0.8, 0.8, 0.8, -0.8, -0.8, -0.8, 0.8, 0.8, 0.8, 0.8]
    data = np.concatenate([correlated(rng, 200, 8, rho) for rho in flips])
    data[210:390, 3] = np.nan  # the 2nd window has 20 complete rows: dropped unscored
    whole = JointMonitor(profile8, config).update(data)
    stepped = JointMonitor(profile8, config)
    one_by_one = [w for part in np.split(data, len(flips)) for w in stepped.update(part)]
    assert whole == one_by_one and len(whole) == len(flips) - 1
    on, hits, misses = False, 0, 0
    for window in whole:
        hits, misses = (hits + 1, 0) if window.alarming else (0, misses + 1)
        on = (on or hits >= config.alert_after) and not misses >= config.clear_after
        assert window.alarm == on
        assert window.threshold == profile8.threshold(window.rows)
    assert [w.index for w in whole] == list(range(len(whole)))
    assert any(w.alarm for w in whole) and not all(w.alarm for w in whole)
