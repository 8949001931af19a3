"""False alerts and power of the drift rule, per feature and per dataset, through real monitors.

    .venv/bin/python benchmarks/drift_power.py [--quick]

Features cycle through normal, lognormal, bimodal, Poisson(20) (continuous with ties), a
categorical mix 0.4/0.3/0.2/0.1 and uniform; references have 20,000 rows. For 2 and 16
features and windows of 100, 1,000 and 5,000 rows (fixed seeds) it prints:

- null: per-feature alert rate (all features, all windows), the dataset alert rate, and what the
  old share-only dataset rule (Bonferroni share >= 0.5, no two-feature minimum) would have said;
- power: the alert rate of feature 0 (normal) shifted by 0.2 and 0.5 std; of feature 4 (the
  categorical mix moved to 0.35/0.30/0.20/0.15; 16 features only); and the dataset alert rate
  when half the features, and at least two, drift (every other one; continuous: +0.5 std;
  categorical: the same move).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lockgate.monitor import drift

Array = np.ndarray[Any, Any]
MIX = np.array([0.4, 0.3, 0.2, 0.1])
MOVED = np.array([0.35, 0.30, 0.20, 0.15])
CODES = np.array([0.0, 1.0, 2.0, 3.0])
CATEGORICAL = 4  # index in KINDS
STD = [1.0, math.sqrt((math.e**0.25 - 1) * math.e**0.25), 3.85, math.sqrt(20.0), 1.0, 1 / 12**0.5]


def _bimodal(rng: np.random.Generator, n: int) -> Array:
    return np.where(rng.random(n) < 0.3, rng.normal(-5.0, 0.5, n), rng.normal(3.0, 1.0, n))


KINDS: list[Callable[[np.random.Generator, int, bool], Array]] = [
    lambda rng, n, moved: rng.normal(size=n),
    lambda rng, n, moved: rng.lognormal(0.0, 0.5, n),
    lambda rng, n, moved: _bimodal(rng, n),
    lambda rng, n, moved: rng.poisson(20.0, n).astype(np.float64),
    lambda rng, n, moved: rng.choice(CODES, size=n, p=MOVED if moved else MIX),
    lambda rng, n, moved: rng.random(n),
]
SIZES = {100: 4000, 1000: 1000, 5000: 300}  # window rows -> null windows
POWER_WINDOWS = 200


def _draw(rng: np.random.Generator, features: int, n: int, shifts: dict[int, float]) -> Array:
    cols = []
    for f in range(features):
        kind = f % len(KINDS)
        col = KINDS[kind](rng, n, f in shifts)
        if f in shifts and kind != CATEGORICAL:
            col = col + shifts[f] * STD[kind]
        cols.append(col)
    return np.column_stack(cols)


def _run(
    features: int, rows: int, windows: int, shifts: dict[int, float], seed: int
) -> list[drift.WindowReport]:
    rng = np.random.default_rng(seed)
    profile = drift.build_profile(_draw(rng, features, 20_000, {}))
    config = drift.DriftConfig(window_rows=rows, min_rows=min(rows, 100), window_seconds=math.inf)
    monitor = drift.DriftMonitor(profile, config, clock=lambda: 0.0)
    reports: list[drift.WindowReport] = []
    chunk = max(1, 200_000 // rows)  # windows per draw: bounded memory
    while len(reports) < windows:
        take = min(chunk, windows - len(reports))
        reports += monitor.update(_draw(rng, features, rows * take, shifts))
    return reports


def _rate(flags: list[bool] | Array) -> str:
    return f"{float(np.mean(flags)):.3%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the windows")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    start = time.perf_counter()
    print(
        "| features | rows | null windows | feature FA | dataset FA | share-only FA "
        "| 0.2 std | 0.5 std | category move | dataset power |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for features in (2, 16):
        for rows, windows in SIZES.items():
            windows //= scale
            null = _run(features, rows, windows, {}, seed=rows + features)
            feature_fa = np.mean([r.window.alerting.mean() for r in null])
            dataset_fa = [r.window.dataset_alerting for r in null]
            share_only = [r.window.share_fwer >= 0.5 for r in null]
            power = []
            for shift in (0.2, 0.5):
                alt = _run(features, rows, POWER_WINDOWS // scale, {0: shift}, seed=rows + 1)
                power.append(_rate([r.window.alerting[0] for r in alt]))
            if features > CATEGORICAL:
                alt = _run(features, rows, POWER_WINDOWS // scale, {CATEGORICAL: 0.0}, seed=7)
                power.append(_rate([r.window.alerting[CATEGORICAL] for r in alt]))
            else:
                power.append("-")
            drifting = range(0, features, 2) if features >= 4 else range(features)
            half = {f: 0.5 for f in drifting}  # the categorical feature (4) moves its mix
            alt = _run(features, rows, POWER_WINDOWS // scale, half, seed=rows + 2)
            power.append(_rate([r.window.dataset_alerting for r in alt]))
            print(
                f"| {features} | {rows} | {windows} | {feature_fa:.3%} | {_rate(dataset_fa)} "
                f"| {_rate(share_only)} | " + " | ".join(power) + " |",
                flush=True,
            )
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
