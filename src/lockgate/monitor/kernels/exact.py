"""Exact two-sample KS and Wasserstein-1 of a drift window against the reference's sorted sample.

Both statistics walk two sorted arrays after sorting the window (``O(n log n)``, n <= the
window's rows); the reference is sorted once, at profile time. Wasserstein is ``O(n + N)``;
KS gallops over the reference, ``O(n log(N / n))``.

- KS: ``sup_x |F_ref(x) - F_win(x)|`` over every value, ties included (both sides step past a
  tied value together): ``scipy.stats.ks_2samp(ref, win).statistic``. NaN is left out (the
  window's NaN share is its own score); -inf and +inf are values like any other.
- Wasserstein-1: ``integral |F_ref(x) - F_win(x)| dx`` over the finite values, i.e.
  ``scipy.stats.wasserstein_distance(ref, win)`` of the finite values; infinite values have no
  finite distance to move, so they are left to KS and to the out-of-range slots of the
  histogram. The caller divides by the reference std (normed Wasserstein).

:func:`exact_scores` writes both into the score table of
:func:`~lockgate.monitor.kernels.divergence.drift_scores` for the features that have a sorted
reference sample; the others keep their binned values.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.divergence import KS, WASSERSTEIN
from lockgate.monitor.kernels.jit import jit


@jit
def _gallop(a: NDArray[np.float64], x: float, start: int, inclusive: bool) -> int:
    """First index ``>= start`` whose value is ``> x`` (``inclusive``) or ``>= x``: doubling
    steps, then bisection, so a run of k skipped values costs ``O(log k)``."""
    n = a.shape[0]
    lo = start
    step = 1
    hi = start
    while hi < n and (a[hi] <= x if inclusive else a[hi] < x):
        lo = hi + 1
        hi = lo + step
        step *= 2
    hi = min(hi, n)
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= x if inclusive else a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def ks_sorted(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Two-sample KS statistic of ascending, NaN-free arrays (NaN if either is empty).

    Between two consecutive values of ``b`` its CDF is flat and ``a``'s only grows, so the
    largest gap is at either end: ``a``'s CDF is needed just below and at each value of ``b``
    only, found by galloping — ``O(m log(n / m))`` for ``m`` window values, not ``O(n + m)``.
    """
    n = a.shape[0]
    m = b.shape[0]
    if n == 0 or m == 0:
        return np.nan
    i = 0
    j = 0
    d = 0.0
    while j < m:
        x = b[j]
        i = _gallop(a, x, i, False)
        d = max(d, abs(i / n - j / m))  # just below x
        while j < m and b[j] == x:
            j += 1
        i = _gallop(a, x, i, True)
        d = max(d, abs(i / n - j / m))  # at x
    return d


@jit
def _finite_range(a: NDArray[np.float64]) -> tuple[int, int]:
    """``[lo, hi)`` of the finite values of an ascending, NaN-free array."""
    lo = 0
    hi = a.shape[0]
    while lo < hi and a[lo] == -np.inf:
        lo += 1
    while hi > lo and a[hi - 1] == np.inf:
        hi -= 1
    return lo, hi


@jit
def wasserstein_sorted(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Wasserstein-1 distance between the finite values of two ascending, NaN-free arrays
    (NaN if either has none): the area between the CDFs, one segment per value passed.

    Ties need no care: a segment between equal values has zero width. The inner loop runs over
    the reference values below the next window value with the window's CDF fixed."""
    a0, a1 = _finite_range(a)
    b0, b1 = _finite_range(b)
    n = a1 - a0
    m = b1 - b0
    if n == 0 or m == 0:
        return np.nan
    i = a0
    prev = min(a[a0], b[b0])
    total = 0.0
    for j in range(b0, b1 + 1):
        x = b[j] if j < b1 else np.inf
        c = (j - b0) / m  # the window's CDF below x
        while i < a1 and a[i] < x:
            total += abs((i - a0) / n - c) * (a[i] - prev)
            prev = a[i]
            i += 1
        if j < b1:
            total += abs((i - a0) / n - c) * (x - prev)
            prev = x
    return total


@jit
def exact_scores(
    scores: NDArray[np.float64],
    samples: NDArray[np.float64],
    n_samples: NDArray[np.int64],
    window: NDArray[np.float64],
    norms: NDArray[np.float64],
) -> None:
    """In place: ``scores[f, KS]`` and ``scores[f, WASSERSTEIN]`` (normed by ``norms[f]``) from
    the window's rows ``window[rows, F]`` and the reference's ascending non-NaN sample
    ``samples[f, :n_samples[f]]``, for every feature with ``n_samples[f] > 0``."""
    n_features = scores.shape[0]
    if samples.shape[0] != n_features or n_samples.shape[0] != n_features:
        raise ValueError("samples and n_samples must have one row per feature")
    if window.shape[1] != n_features or norms.shape[0] != n_features:
        raise ValueError("window and norms must have one column per feature")
    buf = np.empty(window.shape[0], dtype=np.float64)
    for f in range(n_features):
        size = n_samples[f]
        if size <= 0:
            continue
        if size > samples.shape[1]:
            raise ValueError("n_samples out of range")
        k = 0
        for r in range(window.shape[0]):
            v = window[r, f]
            if not math.isnan(v):
                buf[k] = v
                k += 1
        mine = np.sort(buf[:k])
        ref = samples[f, :size]
        scores[f, KS] = ks_sorted(ref, mine)
        norm = norms[f]
        w = wasserstein_sorted(ref, mine)
        scores[f, WASSERSTEIN] = w / norm if norm > 0.0 else np.nan
