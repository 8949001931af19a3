"""Random Fourier features of a slice's rows, summed: the window side of the joint-drift MMD.

For a row ``x`` (the joint columns, standardised: ``(x[c] - center) * scale``) the features are
``z(x)_i = sqrt(2 / D) cos(x . omega[:, i] + phase[i])``, whose inner products approximate the
Gaussian kernel when ``omega ~ N(0, 1 / bandwidth^2)`` and ``phase ~ U[0, 2 pi)`` (Rahimi and
Recht, 2007). The kernel adds ``cos(x . omega + phase)`` of every complete row into ``sums[D]``
(the ``sqrt(2 / D)`` is left to the caller) and returns how many rows it added: the mean
embedding of any set of slices is ``sqrt(2 / D) * sums / rows``, so workers merge by adding.

``rff_fold`` folds a slice into tumbling windows in one call: it closes each window at its
``window_rows``-th row, scores it (the MMD of :mod:`lockgate.monitor.joint_profile`), compares
it with its threshold and steps the alarm's hysteresis, so a drain hands the GIL back once per
slice, not once per window (docs/design/monitor-tail-cost.md).

A row with a NaN or an infinite value in any joint column is skipped (its drift is the
per-feature NaN share's business; a cosine of an infinite phase has no meaning). Standardised
values are clipped to ``+-CLIP``: a value that far out is as far from the reference as any
other to the kernel, and a phase of that size still has ~12 exact digits in float64 (the
cosine of a phase near 1e30 depends on rounding, so no two summation orders would agree).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.jit import jit, jit_fused
from lockgate.monitor.kernels.rule import hysteresis_step

CLIP = 1e4
"""Standardised values are clipped to ``[-CLIP, CLIP]`` (module doc)."""

_TWO_PI_HI = 6.28125  # 2 pi in two parts (Cody-Waite): k * _TWO_PI_HI is exact for |k| < 2^44
_TWO_PI_LO = 2.0 * math.pi - 6.28125
_INV_TWO_PI = 1.0 / (2.0 * math.pi)


@jit_fused
def _cos(x: float) -> float:
    """``cos(x)`` to ~1e-14 without a libm call, so that LLVM vectorises the loop around it
    (libm's cosine is most of the kernel's cost otherwise): reduce to ``[-pi, pi]``, Taylor
    series of ``cos(r / 4)`` to degree 14 (remainder < 1e-15), then double the angle twice.
    Fused multiply-adds make it and the projection a quarter faster, no less exact."""
    k = math.floor(x * _INV_TWO_PI + 0.5)
    r = (x - k * _TWO_PI_HI) - k * _TWO_PI_LO
    a = r * 0.25
    a2 = a * a
    c = 1.0 + a2 * (
        -1.0 / 2.0
        + a2
        * (
            1.0 / 24.0
            + a2
            * (
                -1.0 / 720.0
                + a2
                * (
                    1.0 / 40320.0
                    + a2 * (-1.0 / 3628800.0 + a2 * (1.0 / 479001600.0 - a2 / 87178291200.0))
                )
            )
        )
    )
    c = 2.0 * c * c - 1.0
    return 2.0 * c * c - 1.0


@jit_fused
def rff_update(
    values: NDArray[np.floating[Any]],
    columns: NDArray[np.int64],
    center: NDArray[np.float64],
    scale: NDArray[np.float64],
    omega: NDArray[np.float64],
    phase: NDArray[np.float64],
    sums: NDArray[np.float64],
) -> int:
    """Add ``cos(x . omega + phase)`` of every complete row of ``values[rows, F]`` (columns
    ``columns[K]``, standardised, clipped) into ``sums[D]``; returns the rows added.
    ``omega[K, D]``."""
    k = columns.shape[0]
    d = omega.shape[1]
    if center.shape[0] != k or scale.shape[0] != k or omega.shape[0] != k:
        raise ValueError("center, scale and omega must have one row per joint column")
    if phase.shape[0] != d or sums.shape[0] != d:
        raise ValueError("phase and sums must have one entry per feature of omega")
    for j in range(k):
        if columns[j] < 0 or columns[j] >= values.shape[1]:
            raise ValueError("a joint column is out of range")
    x = np.empty(k, dtype=np.float64)
    proj = np.empty(d, dtype=np.float64)
    added = 0
    for r in range(values.shape[0]):
        complete = True
        for j in range(k):
            v = (np.float64(values[r, columns[j]]) - center[j]) * scale[j]
            if not math.isfinite(v):
                complete = False
                break
            x[j] = min(max(v, -CLIP), CLIP)
        if not complete:
            continue
        proj[:] = phase
        for j in range(k):  # row-major omega: the inner loop is contiguous and vectorises
            xj = x[j]
            for i in range(d):
                proj[i] += xj * omega[j, i]
        for i in range(d):
            sums[i] += _cos(proj[i])
        added += 1
    return added


# `rff_fold`'s per-window output columns, and the positions of its `sizes` and `state`.
W_ROWS, W_SCORE, W_THRESHOLD, W_ALARMING, W_ALARM = range(5)
N_WINDOW_FIELDS = 5
WINDOW_ROWS, MIN_ROWS, ALERT_AFTER, CLEAR_AFTER, REFERENCE_ROWS = range(5)
N_SIZES = 5
OPEN_ROWS, OPEN_COMPLETE = range(2)


@jit
def rff_score(sums: NDArray[np.float64], rows: int, embedding: NDArray[np.float64]) -> float:
    """The biased MMD^2 of a window of ``rows`` complete rows whose cosines add up to ``sums``:
    the squared distance of its mean embedding from the reference's."""
    factor = math.sqrt(2.0 / sums.shape[0]) / max(rows, 1)
    total = 0.0
    for i in range(sums.shape[0]):
        d = sums[i] * factor - embedding[i]
        total += d * d
    return total


# What `rff_fold` reads of a joint profile: (columns, center, scale, omega, phase, embedding).
FoldProfile = tuple[
    NDArray[np.int64], NDArray[np.float64], NDArray[np.float64],
    NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
]  # fmt: skip


@jit
def rff_threshold(null_quantile: float, rows: int, reference_rows: int) -> float:
    """The alarm threshold of a window of ``rows`` complete rows against a reference of
    ``reference_rows``: ``q (1/n + 1/N)``."""
    return null_quantile * (1.0 / max(rows, 1) + 1.0 / reference_rows)


@jit
def rff_fold(
    values: NDArray[np.floating[Any]],
    profile: FoldProfile,
    null_quantile: float,
    sizes: NDArray[np.int64],
    sums: NDArray[np.float64],
    state: NDArray[np.int64],
    alarm: tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]],
    out: NDArray[np.float64],
) -> int:
    """Fold the rows of ``values`` into the open window (``sums``, ``state``: its rows and
    complete rows) and close it at every ``sizes[WINDOW_ROWS]``-th row: a window with at least
    ``sizes[MIN_ROWS]`` complete rows is scored against the threshold
    ``null_quantile (1/n + 1/N)``, its hit steps the ``alarm`` hysteresis (on, hits, misses)
    and its fields go to the next row of ``out[windows, N_WINDOW_FIELDS]``; one with fewer is
    dropped unscored. Returns the windows written."""
    columns, center, scale, omega, phase, embedding = profile
    window_rows = sizes[WINDOW_ROWS]
    if window_rows < 1:
        raise ValueError("window_rows must be at least 1")
    hit = np.zeros(1, dtype=np.bool_)
    seen = np.ones(1, dtype=np.bool_)
    on, hits, misses = alarm
    written = 0
    start = 0
    while start < values.shape[0]:
        take = min(values.shape[0] - start, window_rows - state[OPEN_ROWS])
        chunk = values[start : start + take]
        state[OPEN_COMPLETE] += rff_update(chunk, columns, center, scale, omega, phase, sums)
        state[OPEN_ROWS] += take
        start += take
        if state[OPEN_ROWS] < window_rows:
            break
        n = state[OPEN_COMPLETE]
        if n >= sizes[MIN_ROWS]:
            if written >= out.shape[0]:
                raise ValueError("out has fewer rows than the windows closed")
            score = rff_score(sums, n, embedding)
            threshold = rff_threshold(null_quantile, n, sizes[REFERENCE_ROWS])
            hit[0] = score > threshold
            hysteresis_step(on, hits, misses, hit, seen, sizes[ALERT_AFTER], sizes[CLEAR_AFTER])
            out[written, W_ROWS] = n
            out[written, W_SCORE] = score
            out[written, W_THRESHOLD] = threshold
            out[written, W_ALARMING] = hit[0]
            out[written, W_ALARM] = on[0]
            written += 1
        sums[:] = 0.0
        state[OPEN_ROWS] = 0
        state[OPEN_COMPLETE] = 0
    return written
