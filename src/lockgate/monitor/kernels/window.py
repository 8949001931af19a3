"""A slice of rows folded into a drift monitor's tumbling windows in one compiled call.

The drain closes a window every ``window_rows`` rows per monitored side (a dozen a second at
13,000 requests per second). Done step by step from Python, each close is a handful of kernel
calls and numpy copies, and every one of them lets go of the GIL and takes it back: the event
loop is stopped at each take-back, a hundred times per drain cycle, and the requests in flight
meanwhile are the p99 (docs/design/monitor-tail-cost.md). Here the whole slice is one ``nogil``
call: the histogram of each window's rows, its rows kept for the exact statistics, and at each
boundary the window's scores, its alert rule and the hysteresis, written to per-window output
arrays from which the caller builds its reports afterwards, holding the GIL once.

The per-window steps are the same compiled functions, in the same order, as the step-by-step
path (:func:`~lockgate.monitor.drift.evaluate`), so both give identical results; a statistic
added per window is one more call in :func:`_close_window` and one more output array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.divergence import drift_scores
from lockgate.monitor.kernels.exact import exact_scores
from lockgate.monitor.kernels.histogram import histogram_update
from lockgate.monitor.kernels.jit import jit
from lockgate.monitor.kernels.rule import (
    ALERTING,
    FWER_ALERTING,
    SCORED,
    hysteresis_step,
    window_rule,
)

OPEN_ROWS, EXACT = 0, 1
"""Entries of the ``state`` array: rows in the open window, and 1 while its rows are kept."""

PSI_WARN_AT, PSI_ALERT_AT, KS_ALERT_AT, TVD_ALERT_AT, DATASET_SHARE, KS_C, FWER_KS_C = range(7)
"""Entries of the ``limits`` array (floats of the configuration and the profile)."""
WINDOW_ROWS, MIN_ROWS, ALERT_AFTER, CLEAR_AFTER = range(4)
"""Entries of the ``sizes`` array (integers of the configuration)."""
DATASET_ALERTING, DATASET_ON = 0, 1
"""Columns of ``out_dataset``: the window's dataset rule, and the dataset alert after it."""


def windows_closed(open_rows: int, rows: int, window_rows: int) -> int:
    """How many windows a slice of ``rows`` closes when ``open_rows`` are already open: the
    first dimension of the output arrays of :func:`fold_rows`."""
    return (open_rows + rows) // window_rows


@jit
def dataset_flag(hits: int, scored: int, share: float) -> bool:
    """:func:`lockgate.monitor.drift.dataset_rule`, compiled (the same expression)."""
    needed = max(min(2, scored), math.ceil(share * scored - 1e-9))
    return scored > 0 and hits >= needed


@jit
def fold_rows(
    table: NDArray[Any],
    profile: tuple[Any, ...],
    limits: NDArray[np.float64],
    sizes: NDArray[np.int64],
    window: tuple[Any, ...],
    hysteresis: tuple[Any, ...],
    out: tuple[Any, ...],
) -> int:
    """Fold ``table[rows, F]`` into the open window, closing it at every ``window_rows`` rows;
    returns the number of windows closed (``windows_closed`` of the same sizes).

    - ``profile``: ``(edges, n_edges, ref_counts, norms, categorical, samples, n_samples,
      finite_rows, chi2_factors, fwer_chi2_factors)`` of the reference profile.
    - ``window`` (updated in place): ``(counts[F, W], closed[F, W], values[window_rows, F],
      state[2])``: the open window's histogram, every closed window's summed, the open window's
      rows, and ``state`` (``OPEN_ROWS``, ``EXACT``).
    - ``hysteresis`` (in place): ``(on, hits, misses)`` per feature, then the dataset's (``[1]``).
    - ``out``, one entry per closed window: ``(counts[K, F, W], scores[K, F, N_SCORES],
      rows[K], finite[K, F], psi_floor[K, F], ks_floor[K, F], flags[K, N_FLAGS, F],
      feature_on[K, F], dataset[K, 2])``.
    """
    counts, values, state = window[0], window[2], window[3]
    window_rows = sizes[WINDOW_ROWS]
    rows = table.shape[0]
    if table.shape[1] != counts.shape[0]:
        raise ValueError("the table must have one column per feature")
    if out[0].shape[0] < (state[OPEN_ROWS] + rows) // window_rows:
        raise ValueError("the output arrays hold fewer windows than the table closes")
    start = 0
    k = 0
    while start < rows:
        take = min(rows - start, window_rows - state[OPEN_ROWS])
        chunk = table[start : start + take]
        histogram_update(chunk, profile[0], profile[1], counts)
        if state[EXACT] != 0:
            held = state[OPEN_ROWS]
            for r in range(take):
                for f in range(chunk.shape[1]):
                    values[held + r, f] = chunk[r, f]
        state[OPEN_ROWS] += take
        start += take
        if state[OPEN_ROWS] >= window_rows:
            _close_window(profile, limits, sizes, window, hysteresis, out, k)
            k += 1
    return k


@jit
def _close_window(
    profile: tuple[Any, ...],
    limits: NDArray[np.float64],
    sizes: NDArray[np.int64],
    window: tuple[Any, ...],
    hysteresis: tuple[Any, ...],
    out: tuple[Any, ...],
    k: int,
) -> None:
    """Score the full open window into ``out[...][k]``, step the hysteresis, start a new one."""
    edges, n_edges, ref_counts, norms, categorical, samples, n_samples = profile[:7]
    finite_rows, chi2_factors, fwer_chi2_factors = profile[7:]
    counts, closed, values, state = window
    on, hits, misses, dataset_on, dataset_hits, dataset_misses = hysteresis
    scores = drift_scores(ref_counts, counts, edges, n_edges, norms, categorical)
    if state[EXACT] != 0:
        exact_scores(scores, samples, n_samples, values[: state[OPEN_ROWS]], norms)
    rows, finite, psi_floor, ks_floor, flags = window_rule(
        scores,
        counts,
        finite_rows,
        chi2_factors,
        fwer_chi2_factors,
        limits[KS_C],
        limits[FWER_KS_C],
        sizes[MIN_ROWS],
        limits[PSI_WARN_AT],
        limits[PSI_ALERT_AT],
        limits[KS_ALERT_AT],
        limits[TVD_ALERT_AT],
    )
    alert_after, clear_after = sizes[ALERT_AFTER], sizes[CLEAR_AFTER]
    hysteresis_step(on, hits, misses, flags[ALERTING], flags[SCORED], alert_after, clear_after)
    n_scored = 0
    n_fwer = 0
    for f in range(flags.shape[1]):
        n_scored += flags[SCORED, f]
        n_fwer += flags[FWER_ALERTING, f]
    alerting = dataset_flag(n_fwer, n_scored, limits[DATASET_SHARE])
    hit = np.array([alerting])
    seen = np.array([n_scored > 0])
    hysteresis_step(dataset_on, dataset_hits, dataset_misses, hit, seen, alert_after, clear_after)
    out_counts, out_scores, out_rows, out_finite, out_pf, out_kf = out[:6]
    out_flags, out_on, out_dataset = out[6:]
    out_counts[k] = counts
    out_scores[k] = scores
    out_rows[k] = rows
    out_finite[k] = finite
    out_pf[k] = psi_floor
    out_kf[k] = ks_floor
    out_flags[k] = flags
    out_on[k] = on
    out_dataset[k, DATASET_ALERTING] = alerting
    out_dataset[k, DATASET_ON] = dataset_on[0]
    closed += counts
    counts[:] = 0
    state[OPEN_ROWS] = 0
    state[EXACT] = 1 if n_samples.any() else 0
