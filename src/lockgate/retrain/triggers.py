"""The performance trigger: retrain when the champion's online accuracy over its last N labels
falls too far below the accuracy it was gated with.

Online accuracy comes from the gateways' `/metrics` (labels joined to predictions, summed over
replicas by fleet.py). The watch keeps the scrapes at which the label count grew and measures
the newest window that holds at least N labels (the counts between two scrapes, so a gateway
restart, which starts its counters again, is handled as Prometheus' `increase` does). The gated
accuracy is the holdout accuracy in the version's recorded gate results (`gates.json`), else
in its lineage; a champion with neither is not watched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockgate.retrain.gateway_metrics import Snapshot, accuracy_window

MAX_HISTORY = 4096  # scrapes kept per champion (one per poll at which labels arrived)


def gated_accuracy(gates: Mapping[str, Any] | None, lineage: Mapping[str, Any]) -> float | None:
    """The holdout accuracy a version was gated with, from its gate results or its lineage."""
    for doc in ((gates or {}).get("report") or {}, lineage.get("gates") or {}):
        value = (doc.get("candidate") or {}).get("accuracy")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


@dataclass(frozen=True, slots=True)
class AccuracyReading:
    labels: float  # labels in the measured window (>= the watch's `labels`)
    accuracy: float  # online accuracy over them
    gated: float  # the champion's gated accuracy
    drop: float  # gated - accuracy

    def describe(self) -> str:
        return (
            f"online accuracy {self.accuracy:.4f} over the last {self.labels:.0f} labels is "
            f"{self.drop:.4f} below the gated {self.gated:.4f}"
        )


class AccuracyWatch:
    """Online accuracy of one version over (at least) its last `labels` labels."""

    def __init__(self, labels: int, drop: float) -> None:
        self.labels = labels
        self.drop = drop
        self._version: tuple[str, str] | None = None
        self._history: list[Snapshot] = []

    def reset(self) -> None:
        """Start over (after a job: the next verdict rests on labels that came after it)."""
        self._history.clear()

    def observe(
        self, snap: Snapshot, model: str, version: str, gated: float
    ) -> AccuracyReading | None:
        """Fold a scrape in; the reading of the newest window with enough labels, or None."""
        key = (model, str(version))
        if key != self._version:
            self._version, self._history = key, []
        history = self._history
        last = history[-1].labels.get(key) if history else None
        if last is None or snap.labels.get(key, 0.0) != last:
            history.append(snap)
            del history[:-MAX_HISTORY]
        for i in range(len(history) - 2, -1, -1):
            labels, accuracy = accuracy_window(history[i], history[-1], model, version)
            if labels >= self.labels and accuracy is not None:
                del history[:i]  # older scrapes will never be the newest window again
                return AccuracyReading(labels, accuracy, gated, gated - accuracy)
        return None

    def dropped(self, reading: AccuracyReading) -> bool:
        return reading.drop > self.drop
