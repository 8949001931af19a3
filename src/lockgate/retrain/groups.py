"""Groups of holdout rows by one input feature, and the fairness comparison over them.

A feature with few distinct values (a binary or categorical attribute: at most
`MAX_CATEGORIES`) makes one group per exact value; a continuous one makes quantile bins. A
binary attribute therefore always gives two groups, never one bin that holds both.

Fairness, as the gate judges it: per group, the metric (accuracy or MAE) and the positive rate
(share of rows predicted 1; classification only). The between-group gap of a figure is its
largest minus its smallest value over the groups with at least `min_rows` rows (smaller groups
are reported, not judged: their figures are noise). The candidate may widen either gap by at most
the allowed increase over the champion's gap on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
MAX_CATEGORIES = 20  # at most this many distinct values: one group per value


@dataclass(frozen=True, slots=True)
class Groups:
    """Which group each row is in, and what each group is."""

    index: Array  # int64 [rows]: the group of each row
    kind: str  # "values" (one group per exact value) or "quantiles" (bins)
    lo: Array  # float64 [groups]: the value (kind "values") or the bin's lower edge
    hi: Array  # float64 [groups]: the value again, or the bin's upper edge

    @property
    def count(self) -> int:
        return int(self.lo.shape[0])

    def describe(self, g: int, feature: int) -> str:
        if self.kind == "values":
            return f"input[{feature}] = {self.lo[g]:g}"
        return f"input[{feature}] in [{self.lo[g]:.4g}, {self.hi[g]:.4g}]"


def make_groups(column: Array, bins: int, max_categories: int = MAX_CATEGORIES) -> Groups:
    """Exact values when the column has at most `max_categories` distinct values, else
    `bins` quantile bins (tied edges collapsed; the last bin includes its upper edge)."""
    column = np.asarray(column, np.float64)
    values, index = np.unique(column, return_inverse=True)
    if values.size <= max_categories:
        return Groups(index.astype(np.int64).reshape(-1), "values", values, values)
    edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, bins + 1)))
    index = np.searchsorted(edges[1:-1], column, side="right").astype(np.int64)
    return Groups(index, "quantiles", edges[:-1], edges[1:])


def group_figures(
    groups: Groups, scores: Array, positive: Array | None
) -> tuple[Array, Array, Array | None]:
    """(rows, mean score, positive rate) per group, by bincount (no loop over rows). Groups
    without rows have NaN figures."""
    rows = np.bincount(groups.index, minlength=groups.count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(groups.index, scores, minlength=groups.count) / rows
        rate = None
        if positive is not None:
            rate = np.bincount(groups.index, positive, minlength=groups.count) / rows
    return rows, mean, rate


@dataclass(frozen=True, slots=True)
class Gaps:
    """Between-group gaps of one model over the judged groups (None: fewer than two)."""

    metric: float | None
    positive_rate: float | None


def gaps(mean: Array, rate: Array | None, judged: Array) -> Gaps:
    def spread(values: Array | None) -> float | None:
        if values is None or int(judged.sum()) < 2:
            return None
        v = values[judged]
        return float(v.max() - v.min())

    return Gaps(spread(mean), spread(rate))


@dataclass(frozen=True, slots=True)
class Fairness:
    """The comparison the fairness gate judges, with the per-group table for the report."""

    feature: int
    kind: str
    min_rows: int
    table: list[dict[str, Any]]
    candidate: Gaps
    champion: Gaps | None
    increase: float | None  # the larger widening of the two gaps (None: nothing to compare)
    widened: str | None = None  # "metric" or "positive rate": the gap that widened most
    notes: list[str] = field(default_factory=list)


def compare(
    column: Array,
    bins: int,
    min_rows: int,
    feature: int,
    candidate: tuple[Array, Array | None],
    champion: tuple[Array, Array | None] | None,
) -> Fairness:
    """Per group figures of both models on the same rows, and how much the candidate widens
    the between-group gaps. `candidate` / `champion` are (per-row score, per-row positive
    prediction or None)."""
    groups = make_groups(column, bins)
    rows, cand_mean, cand_rate = group_figures(groups, *candidate)
    judged = rows >= min_rows
    champ_mean = champ_rate = None
    if champion is not None:
        _, champ_mean, champ_rate = group_figures(groups, *champion)
    table = []
    for g in range(groups.count):
        if rows[g] == 0:
            continue
        table.append(
            {
                "group": groups.describe(g, feature),
                "lo": float(groups.lo[g]),
                "hi": float(groups.hi[g]),
                "rows": int(rows[g]),
                "judged": bool(judged[g]),
                "candidate": float(cand_mean[g]),
                "champion": None if champ_mean is None else float(champ_mean[g]),
                "candidate_positive_rate": None if cand_rate is None else float(cand_rate[g]),
                "champion_positive_rate": None if champ_rate is None else float(champ_rate[g]),
            }
        )
    mine = gaps(cand_mean, cand_rate, judged)
    theirs = None if champ_mean is None else gaps(champ_mean, champ_rate, judged)
    notes = []
    small = int((~judged & (rows > 0)).sum())
    if small:
        notes.append(f"{small} group(s) with fewer than {min_rows} rows reported, not judged")
    increase, widened = None, None
    if theirs is not None:
        pairs = (
            ("metric", mine.metric, theirs.metric),
            ("positive rate", mine.positive_rate, theirs.positive_rate),
        )
        for name, a, b in pairs:
            if a is None or b is None:
                continue
            delta = a - b
            if increase is None or delta > increase:
                increase, widened = delta, name
    return Fairness(feature, groups.kind, min_rows, table, mine, theirs, increase, widened, notes)
