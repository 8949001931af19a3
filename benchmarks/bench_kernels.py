"""Monitor kernel throughput (single thread): histogram ingest, latency-sketch ingest, drift scores.

.venv/bin/pytest benchmarks/bench_kernels.py --benchmark-enable -q
.venv/bin/python benchmarks/bench_kernels.py      # M values/s figures and JIT warm-start time

Targets: histogram >= 200 M values/s, sketch >= 250 M values/s, drift <= 5 us per feature.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pytest_benchmark.fixture import BenchmarkFixture

from lockgate.monitor import bins
from lockgate.monitor.kernels import ddsketch, divergence, histogram

ROWS, FEATURES = 100_000, 16
LATENCIES = 1_000_000


def _setup() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    reference = rng.lognormal(size=(20_000, FEATURES))
    edges, n_edges = bins.reference_edges(reference)
    ref_counts = histogram.new_counts(edges)
    histogram.histogram_update(reference, edges, n_edges, ref_counts)
    window = (rng.lognormal(size=(ROWS, FEATURES)) * 1.05).astype(np.float32)
    win_counts = histogram.new_counts(edges)
    histogram.histogram_update(window, edges, n_edges, win_counts)
    return {
        "window": window,
        "edges": edges,
        "n_edges": n_edges,
        "ref_counts": ref_counts,
        "win_counts": win_counts,
        "norms": np.array([bins.reference_scale(reference[:, f]) for f in range(FEATURES)]),
        "latencies": rng.lognormal(np.log(0.004), 1.0, LATENCIES),
    }


DATA = _setup()


def _histogram() -> None:
    counts = histogram.new_counts(DATA["edges"])
    histogram.histogram_update(DATA["window"], DATA["edges"], DATA["n_edges"], counts)


def _sketch() -> None:
    ddsketch.sketch_add(DATA["latencies"], ddsketch.new_state())


def _drift() -> None:
    divergence.drift_scores(
        DATA["ref_counts"],
        DATA["win_counts"],
        DATA["edges"],
        DATA["n_edges"],
        DATA["norms"],
        np.zeros(len(DATA["norms"]), np.bool_),
    )


def _report(benchmark: BenchmarkFixture, values: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["M_values_per_s"] = values / benchmark.stats.stats.min / 1e6


def test_histogram_ingest_100k_x16_f32(benchmark: BenchmarkFixture) -> None:
    benchmark(_histogram)
    _report(benchmark, ROWS * FEATURES)


def test_sketch_ingest_1m(benchmark: BenchmarkFixture) -> None:
    benchmark(_sketch)
    _report(benchmark, LATENCIES)


def test_drift_scores_16_features(benchmark: BenchmarkFixture) -> None:
    benchmark(_drift)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_feature"] = benchmark.stats.stats.min / FEATURES * 1e6


def _best_seconds(fn: Callable[[], None], repeat: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


_WARM_START = """
import time
start = time.perf_counter()
import numpy as np
from lockgate.monitor.kernels import ddsketch, divergence, histogram
edges = np.array([[0.0, 1.0]]); n_edges = np.array([2]); counts = histogram.new_counts(edges)
histogram.histogram_update(np.zeros((4, 1), np.float32), edges, n_edges, counts)
ddsketch.sketch_add(np.ones(4), ddsketch.new_state())
divergence.drift_scores(counts, counts, edges, n_edges, np.ones(1), np.zeros(1, np.bool_))
print(time.perf_counter() - start)
"""


def _warm_start_seconds() -> float:
    """Import + first call of every kernel in a fresh interpreter, with the JIT cache present."""
    run = [sys.executable, "-c", _WARM_START]
    subprocess.run(run, check=True, capture_output=True)  # populate the cache if needed
    return float(subprocess.run(run, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    hist_s = _best_seconds(_histogram)
    sketch_s = _best_seconds(_sketch)
    drift_s = _best_seconds(_drift, repeat=200)
    print(
        f"histogram ingest {ROWS}x{FEATURES} f32: {ROWS * FEATURES / hist_s / 1e6:8.0f} M values/s"
    )
    print(f"sketch ingest {LATENCIES} f64:      {LATENCIES / sketch_s / 1e6:8.0f} M values/s")
    print(f"drift scores (4 scores + NaN share): {drift_s / FEATURES * 1e6:8.2f} us/feature")
    print(f"JIT warm start (import + first calls): {_warm_start_seconds():6.3f} s")


if __name__ == "__main__":
    main()
