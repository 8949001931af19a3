"""Joint drift (MMD on random Fourier features): false alarms, power and the kernel's cost.

    .venv/bin/python benchmarks/joint_drift.py [--features 8] [--windows 2000]

Data: `features` standard normal columns, columns 0 and 1 bivariate normal with correlation
rho = +0.8 in the reference (20,000 rows), every other column independent. Clean windows come
from the same distribution; drifted ones change rho only (every marginal stays N(0, 1)).

- False alarms: per window size, `windows` clean windows, split over 4 references drawn
  independently (each gets its own profile), so the rate includes the luck of the reference
  sample; the worst reference's rate is printed too.
- Power: the share of windows alarming when rho becomes 0.4, 0.0, -0.4 or -0.8.
- Cost: CPU time of the kernel per row (process time, one thread), for 2, 8 and 64 columns.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from lockgate.monitor.drift import DriftConfig
from lockgate.monitor.joint import JointMonitor
from lockgate.monitor.joint_profile import JointProfile, build_joint_profile
from lockgate.monitor.kernels.rff import rff_update

SIZES = (100, 1000, 10_000)
REFERENCES = 4
REFERENCE_ROWS = 20_000
RHO = 0.8
LIVE_RHO = (0.4, 0.0, -0.4, -0.8)
CHUNK_ROWS = 200_000


def draw(rng: np.random.Generator, rows: int, features: int, rho: float) -> np.ndarray:
    x = rng.standard_normal((rows, features))
    x[:, 1] = rho * x[:, 0] + math.sqrt(1.0 - rho**2) * x[:, 1]
    return x


def profile_of(rng: np.random.Generator, features: int) -> JointProfile:
    reference = draw(rng, REFERENCE_ROWS, features, RHO)
    names = [f"x{i}" for i in range(features)]
    profile = build_joint_profile(reference, names, np.ones(features, np.bool_))
    assert profile is not None
    return profile


def alarm_rate(
    profile: JointProfile, rng: np.random.Generator, rows: int, windows: int, rho: float
) -> float:
    """Share of `windows` windows of `rows` rows drawn with correlation `rho` that alarm."""
    config = DriftConfig(window_rows=rows, window_seconds=math.inf, min_rows=min(rows, 100))
    monitor = JointMonitor(profile, config)
    per_chunk = max(1, CHUNK_ROWS // rows)
    alarms = done = 0
    while done < windows:
        take = min(per_chunk, windows - done)
        closed = monitor.update(draw(rng, take * rows, profile.omega.shape[0], rho))
        alarms += sum(w.alarming for w in closed)
        done += len(closed)
    return alarms / windows


def cost_per_row(columns: int, rows: int = 400_000) -> float:
    """Kernel CPU seconds per row at `columns` joint columns and 128 features."""
    rng = np.random.default_rng(0)
    profile = profile_of(rng, columns)
    x = rng.standard_normal((rows, columns))
    p = profile
    sums = np.zeros(p.features)
    rff_update(x[:10], p.columns, p.center, p.scale, p.omega, p.phase, sums)  # compile / load
    start = time.process_time()
    rff_update(x, p.columns, p.center, p.scale, p.omega, p.phase, sums)
    return (time.process_time() - start) / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--windows", type=int, default=2000, help="clean windows per size")
    parser.add_argument("--power-windows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    profiles = [profile_of(rng, args.features) for _ in range(REFERENCES)]
    print(
        f"joint drift: {args.features} features, reference rho = {RHO}, {REFERENCE_ROWS} rows, "
        f"D = {profiles[0].features}, nominal alpha = {profiles[0].alpha}"
    )
    header = "| window rows | false alarms (worst reference) |"
    header += "".join(f" rho {r:+.1f} |" for r in LIVE_RHO)
    print(header)
    print("|---:|---:|" + "---:|" * len(LIVE_RHO))
    for rows in SIZES:
        per = args.windows // REFERENCES
        rates = [alarm_rate(p, rng, rows, per, RHO) for p in profiles]
        power = [alarm_rate(profiles[0], rng, rows, args.power_windows, r) for r in LIVE_RHO]
        cells = "".join(f" {100 * p:.1f} % |" for p in power)
        print(
            f"| {rows:,} | {100 * float(np.mean(rates)):.2f} % ({100 * max(rates):.2f} %) "
            f"of {per * REFERENCES} |{cells}"
        )
    print()
    for columns in (2, 8, 64):
        print(f"kernel cost, {columns} columns: {1e9 * cost_per_row(columns):.0f} ns per row")


if __name__ == "__main__":
    main()
