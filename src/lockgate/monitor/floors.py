"""No-drift noise floors for drift scores at the actual window and reference sizes (derivations
in :mod:`lockgate.monitor.drift`). Pure math; no scipy at runtime (it is a dev dependency)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _chi2_sf(x: float, df: int) -> float:
    """Chi-square survival for integer ``df`` by its closed form (no scipy at runtime)."""
    if x <= 0.0:
        return 1.0
    h = x / 2.0
    lh = math.log(h)
    if df % 2 == 0:
        return sum(math.exp(-h + i * lh - math.lgamma(i + 1)) for i in range(df // 2))
    tail = sum(math.exp(-h + (i + 0.5) * lh - math.lgamma(i + 1.5)) for i in range(df // 2))
    return math.erfc(math.sqrt(h)) + tail


@lru_cache(maxsize=1024)
def chi2_quantile(q: float, df: int) -> float:
    """``scipy.stats.chi2.ppf(q, df)`` for integer ``df >= 1``, by bisection on the survival."""
    if df < 1 or not 0.0 < q < 1.0:
        raise ValueError("need df >= 1 and 0 < q < 1")
    lo, hi = 0.0, float(df) + 10.0
    while _chi2_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(100):  # halves [lo, hi] down to the last bit of a double
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _chi2_sf(mid, df) > 1.0 - q else (lo, mid)
    return 0.5 * (lo + hi)


def ks_coefficient(alpha: float) -> float:
    """``c(alpha) = sqrt(-ln(alpha / 2) / 2)``, the asymptotic Kolmogorov critical value."""
    return math.sqrt(-math.log(alpha / 2.0) / 2.0)


def _inv_sum(n: NDArray[Any], ref_n: NDArray[Any]) -> NDArray[np.float64]:
    with np.errstate(divide="ignore"):
        out: NDArray[np.float64] = 1.0 / n.astype(np.float64) + 1.0 / ref_n.astype(np.float64)
    return out


def psi_floor_factors(bins: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """``chi2.ppf(1 - alpha, max(B - 1, 1))``: the PSI floor over ``1/n + 1/N``."""
    df = np.maximum(np.asarray(bins, dtype=np.int64) - 1, 1)
    return np.array([chi2_quantile(1.0 - alpha, int(d)) for d in df.ravel()]).reshape(df.shape)


def psi_floor(n: ArrayLike, ref_n: ArrayLike, bins: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """PSI noise floor ``chi2.ppf(1 - alpha, max(B - 1, 1)) * (1/n + 1/N)`` (module doc)."""
    return psi_floor_factors(bins, alpha) * _inv_sum(np.asarray(n), np.asarray(ref_n))


def ks_floor(n: ArrayLike, ref_n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """KS noise floor ``c(alpha) * sqrt((n + N) / (n N))`` (module doc)."""
    out: NDArray[np.float64] = ks_coefficient(alpha) * np.sqrt(
        _inv_sum(np.asarray(n), np.asarray(ref_n))
    )
    return out
