"""A drift window's scores against a reference profile: the configuration, the scores and
alert flags of one window (`evaluate`), and the dataset rule. Pure functions over counts; the
windows themselves and their reports are :mod:`lockgate.monitor.drift`'s, their hysteresis
:mod:`lockgate.monitor.windowing`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lockgate.monitor.floors import ks_coefficient
from lockgate.monitor.kernels import divergence as dv
from lockgate.monitor.kernels import rule as rl
from lockgate.monitor.kernels.exact import exact_scores
from lockgate.monitor.reference import ReferenceProfile

SCORE_NAMES = ("psi", "js", "ks", "wasserstein", "nan_share", "chi2", "tvd", "unseen_share")


@dataclass(frozen=True)
class DriftConfig:
    """Window, band, significance and hysteresis settings; defaults and reasons inline.

    A window closes after ``window_rows`` rows or ``window_seconds`` (``math.inf``: never by
    time), whichever comes first. A window closed by time with fewer than ``min_rows`` rows is
    carried over, not discarded: it keeps its counts and is examined again at the next time
    boundary, so low traffic still gets scored, on longer windows.
    """

    window_rows: int = 1000  # KS sees a 0.2-sigma shift within two windows (99 %, N = 10^4)
    window_seconds: float = 60.0
    min_rows: int = 100  # below this even the floors' asymptotics are poor
    psi_warn: float = 0.1  # industry convention: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major
    psi_alert: float = 0.25
    # KS band: 0.05 of probability mass moved across some quantile. PSI is quadratic in small
    # shifts (0.2 sigma gives PSI ~ 0.04) while KS is linear (~0.08), so KS carries the
    # detection of small location shifts; 0.05 keeps those and ignores immaterial ones.
    ks_alert: float = 0.05
    # Reported for dashboards, not used by the rule (module doc): JS in bits, 0.01 = Evidently's
    # 0.1 on the JS *distance*; normed Wasserstein in reference stds, Evidently's default.
    js_band: float = 0.01
    wasserstein_band: float = 0.1
    alpha: float = 0.001  # per test and feature; dataset level uses alpha / (2F) per test
    # Categorical features: rows that changed category (total variation), alerted on when the
    # chi-square test is also significant. 0.03: a 3 % move is material for a category mix
    # (0.4/0.3/0.2/0.1 -> 0.35/0.30/0.20/0.15 moves 5 %) and far above TVD's own noise once
    # the test is significant.
    tvd_alert: float = 0.03
    # Share of scored features alerting at the Bonferroni level that makes "dataset drift"
    # (Evidently's default); one drifted feature is already reported by its own alert.
    dataset_share: float = 0.5
    alert_after: int = 1  # consecutive alerting windows that switch an alert on
    clear_after: int = 2  # consecutive clean windows that switch it off (no flapping)

    def __post_init__(self) -> None:
        if not 1 <= self.min_rows <= self.window_rows:
            raise ValueError("need 1 <= min_rows <= window_rows")
        if not self.window_seconds > 0 or not 0 < self.alpha < 1:
            raise ValueError("need window_seconds > 0 and 0 < alpha < 1")
        if not 0 < self.dataset_share <= 1 or self.alert_after < 1 or self.clear_after < 1:
            raise ValueError("need 0 < dataset_share <= 1, alert_after >= 1, clear_after >= 1")
        if not 0 <= self.tvd_alert < 1:
            raise ValueError("need 0 <= tvd_alert < 1")


@dataclass(frozen=True, eq=False)
class WindowScores:
    """One window's counts scored against a profile: everything but the hysteresis state."""

    counts: NDArray[np.int64]  # [F, M + 2] raw window histogram: sum these to merge workers
    rows: int
    finite: NDArray[np.int64]  # [F] finite values, the n of the floors
    scores: NDArray[np.float64]  # [F, 5] columns SCORE_NAMES
    psi_floor: NDArray[np.float64]
    ks_floor: NDArray[np.float64]
    scored: NDArray[np.bool_]  # >= min_rows rows and finite values; reference not empty
    psi_warn: NDArray[np.bool_]
    alerting: NDArray[np.bool_]  # the alert rule, per feature, this window only
    psi_alert: NDArray[np.bool_]
    ks_alert: NDArray[np.bool_]
    chi2_alert: NDArray[np.bool_]  # categorical: chi-square significant and TVD past its band
    fwer_alerting: NDArray[np.bool_]  # the same rule with Bonferroni floors (alpha / 2F)
    share: float  # alerting / scored features (NaN if none scored)
    share_fwer: float
    dataset_alerting: bool


def evaluate(
    profile: ReferenceProfile,
    config: DriftConfig,
    counts: ArrayLike,
    values: NDArray[np.float64] | None = None,
) -> WindowScores:
    """Score a window histogram (possibly the sum of several workers') with the alert rule.
    With the window's rows ``values[n, F]`` (float64, the rows the counts hold), KS and
    Wasserstein of continuous features are exact against the profile's sorted sample;
    without them (merged histograms), binned."""
    win = np.array(counts, dtype=np.int64, copy=True)
    if win.shape != profile.counts.shape:
        raise ValueError(f"window counts must have shape {profile.counts.shape}")
    scores = dv.drift_scores(
        profile.counts, win, profile.edges, profile.n_edges, profile.norms, profile.categorical
    )
    if values is not None and profile.has_samples:
        exact_scores(scores, profile.samples, profile.n_samples, values, profile.norms)
    fwer_alpha = config.alpha / (2 * profile.n_features)
    rows, finite, pf, kf, flags = rl.window_rule(
        scores,
        win,
        profile.finite_rows,
        profile.chi2_factors(config.alpha),
        profile.chi2_factors(fwer_alpha),
        ks_coefficient(config.alpha),
        ks_coefficient(fwer_alpha),
        config.min_rows,
        config.psi_warn,
        config.psi_alert,
        config.ks_alert,
        config.tvd_alert,
    )
    fwer = flags[rl.FWER_ALERTING]
    n_scored = int(np.count_nonzero(flags[rl.SCORED]))
    dataset = dataset_rule(int(np.count_nonzero(fwer)), n_scored, config.dataset_share)
    return window_scores(win, rows, finite, scores, pf, kf, flags, dataset)


def window_scores(
    counts: NDArray[np.int64],
    rows: int | np.int64,
    finite: NDArray[np.int64],
    scores: NDArray[np.float64],
    psi_floor: NDArray[np.float64],
    ks_floor: NDArray[np.float64],
    flags: NDArray[np.bool_],
    dataset_alerting: bool,
) -> WindowScores:
    """A window's scores from the rule's outputs (`rl.window_rule`, or the window kernel's)."""
    scored, alerting, fwer = flags[rl.SCORED], flags[rl.ALERTING], flags[rl.FWER_ALERTING]
    n_scored = int(np.count_nonzero(scored))
    return WindowScores(
        counts=counts,
        rows=int(rows),
        finite=finite,
        scores=scores,
        psi_floor=psi_floor,
        ks_floor=ks_floor,
        scored=scored,
        psi_warn=flags[rl.PSI_WARN],
        alerting=alerting,
        psi_alert=flags[rl.PSI_ALERT],
        ks_alert=flags[rl.KS_ALERT],
        chi2_alert=flags[rl.CHI2_ALERT],
        fwer_alerting=fwer,
        share=np.count_nonzero(alerting) / n_scored if n_scored else math.nan,
        share_fwer=np.count_nonzero(fwer) / n_scored if n_scored else math.nan,
        dataset_alerting=dataset_alerting,
    )


def dataset_rule(hits: int, scored: int, share: float) -> bool:
    """The dataset flag (module doc): ``hits`` Bonferroni-level feature alerts among ``scored``
    features reach ``max(min(2, scored), ceil(share * scored))``."""
    needed = max(min(2, scored), math.ceil(share * scored - 1e-9))
    return scored > 0 and hits >= needed
