"""Joint drift of a version's continuous inputs: tumbling windows of random-Fourier-feature sums
scored by MMD against the reference embedding (:mod:`lockgate.monitor.joint_profile`).

Windows close like the per-feature drift windows (:class:`~lockgate.monitor.drift.DriftConfig`:
``window_rows`` rows or ``window_seconds``, whichever first; a window closed by time with fewer
than ``min_rows`` complete rows is carried over). Rows with a non-finite joint value count
towards the window's size but not its embedding; a window that fills with fewer than
``min_rows`` complete rows is dropped unscored. A window alarms when its score exceeds the
threshold for its own number of complete rows; the alarm switches on and off with the same
hysteresis as the per-feature alerts (``alert_after`` / ``clear_after`` windows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lockgate.monitor.drift import DriftConfig
from lockgate.monitor.joint_profile import JointProfile
from lockgate.monitor.kernels.rff import (
    ALERT_AFTER,
    CLEAR_AFTER,
    MIN_ROWS,
    N_SIZES,
    N_WINDOW_FIELDS,
    OPEN_COMPLETE,
    OPEN_ROWS,
    REFERENCE_ROWS,
    WINDOW_ROWS,
    rff_fold,
)
from lockgate.monitor.windowing import Hysteresis, TimedWindows


@dataclass(frozen=True)
class JointWindow:
    """One scored window."""

    index: int
    rows: int  # complete rows (the n of the threshold)
    score: float
    threshold: float
    alarming: bool  # this window alone: score > threshold
    alarm: bool  # after hysteresis
    closed_by: str  # "rows" or "time"


@dataclass(frozen=True)
class JointState:
    """The monitor's state for `/metrics`: NaN scores before the first window."""

    score: float
    threshold: float
    alarm: bool
    windows: int
    open_rows: int


class JointMonitor(TimedWindows[JointWindow]):
    """Tumbling-window joint-drift monitor of one version in one worker (not thread-safe: one
    drain task owns it). ``clock`` is injectable for tests."""

    def __init__(
        self,
        profile: JointProfile,
        config: DriftConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.config = config if config is not None else DriftConfig()
        self._clock = clock
        self._sums = np.zeros(profile.features)
        self._rows = 0  # rows in the open window
        self._complete = 0  # of which complete (every joint column finite)
        self._opened = clock()
        self._index = 0
        self._alarm = Hysteresis(1)
        self._last: JointWindow | None = None
        self._widest = int(profile.columns.max())  # the highest input column followed
        self._fold_profile = (
            profile.columns, profile.center, profile.scale, profile.omega, profile.phase,
            profile.embedding,
        )  # fmt: skip
        cfg, self._sizes = self.config, np.empty(N_SIZES, np.int64)  # the kernel's sizes
        for at, size in (
            (WINDOW_ROWS, cfg.window_rows),
            (MIN_ROWS, cfg.min_rows),
            (ALERT_AFTER, cfg.alert_after),
            (CLEAR_AFTER, cfg.clear_after),
            (REFERENCE_ROWS, profile.rows),
        ):
            self._sizes[at] = size

    def update(self, values: ArrayLike) -> list[JointWindow]:
        """Fold a slice ``[rows, F]`` of monitored input rows into the window(s); returns the
        windows this call closed. Split exactly at every ``window_rows`` boundary, in one
        compiled call (:func:`~lockgate.monitor.kernels.rff.rff_fold`)."""
        table = np.asarray(values)
        if table.ndim != 2 or table.shape[1] <= self._widest:
            raise ValueError("values must be 2-D with every joint column")
        if table.dtype not in (np.float32, np.float64):
            table = table.astype(np.float64)
        now = self._clock()
        closed = self.tick(now)
        if not table.shape[0]:
            return closed
        state = np.array([self._rows, self._complete], np.int64)
        out = np.empty(((self._rows + table.shape[0]) // self.config.window_rows, N_WINDOW_FIELDS))
        alarm = (self._alarm.on, self._alarm.hits, self._alarm.misses)
        written = rff_fold(
            table, self._fold_profile, self.profile.null_quantile, self._sizes, self._sums,
            state, alarm, out,
        )  # fmt: skip
        if out.shape[0]:  # a window closed (scored or dropped): the next one opens now
            self._opened = now
        self._rows, self._complete = int(state[OPEN_ROWS]), int(state[OPEN_COMPLETE])
        for n, score, threshold, alarming, on in out[:written].tolist():
            closed.append(self._window(int(n), score, threshold, bool(alarming), bool(on), "rows"))
        return closed

    def _close(self, now: float, closed_by: str) -> list[JointWindow]:
        """Close the open window by time (`update` closes by rows, in the kernel); with too
        few complete rows it is carried over."""
        self._opened = now
        n = self._complete
        if n < self.config.min_rows:
            return []
        score = self.profile.score(self._sums, n)
        threshold = self.profile.threshold(n)
        hit = np.array([score > threshold])
        self._alarm.step(hit, np.ones(1, dtype=np.bool_), self.config)
        window = self._window(n, score, threshold, bool(hit[0]), bool(self._alarm.on[0]), closed_by)
        self._reset()
        return [window]

    def _window(
        self, n: int, score: float, threshold: float, alarming: bool, alarm: bool, closed_by: str
    ) -> JointWindow:
        window = JointWindow(self._index, n, score, threshold, alarming, alarm, closed_by)
        self._index += 1
        self._last = window
        return window

    def _reset(self) -> None:
        self._sums[:] = 0.0
        self._rows = 0
        self._complete = 0

    @property
    def state(self) -> JointState:
        last = self._last
        return JointState(
            score=last.score if last else math.nan,
            threshold=last.threshold if last else math.nan,
            alarm=bool(self._alarm.on[0]),
            windows=self._index,
            open_rows=self._rows,
        )

    def report(self) -> dict[str, Any]:
        """JSON-ready view for the admin API: the columns followed and the last window."""
        last = self._last
        return {
            "features": list(self.profile.names),
            "embedding_size": self.profile.features,
            "bandwidth": self.profile.bandwidth,
            "alpha": self.profile.alpha,
            "reference_rows": self.profile.rows,
            "windows": self._index,
            "open_rows": self._rows,
            "alarm": bool(self._alarm.on[0]),
            "last_window": None
            if last is None
            else {
                "rows": last.rows,
                "score": last.score,
                "threshold": last.threshold,
                "alarming": last.alarming,
                "closed_by": last.closed_by,
            },
        }
