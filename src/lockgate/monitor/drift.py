"""Drift against a reference profile: tumbling windows, noise floors, alert rule and hysteresis.

Scores come from :func:`~lockgate.monitor.kernels.divergence.drift_scores` on the profile's
slots. A continuous feature has quantile bins plus two open-ended slots, below the reference
minimum and above its maximum, where the reference has no mass; a categorical feature (few
integer values in the reference, or declared) has one slot per reference category and slots
between and around them for everything else, so category frequencies are exact and a new
category is counted as "unseen", never folded into a neighbour. A fixed effect-size band alone
is wrong at small windows (pure sampling noise in 100 rows gives PSI ~ 0.1-0.3) and a
significance test alone is wrong at large ones (with 10^5 rows a negligible shift is
"significant"), so a score only counts when it beats both:

    feature alerts  <=>  window and feature have >= min_rows finite values, and
                         (PSI > max(psi_alert, psi_floor) and chi2 > psi_floor)
                      or (KS > max(ks_alert, ks_floor))               continuous only
                      or (TVD > tvd_alert and chi2 > psi_floor)       categorical only

``chi2`` is the two-sample Pearson statistic times ``1/n + 1/N`` (PSI's scale, see the kernel):
it is the significance test, and PSI the effect size. PSI alone beat its floor 3-4x more often
than ``alpha`` at n ~ 100, because a nearly empty window bin costs 0.2-0.7 of PSI through the
clipped log; the Pearson statistic has no log and its tail is close to chi-square there.

Noise floors, for a feature with n finite window values, N finite reference values and B
finite bins holding reference mass (``df = max(B - 1, 1)``):

- PSI: to second order ``(q - p) ln(q / p) = (q - p)^2 / m`` with ``m = (p + q) / 2``, so PSI is
  the symmetric chi-square distance ``sum (q - p)^2 / m``. Under the null both histograms sample
  the same multinomial ``pi``, ``q - p`` has covariance ``(1/n + 1/N)(diag(pi) - pi pi^T)``, and
  ``sum (q - p)^2 / pi / (1/n + 1/N)`` is asymptotically chi-square with ``B - 1`` degrees of
  freedom (the two-sample Pearson statistic). Hence
  ``psi_floor = chi2.ppf(1 - alpha, B - 1) * (1/n + 1/N)``.
- KS: the two-sample statistic scaled by ``sqrt(nN / (n + N))`` tends to the Kolmogorov
  distribution, whose tail is ``2 exp(-2 c^2)`` up to ``O(exp(-8 c^2))``; so
  ``ks_floor = c(alpha) sqrt((n + N) / (nN))`` with ``c(alpha) = sqrt(-ln(alpha / 2) / 2)``. KS is
  exact (:mod:`~lockgate.monitor.kernels.exact`: the window's rows against the reference's
  sorted sample); ties make the test conservative, so the floor errs on the quiet side. A window
  merged from other workers' histograms has no rows: its KS is binned, which never exceeds the
  exact statistic (quieter still), and so is its Wasserstein (biased up by up to half a bin).
- JS (information only): JS in nats is ``sum (p - q)^2 / (8 m)`` to second order, i.e. PSI / 8,
  so ``js_floor = psi_floor / (8 ln 2)`` in bits.

Per feature the two tests at level ``alpha`` give a nominal false-alert rate <= ``2 alpha`` per
window (``benchmarks/bench_drift.py`` measures it). JS and Wasserstein are reported, not alerted
on: JS is PSI / 8 for small effects (no added power, only added tests), and normed Wasserstein
has no distribution-free null distribution. The unseen share (values in slots without
reference mass) is reported per feature and alerted on by Prometheus for categorical features.

Dataset level: with F features of which S are scored, let k be the number alerting with
Bonferroni floors (each test at ``alpha / (2F)``). The window's dataset flag is raised when

    k >= max(min(2, S), ceil(dataset_share * S))

i.e. at least ``dataset_share`` of the scored features and never fewer than two (one, when only
one is scored). Under the null, by the union bound, the chance that *any* feature alerts at the
Bonferroni level is <= ``alpha`` whatever the dependence between features, once each test holds
its level; requiring two of them makes the flag rarer still (~``alpha^2`` for independent
features), so a single feature's noise can never be a dataset alert — with 2 features and a
share of 0.5 it used to be. With one feature the flag is that feature's Bonferroni alert.
``benchmarks/drift_power.py`` measures false alerts and power at 2 and 16 features.

Windows of several workers merge exactly: every closed window carries its raw ``counts``; sum
them and call :func:`evaluate`, or add a foreign open window with :meth:`DriftMonitor.merge_window`
(both score KS and Wasserstein on bins, as above). A monitor keeps its open window's rows
(``window_rows`` x F float64) for the exact statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lockgate.monitor.drift_scores import SCORE_NAMES as SCORE_NAMES
from lockgate.monitor.drift_scores import DriftConfig as DriftConfig
from lockgate.monitor.drift_scores import WindowScores as WindowScores
from lockgate.monitor.drift_scores import dataset_rule as dataset_rule
from lockgate.monitor.drift_scores import evaluate as evaluate
from lockgate.monitor.drift_scores import window_scores as window_scores
from lockgate.monitor.floors import ks_coefficient
from lockgate.monitor.kernels import divergence as dv
from lockgate.monitor.kernels import rule as rl
from lockgate.monitor.kernels import window as wn
from lockgate.monitor.kernels.histogram import new_counts
from lockgate.monitor.reference import ReferenceProfile as ReferenceProfile
from lockgate.monitor.reference import build_profile as build_profile
from lockgate.monitor.reference import categorical_mask as categorical_mask
from lockgate.monitor.windowing import Hysteresis, TimedWindows


def _json(x: Any) -> Any:
    """Plain JSON types; NaN and inf become None (JSON has neither)."""
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_ | np.integer):
        return x.item()
    return x


@dataclass(frozen=True, eq=False)
class WindowReport:
    """A closed, scored window plus the alert state after it (hysteresis applied)."""

    index: int  # 0, 1, ... per monitor, scored windows only
    started: float  # clock time the window opened (carried windows: the first opening)
    ended: float
    closed_by: str  # "rows" or "time"
    window: WindowScores
    feature_alert: NDArray[np.bool_]  # alert state per feature after this window
    dataset_alert: bool

    def to_dict(self, names: Sequence[str], categorical: Sequence[bool] = ()) -> dict[str, Any]:
        """JSON-ready summary keyed by feature name."""
        w = self.window
        features: dict[str, Any] = {}
        for f, name in enumerate(names):
            entry: dict[str, Any] = {k: _json(w.scores[f, i]) for i, k in enumerate(SCORE_NAMES)}
            entry["finite_rows"] = int(w.finite[f])
            pf, kf = _json(w.psi_floor[f]), _json(w.ks_floor[f])
            entry["floors"] = {
                "psi": pf,
                "chi2": pf,
                "ks": kf,
                "js": pf and pf / (8.0 * math.log(2.0)),
            }
            entry["categorical"] = bool(categorical[f]) if len(categorical) else False
            for flag in ("scored", "psi_warn", "psi_alert", "ks_alert", "chi2_alert", "alerting"):
                entry[flag] = bool(getattr(w, flag)[f])
            entry["alert"] = bool(self.feature_alert[f])
            features[name] = entry
        return {
            "index": self.index,
            "started": self.started,
            "ended": self.ended,
            "closed_by": self.closed_by,
            "rows": w.rows,
            "share": _json(w.share),
            "share_fwer": _json(w.share_fwer),
            "dataset_alerting": w.dataset_alerting,
            "dataset_alert": self.dataset_alert,
            "features": features,
        }


@dataclass(frozen=True, eq=False)
class DriftState:
    """Snapshot of a monitor's alert state."""

    windows: int  # scored windows so far
    open_rows: int  # rows in the window being filled
    feature_alert: NDArray[np.bool_]
    alert_streak: NDArray[np.int64]  # consecutive alerting windows per feature
    clean_streak: NDArray[np.int64]  # consecutive clean windows per feature
    last_scores: NDArray[np.float64]  # [F, 5], NaN before the first window
    share: float  # of the last window; NaN before the first
    share_fwer: float
    dataset_alert: bool
    dataset_clean_streak: int


class DriftMonitor(TimedWindows[WindowReport]):
    """Tumbling-window drift monitor of one model version in one worker (not thread-safe: one
    drain task owns it). ``clock`` is injectable for tests; it defaults to ``time.monotonic``."""

    def __init__(
        self,
        profile: ReferenceProfile,
        config: DriftConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.config = config if config is not None else DriftConfig()
        self._clock = clock
        self._counts = new_counts(profile.edges)
        self._closed = new_counts(profile.edges)  # every scored window's rows, summed
        self._rows = 0
        # The open window's own rows, for exact KS and Wasserstein (bounded by window_rows);
        # a merged foreign histogram has no rows, and its window is scored on bins.
        keep = self.config.window_rows if profile.has_samples else 0
        self._values = np.empty((keep, profile.n_features), dtype=np.float64)
        self._exact = profile.has_samples
        self._started = self._opened = clock()
        self._index = 0
        self._features = Hysteresis(profile.n_features)
        self._dataset = Hysteresis(1)
        self._last: WindowReport | None = None
        cfg, fwer_alpha = self.config, self.config.alpha / (2 * profile.n_features)
        self._kernel_profile = (
            *(profile.edges, profile.n_edges, profile.counts, profile.norms, profile.categorical),
            *(profile.samples, profile.n_samples, profile.finite_rows),
            *(profile.chi2_factors(cfg.alpha), profile.chi2_factors(fwer_alpha)),
        )
        self._limits = np.zeros(7, np.float64)
        self._limits[[wn.PSI_WARN_AT, wn.PSI_ALERT_AT, wn.KS_ALERT_AT, wn.TVD_ALERT_AT]] = (
            cfg.psi_warn,
            cfg.psi_alert,
            cfg.ks_alert,
            cfg.tvd_alert,
        )
        self._limits[wn.DATASET_SHARE] = cfg.dataset_share
        self._limits[wn.KS_C] = ks_coefficient(cfg.alpha)
        self._limits[wn.FWER_KS_C] = ks_coefficient(fwer_alpha)
        self._sizes = np.zeros(4, np.int64)
        self._sizes[[wn.WINDOW_ROWS, wn.MIN_ROWS, wn.ALERT_AFTER, wn.CLEAR_AFTER]] = (
            cfg.window_rows,
            cfg.min_rows,
            cfg.alert_after,
            cfg.clear_after,
        )

    @property
    def window_counts(self) -> NDArray[np.int64]:
        """A copy of the open window's histogram, for merging into another worker's monitor."""
        return self._counts.copy()

    @property
    def cumulative_counts(self) -> NDArray[np.int64]:
        """Every row seen so far, binned (scored windows plus the open one): merging workers
        or replicas adds these, and the difference of two reads is a window anyone can score."""
        return self._closed + self._counts

    def merge_window(self, counts: ArrayLike) -> list[WindowReport]:
        """Add another worker's open-window histogram to this one (merge = add); closes the
        window if that fills it."""
        add = np.asarray(counts, dtype=np.int64)
        if add.shape != self._counts.shape:
            raise ValueError(f"window counts must have shape {self._counts.shape}")
        self._counts += add
        self._rows += int(add[0].sum())
        self._exact = False
        return self._close(self._clock(), "rows") if self._rows >= self.config.window_rows else []

    def update(self, values: ArrayLike, *, reports: bool = True) -> list[WindowReport]:
        """Fold a slice ``[rows, F]`` into the window(s); returns the windows this call closed.

        A window past its time boundary is closed first (the new rows arrived after it); then
        the slice is split exactly at every ``window_rows`` boundary. `reports=False` (the
        drain's way) returns none of the windows the slice closed and builds only the last
        one's report, for `state` and `report`: a report costs the drain more Python, with the
        GIL held, than its window's statistics.
        """
        table = np.asarray(values)
        if table.ndim != 2 or table.shape[1] != self.profile.n_features:
            raise ValueError(f"values must be 2-D with {self.profile.n_features} columns")
        if table.dtype not in (np.float32, np.float64):
            table = table.astype(np.float32 if table.dtype == np.float16 else np.float64)
        now = self._clock()
        closed = self.tick(now)
        if table.shape[0]:
            closed += self._fold(np.ascontiguousarray(table), now, reports)
        return closed

    def _fold(
        self, table: NDArray[np.floating[Any]], now: float, reports: bool
    ) -> list[WindowReport]:
        """The rows in one compiled call (:mod:`~lockgate.monitor.kernels.window`: one hand-back
        of the GIL per slice, not several per window), then a report per window it closed
        (`reports`) or of the last one only."""
        k = wn.windows_closed(self._rows, table.shape[0], self.config.window_rows)
        f, width = self.profile.n_features, self._counts.shape[1]
        out = (
            np.empty((k, f, width), np.int64),
            np.empty((k, f, dv.N_SCORES), np.float64),
            np.empty(k, np.int64),
            np.empty((k, f), np.int64),
            np.empty((k, f), np.float64),
            np.empty((k, f), np.float64),
            np.empty((k, rl.N_FLAGS, f), np.bool_),
            np.empty((k, f), np.bool_),
            np.empty((k, 2), np.bool_),
        )
        state = np.array([self._rows, self._exact], np.int64)
        features, dataset = self._features, self._dataset
        hysteresis = (features.on, features.hits, features.misses)
        hysteresis_all = (*hysteresis, dataset.on, dataset.hits, dataset.misses)
        window = (self._counts, self._closed, self._values, state)
        wn.fold_rows(
            table, self._kernel_profile, self._limits, self._sizes, window, hysteresis_all, out
        )
        self._rows, self._exact = int(state[wn.OPEN_ROWS]), bool(state[wn.EXACT])
        first = 0 if reports else max(k - 1, 0)  # the last one is kept for `state` anyway
        built = [
            self._report(now, self._index + i, *(column[i] for column in out))
            for i in range(first, k)
        ]
        if built:
            self._index += k
            self._last = built[-1]
            self._opened = self._started = now
        return built if reports else []

    def _report(
        self,
        now: float,
        index: int,
        counts: NDArray[np.int64],
        scores: NDArray[np.float64],
        rows: np.int64,
        finite: NDArray[np.int64],
        psi_floor: NDArray[np.float64],
        ks_floor: NDArray[np.float64],
        flags: NDArray[np.bool_],
        feature_on: NDArray[np.bool_],
        dataset: NDArray[np.bool_],
    ) -> WindowReport:
        """The report of the `index`-th window, which the kernel closed (the fields `evaluate`
        and `_close` set)."""
        dataset_alerting = bool(dataset[wn.DATASET_ALERTING])
        window = window_scores(
            counts, rows, finite, scores, psi_floor, ks_floor, flags, dataset_alerting
        )
        started = self._started if index == self._index else now  # the first one: carried
        return WindowReport(
            index, started, now, "rows", window, feature_on, bool(dataset[wn.DATASET_ON])
        )

    def _close(self, now: float, closed_by: str) -> list[WindowReport]:
        self._opened = now
        if self._rows < self.config.min_rows:  # carry over (0 rows: nothing to carry)
            if self._rows == 0:
                self._started = now
            return []
        values = self._values[: self._rows] if self._exact else None
        scores = evaluate(self.profile, self.config, self._counts, values)
        self._features.step(scores.alerting, scores.scored, self.config)
        self._dataset.step(
            np.array([scores.dataset_alerting]), np.array([scores.scored.any()]), self.config
        )
        on, dataset_on = self._features.on.copy(), bool(self._dataset.on[0])
        report = WindowReport(self._index, self._started, now, closed_by, scores, on, dataset_on)
        self._index += 1
        self._last = report
        self._closed += self._counts
        self._counts = new_counts(self.profile.edges)
        self._rows = 0
        self._exact = self.profile.has_samples
        self._started = now
        return [report]

    @property
    def state(self) -> DriftState:
        """The current alert state (after hysteresis)."""
        last = self._last
        nan_scores = np.full((self.profile.n_features, dv.N_SCORES), np.nan)
        return DriftState(
            windows=self._index,
            open_rows=self._rows,
            feature_alert=self._features.on.copy(),
            alert_streak=self._features.hits.copy(),
            clean_streak=self._features.misses.copy(),
            last_scores=last.window.scores.copy() if last else nan_scores,
            share=last.window.share if last else math.nan,
            share_fwer=last.window.share_fwer if last else math.nan,
            dataset_alert=bool(self._dataset.on[0]),
            dataset_clean_streak=int(self._dataset.misses[0]),
        )

    def report(self) -> dict[str, Any]:
        """JSON-ready view: settings and bands, alert state per feature, the last window."""
        st = self.state
        names = self.profile.names
        return {
            "config": {k: _json(v) for k, v in asdict(self.config).items()},
            "reference_rows": self.profile.rows,
            "windows": st.windows,
            "open_rows": st.open_rows,
            "dataset_alert": st.dataset_alert,
            "features": {
                n: {
                    "alert": bool(st.feature_alert[f]),
                    "alert_streak": int(st.alert_streak[f]),
                    "clean_streak": int(st.clean_streak[f]),
                }
                for f, n in enumerate(names)
            },
            "last_window": (
                self._last.to_dict(names, self.profile.categorical.tolist()) if self._last else None
            ),
        }
