"""Drift scores between a reference and a window histogram over the same bins.

The 1-D functions take the *finite* slots of one feature, ``counts[f, :n_edges[f] + 1]`` in the
layout of :mod:`lockgate.monitor.kernels.histogram` (underflow, interior bins, overflow). NaN is
left out of every score: both distributions are normalised over their finite values only, and the
window's NaN share is reported separately (:data:`NAN_SHARE` in :func:`drift_scores`), because a
missing-value spike and a shift of the values are different incidents. When either side has no
finite value a score is NaN ("undefined"), never 0 ("no drift").

- PSI: ``sum((q - p) * ln(q / p))`` over bins, natural log, with proportions clipped below at
  ``eps`` (default 1e-4, as Evidently) so that an empty bin costs a finite amount. A bin empty in
  both contributes exactly 0.
- Jensen-Shannon divergence: base 2, so it lies in [0, 1]; ``0 * log 0 = 0``. This is the
  divergence, the square of ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.
- KS: ``max_j |P(v < e_j) - Q(v < e_j)|`` over the edges. It never exceeds the exact two-sample
  statistic of the raw values and falls short of it by at most the largest bin mass of either
  side, ``max_j max(p_j, q_j)``: inside a bin each CDF can only climb by that bin's mass.
- Wasserstein-1, normed: bin masses are placed at positions — underflow at ``e[0]``, interior bin
  ``[e[j-1], e[j])`` at its centre, overflow at ``e[m-1]`` — and ``W1 = sum_j |P_j - Q_j| *
  (x[j+1] - x[j])`` over the cumulative masses, divided by ``norm`` (the caller passes the
  reference standard deviation: Evidently's "normed Wasserstein"). This is W1 of the values
  winsorised to the reference range ``[e[0], e[m-1]]`` up to the binning error: moving each value
  to its bin's position moves it at most half its bin width, so the result is within
  ``sum_interior (p_j + q_j) * w_j / 2 / norm`` of that. Shifts beyond the reference range
  saturate (PSI and KS still see them); a one-edge (constant) reference always gives 0. A
  non-positive or NaN ``norm`` gives NaN.
- Chi-square distance: ``sum_j (q_j - p_j)^2 / m_j`` with ``m_j = (r_j + w_j) / (N + n)`` the
  pooled share (slots empty on both sides skipped): the two-sample Pearson statistic (scipy's
  ``chi2_contingency(correction=False)`` on the 2 x slots table) times ``1/n + 1/N``, so it is
  on PSI's scale and shares PSI's noise floor. No log and no clipping: its null tail is close to
  chi-square at ~10 expected values per cell, where PSI's clipped log is not.
- Total variation distance: ``sum_j |q_j - p_j| / 2``, the mass that changed slot; for
  categorical features the share of rows that changed category.
- Unseen share: the window's share of finite slots where the reference has no mass — values
  outside the reference range, or (categorical) not a reference category.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.jit import jit

PSI_EPS = 1e-4
"""Floor for bin proportions in PSI (Evidently's choice)."""

PSI, JS, KS, WASSERSTEIN, NAN_SHARE, CHI2, TVD, UNSEEN_SHARE = 0, 1, 2, 3, 4, 5, 6, 7
"""Columns of the :func:`drift_scores` result."""
N_SCORES = 8


@jit
def _totals(ref: NDArray[np.int64], win: NDArray[np.int64]) -> tuple[float, float]:
    if ref.shape[0] != win.shape[0]:
        raise ValueError("reference and window counts must cover the same bins")
    r_tot = 0.0
    w_tot = 0.0
    for j in range(ref.shape[0]):
        r_tot += ref[j]
        w_tot += win[j]
    return r_tot, w_tot


@jit
def psi(ref: NDArray[np.int64], win: NDArray[np.int64], eps: float = PSI_EPS) -> float:
    """Population stability index of the window against the reference (see module doc)."""
    r_tot, w_tot = _totals(ref, win)
    if r_tot <= 0.0 or w_tot <= 0.0:
        return np.nan
    total = 0.0
    for j in range(ref.shape[0]):
        p = max(ref[j] / r_tot, eps)
        q = max(win[j] / w_tot, eps)
        total += (q - p) * np.log(q / p)
    return total


@jit
def js_divergence(ref: NDArray[np.int64], win: NDArray[np.int64]) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1] (see module doc)."""
    r_tot, w_tot = _totals(ref, win)
    if r_tot <= 0.0 or w_tot <= 0.0:
        return np.nan
    total = 0.0
    for j in range(ref.shape[0]):
        p = ref[j] / r_tot
        q = win[j] / w_tot
        m = 0.5 * (p + q)
        if p > 0.0:
            total += 0.5 * p * np.log2(p / m)
        if q > 0.0:
            total += 0.5 * q * np.log2(q / m)
    return min(max(total, 0.0), 1.0)


@jit
def ks_binned(ref: NDArray[np.int64], win: NDArray[np.int64]) -> float:
    """Kolmogorov-Smirnov statistic evaluated at the bin edges (see module doc for the bound)."""
    r_tot, w_tot = _totals(ref, win)
    if r_tot <= 0.0 or w_tot <= 0.0:
        return np.nan
    r_cum = 0.0
    w_cum = 0.0
    d = 0.0
    for j in range(ref.shape[0] - 1):
        r_cum += ref[j]
        w_cum += win[j]
        d = max(d, abs(r_cum / r_tot - w_cum / w_tot))
    return d


@jit
def chi2_distance(ref: NDArray[np.int64], win: NDArray[np.int64]) -> float:
    """Two-sample chi-square distance to the pooled distribution (see module doc)."""
    r_tot, w_tot = _totals(ref, win)
    if r_tot <= 0.0 or w_tot <= 0.0:
        return np.nan
    total = 0.0
    for j in range(ref.shape[0]):
        pooled = (ref[j] + win[j]) / (r_tot + w_tot)
        if pooled > 0.0:
            d = win[j] / w_tot - ref[j] / r_tot
            total += d * d / pooled
    return total


@jit
def tvd(ref: NDArray[np.int64], win: NDArray[np.int64]) -> float:
    """Total variation distance between the slot distributions, in [0, 1]."""
    r_tot, w_tot = _totals(ref, win)
    if r_tot <= 0.0 or w_tot <= 0.0:
        return np.nan
    total = 0.0
    for j in range(ref.shape[0]):
        total += abs(win[j] / w_tot - ref[j] / r_tot)
    return min(0.5 * total, 1.0)


@jit
def unseen_share(ref: NDArray[np.int64], win: NDArray[np.int64]) -> float:
    """The window's share of values in slots where the reference has none."""
    _, w_tot = _totals(ref, win)
    if w_tot <= 0.0:
        return np.nan
    unseen = 0.0
    for j in range(ref.shape[0]):
        if ref[j] == 0:
            unseen += win[j]
    return unseen / w_tot


@jit
def wasserstein_binned(
    ref: NDArray[np.int64], win: NDArray[np.int64], edges: NDArray[np.float64], norm: float
) -> float:
    """Normed Wasserstein-1 distance from the binned distributions (see module doc)."""
    r_tot, w_tot = _totals(ref, win)
    m = edges.shape[0]
    if ref.shape[0] != m + 1:
        raise ValueError("counts must have len(edges) + 1 finite slots")
    if r_tot <= 0.0 or w_tot <= 0.0 or not norm > 0.0:
        return np.nan
    r_cum = 0.0
    w_cum = 0.0
    total = 0.0
    x_prev = edges[0] if m > 0 else 0.0
    for j in range(m):
        r_cum += ref[j]
        w_cum += win[j]
        # position of slot j + 1: centre of interior bin j + 1, or the last edge for overflow
        x_next = 0.5 * (edges[j] + edges[j + 1]) if j + 1 < m else edges[m - 1]
        total += abs(r_cum / r_tot - w_cum / w_tot) * (x_next - x_prev)
        x_prev = x_next
    return total / norm


@jit
def drift_scores(
    ref_counts: NDArray[np.int64],
    win_counts: NDArray[np.int64],
    edges: NDArray[np.float64],
    n_edges: NDArray[np.int64],
    norms: NDArray[np.float64],
    categorical: NDArray[np.bool_],
    eps: float = PSI_EPS,
) -> NDArray[np.float64]:
    """All scores for all features in one call: ``float64[n_features, N_SCORES]``.

    Takes whole histogram states (``int64[n_features, M + 2]``, NaN in the last column); columns
    of the result are :data:`PSI`, :data:`JS`, :data:`KS`, :data:`WASSERSTEIN` (normed by
    ``norms[f]``), :data:`NAN_SHARE` (the window's NaN count over its total, NaN if empty),
    :data:`CHI2`, :data:`TVD` and :data:`UNSEEN_SHARE`. Order means nothing for a categorical
    feature (``categorical[f]``): its KS and Wasserstein are NaN; a continuous feature's TVD
    is NaN (its KS is the order-aware measure of moved mass).
    """
    n_features = ref_counts.shape[0]
    width = ref_counts.shape[1]
    if win_counts.shape[0] != n_features or win_counts.shape[1] != width:
        raise ValueError("reference and window states must have the same shape")
    if edges.shape[0] != n_features or edges.shape[1] + 2 != width:
        raise ValueError("edges must be (n_features, width - 2)")
    if n_edges.shape[0] != n_features or norms.shape[0] != n_features:
        raise ValueError("n_edges and norms must have one entry per feature")
    if categorical.shape[0] != n_features:
        raise ValueError("categorical must have one entry per feature")
    out = np.empty((n_features, N_SCORES), dtype=np.float64)
    for f in range(n_features):
        m = n_edges[f]
        if m < 0 or m > edges.shape[1]:
            raise ValueError("n_edges out of range")
        ref = ref_counts[f, : m + 1]
        win = win_counts[f, : m + 1]
        out[f, PSI] = psi(ref, win, eps)
        out[f, JS] = js_divergence(ref, win)
        out[f, CHI2] = chi2_distance(ref, win)
        out[f, UNSEEN_SHARE] = unseen_share(ref, win)
        if categorical[f]:
            out[f, KS] = np.nan
            out[f, WASSERSTEIN] = np.nan
            out[f, TVD] = tvd(ref, win)
        else:
            out[f, KS] = ks_binned(ref, win)
            out[f, WASSERSTEIN] = wasserstein_binned(ref, win, edges[f, :m], norms[f])
            out[f, TVD] = np.nan
        nan_count = win_counts[f, width - 1]
        w_all = nan_count
        for j in range(m + 1):
            w_all += win[j]
        out[f, NAN_SHARE] = nan_count / w_all if w_all > 0 else np.nan
    return out


def finite_slots(counts_row: NDArray[np.int64], n_edges: int) -> NDArray[np.int64]:
    """The finite slots of one feature's histogram row, as the 1-D scores expect them."""
    out: NDArray[np.int64] = counts_row[: n_edges + 1]
    return out
