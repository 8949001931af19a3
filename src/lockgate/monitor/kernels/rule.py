"""The drift alert rule over one window's scores, and its hysteresis, as compiled loops.

The rule itself is derived and documented in :mod:`lockgate.monitor.drift`; this module only
evaluates it. A drain closes a window every ``window_rows`` rows per monitor, dozens a second
under load, and written as numpy expressions over ``F``-element arrays the rule cost ~70 us of
GIL-holding Python per window: time the event loop waits for. Here it is one ``nogil`` call.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.divergence import CHI2, KS, PSI, TVD
from lockgate.monitor.kernels.jit import jit

SCORED, PSI_WARN, PSI_ALERT, KS_ALERT, ALERTING, FWER_ALERTING, CHI2_ALERT = range(7)
"""Rows of the ``flags`` result of :func:`window_rule`."""
N_FLAGS = 7


@jit
def _hits(
    psi: float, ks: float, chi2: float, tvd: float, psi_floor: float, ks_floor: float,
    band: float, ks_alert: float, tvd_alert: float,
) -> tuple[bool, bool, bool]:  # fmt: skip
    """(PSI, KS, chi-square) tests of one feature at one level; NaN scores never hit."""
    significant = chi2 > psi_floor
    return (
        significant and psi > max(band, psi_floor),
        ks > max(ks_alert, ks_floor),
        significant and tvd > tvd_alert,
    )


@jit
def window_rule(
    scores: NDArray[np.float64],
    win_counts: NDArray[np.int64],
    ref_n: NDArray[np.int64],
    psi_chi: NDArray[np.float64],
    fwer_psi_chi: NDArray[np.float64],
    ks_c: float,
    fwer_ks_c: float,
    min_rows: int,
    psi_warn: float,
    psi_alert: float,
    ks_alert: float,
    tvd_alert: float,
) -> tuple[int, NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """``(rows, finite[F], psi_floor[F], ks_floor[F], flags[N_FLAGS, F])`` of one window.

    ``scores`` is :func:`~lockgate.monitor.kernels.divergence.drift_scores` of ``win_counts``
    (``int64[F, M + 2]``, NaN last); ``ref_n`` the reference's finite values per feature;
    ``psi_chi`` the chi-square quantiles ``chi2.ppf(1 - alpha, B - 1)`` per feature and
    ``ks_c`` the Kolmogorov coefficient ``c(alpha)``, and the ``fwer_`` ones the same at the
    Bonferroni level. A floor is the factor times ``1/n + 1/N`` (its square root for KS); an
    empty side makes it infinite, so nothing beats it.
    """
    n_features = scores.shape[0]
    width = win_counts.shape[1]
    if win_counts.shape[0] != n_features or ref_n.shape[0] != n_features:
        raise ValueError("scores, window counts and reference sizes must cover the same features")
    if psi_chi.shape[0] != n_features or fwer_psi_chi.shape[0] != n_features:
        raise ValueError("chi-square quantiles must have one entry per feature")
    rows = 0
    for j in range(width):
        rows += win_counts[0, j]
    finite = np.empty(n_features, dtype=np.int64)
    psi_floor = np.empty(n_features, dtype=np.float64)
    ks_floor = np.empty(n_features, dtype=np.float64)
    flags = np.zeros((N_FLAGS, n_features), dtype=np.bool_)
    for f in range(n_features):
        n = 0
        for j in range(width - 1):
            n += win_counts[f, j]
        finite[f] = n
        inverse = 1.0 / n + 1.0 / ref_n[f]  # inf when either side is empty
        psi_floor[f] = psi_chi[f] * inverse
        ks_floor[f] = ks_c * math.sqrt(inverse)
        psi, ks, chi2, tvd = scores[f, PSI], scores[f, KS], scores[f, CHI2], scores[f, TVD]
        scored = n >= min_rows and ref_n[f] > 0 and math.isfinite(psi) and rows >= min_rows
        if not scored:
            continue
        flags[SCORED, f] = True
        flags[PSI_WARN, f] = _hits(
            psi, ks, chi2, tvd, psi_floor[f], ks_floor[f], psi_warn, ks_alert, tvd_alert
        )[0]
        p, k, c = _hits(
            psi, ks, chi2, tvd, psi_floor[f], ks_floor[f], psi_alert, ks_alert, tvd_alert
        )
        flags[PSI_ALERT, f], flags[KS_ALERT, f], flags[CHI2_ALERT, f] = p, k, c
        flags[ALERTING, f] = p or k or c
        fp, fk, fc = _hits(
            psi, ks, chi2, tvd, fwer_psi_chi[f] * inverse, fwer_ks_c * math.sqrt(inverse),
            psi_alert, ks_alert, tvd_alert,
        )  # fmt: skip
        flags[FWER_ALERTING, f] = fp or fk or fc
    return rows, finite, psi_floor, ks_floor, flags


@jit
def hysteresis_step(
    on: NDArray[np.bool_],
    hits: NDArray[np.int64],
    misses: NDArray[np.int64],
    hit: NDArray[np.bool_],
    seen: NDArray[np.bool_],
    alert_after: int,
    clear_after: int,
) -> None:
    """In place: a seen entry's hit extends its hit streak and ends its miss streak (and the
    reverse for a miss); unseen entries keep both. On after ``alert_after`` consecutive hits,
    off after ``clear_after`` consecutive misses."""
    for i in range(on.shape[0]):
        if hit[i]:
            hits[i] += 1
            misses[i] = 0
        elif seen[i]:
            misses[i] += 1
            hits[i] = 0
        on[i] = (on[i] or hits[i] >= alert_after) and not misses[i] >= clear_after
