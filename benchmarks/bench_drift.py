"""Drift monitor: ingest throughput, window scoring cost, and the alert rule's error rates.

.venv/bin/pytest benchmarks/bench_drift.py --benchmark-enable -q
.venv/bin/python benchmarks/bench_drift.py          # throughput + calibration/detection table

The table: per-feature false-alert rate of the default rule under the null (window drawn from the
reference distribution; every window has its own reference of 5,000 rows, scored from its
histogram alone: binned KS), dataset-level false alerts with 16 mixed features, and detection of
mean shifts (normal data, reference 10,000 rows); the last two run real monitors, which keep each
window's rows and score KS and Wasserstein exactly. ``benchmarks/drift_power.py`` has the
false-alarm and power table at 2 and 16 features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pytest_benchmark.fixture import BenchmarkFixture

from lockgate.monitor import drift
from lockgate.monitor.kernels import histogram as hist

Array = np.ndarray[Any, Any]
Gen = Callable[[np.random.Generator, tuple[int, ...]], Array]
ROWS, FEATURES = 100_000, 16


def _bimodal(rng: np.random.Generator, size: tuple[int, ...]) -> Array:
    return np.where(rng.random(size) < 0.3, rng.normal(-5.0, 0.5, size), rng.normal(3.0, 1.0, size))


def _heavy_ties(rng: np.random.Generator, size: tuple[int, ...]) -> Array:
    return np.where(rng.random(size) < 0.7, 0.0, rng.integers(1, 4, size).astype(np.float64))


KINDS: dict[str, Gen] = {
    "normal": lambda rng, size: rng.normal(0.0, 1.0, size),
    "lognormal": lambda rng, size: rng.lognormal(0.0, 2.0, size),
    "bimodal": _bimodal,
    "heavy-ties": _heavy_ties,
    "poisson(20)": lambda rng, size: rng.poisson(20.0, size).astype(np.float64),
    "poisson(1)": lambda rng, size: rng.poisson(1.0, size).astype(np.float64),
}
SIZES = ((100, 4000), (1000, 2000), (10_000, 200))  # (window rows, windows)


def _setup() -> tuple[drift.ReferenceProfile, Array]:
    rng = np.random.default_rng(0)
    profile = drift.build_profile(rng.lognormal(size=(20_000, FEATURES)))
    return profile, rng.lognormal(size=(ROWS, FEATURES)).astype(np.float32)


PROFILE, WINDOW = _setup()
CONFIG = drift.DriftConfig(window_rows=10_000, window_seconds=math.inf)


def _ingest() -> None:
    drift.DriftMonitor(PROFILE, CONFIG, clock=lambda: 0.0).update(WINDOW)


def test_monitor_ingest_100k_x16_f32_with_10_windows(benchmark: BenchmarkFixture) -> None:
    benchmark(_ingest)


def test_evaluate_16_features(benchmark: BenchmarkFixture) -> None:
    benchmark(drift.evaluate, PROFILE, CONFIG, PROFILE.counts)


def test_evaluate_16_features_exact_1000_rows(benchmark: BenchmarkFixture) -> None:
    rows = np.ascontiguousarray(WINDOW[:1000], dtype=np.float64)
    counts = hist.new_counts(PROFILE.edges)
    hist.histogram_update(rows, PROFILE.edges, PROFILE.n_edges, counts)
    benchmark(drift.evaluate, PROFILE, CONFIG, counts, rows)


def _null_rate(gen: Gen, rows: int, windows: int, rng: np.random.Generator) -> float:
    """Share of null windows that alert; window j is scored against its own reference j."""
    profile = drift.build_profile(gen(rng, (5000, windows)))
    counts = hist.new_counts(profile.edges)
    hist.histogram_update(gen(rng, (rows, windows)), profile.edges, profile.n_edges, counts)
    config = drift.DriftConfig(window_rows=rows, min_rows=min(rows, 100))
    return float(drift.evaluate(profile, config, counts).alerting.mean())


def _dataset_rate(rows: int, windows: int, rng: np.random.Generator) -> tuple[float, float]:
    """(dataset alerts, windows where any feature alerts at the Bonferroni level), 16 features."""
    kinds = [g for g in KINDS.values() for _ in range(3)][:16]

    def draw(n: int) -> Array:
        return np.column_stack([g(rng, (n,)) for g in kinds])

    config = drift.DriftConfig(window_rows=rows, min_rows=min(rows, 100), window_seconds=math.inf)
    monitor = drift.DriftMonitor(drift.build_profile(draw(8000)), config, clock=lambda: 0.0)
    reports = monitor.update(draw(rows * windows))
    return (
        float(np.mean([r.window.dataset_alerting for r in reports])),
        float(np.mean([r.window.fwer_alerting.any() for r in reports])),
    )


def _detection(shift: float, rows: int, trials: int, within: int) -> float:
    """Share of trials where a ``shift``-sigma mean shift of one of 4 features alerts within
    ``within`` windows of ``rows`` rows."""
    config = drift.DriftConfig(window_rows=rows, min_rows=min(rows, 100), window_seconds=math.inf)
    hits = 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        monitor = drift.DriftMonitor(
            drift.build_profile(rng.normal(size=(10_000, 4))), config, clock=lambda: 0.0
        )
        window = rng.normal(size=(rows * within, 4))
        window[:, 2] += shift
        hits += any(r.window.alerting[2] for r in monitor.update(window))
    return hits / trials


def main() -> None:
    start = time.perf_counter()
    _ingest()
    best = min(_timed(_ingest) for _ in range(5))
    print(f"monitor ingest {ROWS}x{FEATURES} f32: {ROWS * FEATURES / best / 1e6:6.0f} M values/s")
    ev = min(_timed(lambda: drift.evaluate(PROFILE, CONFIG, PROFILE.counts)) for _ in range(50))
    print(f"evaluate one window, {FEATURES} features: {ev * 1e6:8.1f} us")
    rows = np.ascontiguousarray(WINDOW[:1000], dtype=np.float64)
    counts = hist.new_counts(PROFILE.edges)
    hist.histogram_update(rows, PROFILE.edges, PROFILE.n_edges, counts)
    ex = min(_timed(lambda: drift.evaluate(PROFILE, CONFIG, counts, rows)) for _ in range(50))
    print(f"evaluate one 1,000-row window with exact KS/W, {FEATURES} features: {ex * 1e6:8.1f} us")
    rng = np.random.default_rng(1)
    print("\nper-feature false alerts (PSI or KS), windows per size " + str(SIZES))
    print(f"{'distribution':<14}" + "".join(f"{f'n={n}':>10}" for n, _ in SIZES))
    for name, gen in KINDS.items():
        rates = [_null_rate(gen, n, w, rng) for n, w in SIZES]
        print(f"{name:<14}" + "".join(f"{r:>10.2%}" for r in rates))
    print("\ndataset level, 16 features: dataset alert / any feature at alpha/(2F)")
    for n, w in ((100, 2000), (1000, 1000), (10_000, 100)):
        d, fwer = _dataset_rate(n, w, rng)
        print(f"n={n:<6} windows={w:<5} {d:8.2%} {fwer:8.2%}")
    print("\ndetection, one of 4 normal features shifted (trials = 500)")
    for shift, n, within in ((0.2, 1000, 1), (0.2, 1000, 2), (1.0, 100, 1), (1.0, 1000, 1)):
        rate = _detection(shift, n, 500, within)
        print(f"shift {shift} sigma, n={n}, within {within} window(s): {rate:8.1%}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
