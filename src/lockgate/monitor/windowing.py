"""What the per-feature drift windows (:mod:`lockgate.monitor.drift`) and the joint-drift windows
(:mod:`lockgate.monitor.joint`) share: the alert hysteresis, and closing a window by time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.drift_scores import DriftConfig
from lockgate.monitor.kernels import rule as rl

Report = TypeVar("Report")


class Hysteresis:
    """On after ``alert_after`` consecutive hits, off after ``clear_after`` consecutive misses;
    unseen (unscored) entries keep their state and streaks."""

    def __init__(self, size: int) -> None:
        self.on = np.zeros(size, dtype=np.bool_)
        self.hits = np.zeros(size, dtype=np.int64)
        self.misses = np.zeros(size, dtype=np.int64)

    def step(self, hit: NDArray[np.bool_], seen: NDArray[np.bool_], cfg: DriftConfig) -> None:
        rl.hysteresis_step(
            self.on, self.hits, self.misses, hit, seen, cfg.alert_after, cfg.clear_after
        )


class TimedWindows(Generic[Report]):
    """Tumbling windows that also close ``config.window_seconds`` after they opened: a subclass
    sets ``config``, ``_clock`` and ``_opened`` (when the open window started counting time)
    and closes its window in ``_close``."""

    config: DriftConfig
    _clock: Callable[[], float]
    _opened: float

    def tick(self, now: float | None = None) -> list[Report]:
        """Close the window by time if its boundary has passed (call it when idle)."""
        now = self._clock() if now is None else now
        if now - self._opened >= self.config.window_seconds:
            return self._close(now, "time")
        return []

    def _close(self, now: float, closed_by: str) -> list[Report]:
        raise NotImplementedError
