"""Candidate versus champion on the same holdout, judged by the pipeline's gates. A candidate is
registered only when every gate passes, and the report explains each verdict (value, threshold,
detail), so a refused candidate says why.

Gates: `schema` (inputs and outputs identical in name, datatype and shape: a candidate must be a
drop-in replacement), `metric` (accuracy or MAE within the tolerance of the champion's),
`slices` (per group of one feature, no worse than the champion by more than `max_slice_gap`),
`fairness` (the gaps between the groups of `group_by` in the metric and the positive rate widen
by at most `max_group_gap_increase`, see groups.py) and `latency` (p99 of batch-1 calls on one
thread, measured here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lockgate.errors import invalid
from lockgate.retrain import groups as grouping
from lockgate.retrain.pipeline import METRICS, GatesSpec

Array = np.ndarray[Any, Any]
LATENCY_CALLS = 200
WARMUP_CALLS = 20


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    task: str
    metric: str  # "accuracy" or "mae"
    rows: int  # holdout rows
    candidate: dict[str, float | None]  # metric, p99_latency_ms
    champion: dict[str, float | None] | None  # None: there was no champion to compare with
    slices: list[dict[str, Any]]  # per bin: bin, lo, hi, rows, candidate, champion, gap
    gates: list[GateResult] = field(default_factory=list)
    fairness: dict[str, Any] | None = None  # groups of `group_by` (groups.Fairness as a dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def gate(self, name: str) -> GateResult:
        """The named gate's result; KeyError when it was not evaluated (a model failed to run)."""
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        doc = asdict(self)
        doc["passed"] = self.passed
        doc["metrics"] = {"candidate": self.candidate, "champion": self.champion}
        clean: dict[str, Any] = _finite(doc)
        return clean


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a stable latency measure, and fair to both models
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def output_schema(model: bytes) -> tuple[list[tuple[str, int, tuple[int, ...]]], ...]:
    """(inputs, outputs) as (name, onnx element type, shape with -1 for symbolic dims)."""
    import onnx

    graph = onnx.load_model_from_string(model).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values: Any) -> list[tuple[str, int, tuple[int, ...]]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append((v.name, int(t.elem_type), dims))
        return out

    return describe(graph.input), describe(graph.output)


def _schema_gate(candidate: bytes, champion: bytes | None) -> GateResult:
    if champion is None:
        return GateResult("schema", True, None, None, "no champion: nothing to match")
    mine, theirs = output_schema(candidate), output_schema(champion)
    for side, a, b in (("inputs", mine[0], theirs[0]), ("outputs", mine[1], theirs[1])):
        if a != b:
            return GateResult("schema", False, None, None, f"{side} differ: {a} vs champion {b}")
    return GateResult("schema", True, None, None, "inputs and outputs match the champion")


def _predict(session: Any, x: Array) -> dict[str, Array]:
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: np.ascontiguousarray(x, np.float32)})
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outputs, strict=True)}


Scores = tuple[Array, Array | None]  # per row: score, and 1/0 predicted positive (or None)


def _row_scores(outputs: dict[str, Array], y: Array, task: str) -> Scores:
    """Per row: 1/0 correct (classification) or absolute error (regression); and for
    classification whether the prediction is the positive class (1)."""
    rows = y.shape[0]
    first = next(iter(outputs.values())).reshape(rows, -1)[:, 0].astype(np.float64)
    if task == "regression":
        return np.abs(first - y), None
    if "label" in outputs:
        predicted = outputs["label"].reshape(rows, -1)[:, 0].astype(np.float64)
    else:
        predicted = (first > 0.5).astype(np.float64)
    return (predicted == y).astype(np.float64), (predicted == 1).astype(np.float64)


Clock = Callable[[], int]  # nanoseconds, monotonic


def p99_latency_ms(
    session: Any, x: Array, calls: int, warmup: int, clock: Clock = time.perf_counter_ns
) -> float:
    """p99 of `calls` batch-1 runs over successive holdout rows, after `warmup` runs, each timed
    by two readings of `clock` (tests pass a known clock: the verdict must not depend on how
    busy the machine running them is)."""
    name = session.get_inputs()[0].name
    rows = np.ascontiguousarray(x, np.float32)
    feeds = [{name: rows[i % len(rows)][None, :]} for i in range(calls + warmup)]
    for feed in feeds[:warmup]:
        session.run(None, feed)
    times = np.empty(calls)
    for i, feed in enumerate(feeds[warmup:]):
        t0 = clock()
        session.run(None, feed)
        times[i] = clock() - t0
    return float(np.quantile(times, 0.99) / 1e6)


def _worse_by(candidate: float, champion: float, metric: str) -> float:
    """How much worse the candidate is (negative: better)."""
    return champion - candidate if metric == "accuracy" else candidate - champion


def evaluate(
    candidate: bytes,
    champion: bytes | None,
    holdout_x: Array,
    holdout_y: Array,
    gates: GatesSpec,
    task: str,
    *,
    latency_calls: int = LATENCY_CALLS,
    warmup_calls: int = WARMUP_CALLS,
    clock: Clock = time.perf_counter_ns,
) -> EvaluationReport:
    """Run both models on the same holdout and apply the gates (`champion=None`: a first
    version, compared with nothing but the latency budget). `clock` times the latency calls."""
    x = np.asarray(holdout_x, np.float32)
    y = np.asarray(holdout_y, np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise invalid(f"holdout must be x [rows, features] and y [rows], got {x.shape}, {y.shape}")
    for key, feature in (("slice_feature", gates.slice_feature), ("group_by", gates.group_by)):
        if feature is not None and feature >= x.shape[1]:
            raise invalid(f"gates.{key} {feature} is out of range for {x.shape[1]} features")
    if task not in METRICS:
        raise invalid(f"task must be one of {', '.join(METRICS)}, got {task!r}")
    metric = METRICS[task]
    results = [_schema_gate(candidate, champion)]
    cand_session, cand_scores, cand_error = _scores(candidate, x, y, task)
    champ_session, champ_scores, champ_error = None, None, ""
    if champion is not None:
        champ_session, champ_scores, champ_error = _scores(champion, x, y, task)
    if cand_scores is None or (champion is not None and champ_scores is None):
        who, why = ("candidate", cand_error) if cand_scores is None else ("champion", champ_error)
        results.append(
            GateResult("metric", False, None, None, f"{who} failed on the holdout: {why}")
        )
        return EvaluationReport(task, metric, int(x.shape[0]), {metric: None}, None, [], results)
    cand_rows = cand_scores[0]
    champ_rows = champ_scores[0] if champ_scores is not None else None

    cand_metric = float(cand_rows.mean())
    champ_metric = float(champ_rows.mean()) if champ_rows is not None else None
    results.append(_metric_gate(cand_metric, champ_metric, metric, gates.tolerance))

    slices: list[dict[str, Any]] = []
    if gates.slice_feature is not None:
        slices = _slices(x[:, gates.slice_feature], cand_rows, champ_rows, gates, metric)
        results.append(_slice_gate(slices, gates, metric))
    fairness = None
    if gates.group_by is not None:
        found = grouping.compare(
            x[:, gates.group_by],
            gates.group_bins,
            gates.min_group_rows,
            gates.group_by,
            cand_scores,
            champ_scores,
        )
        results.append(_fairness_gate(found, gates, metric))
        fairness = _fairness_doc(found)

    p99 = p99_latency_ms(cand_session, x, latency_calls, warmup_calls, clock)
    p99_champ = None  # for the report and the card: the rollout compares live p99s
    if champ_session is not None:
        p99_champ = p99_latency_ms(champ_session, x, latency_calls, warmup_calls, clock)
    budget = gates.p99_latency_ms
    detail = f"candidate p99 of {latency_calls} batch-1 calls: {p99:.3f} ms (budget {budget:g} ms)"
    results.append(GateResult("latency", p99 <= budget, p99, budget, detail))
    champion_metrics = None
    if champ_session is not None:
        champion_metrics = {metric: champ_metric, "p99_latency_ms": p99_champ}
    return EvaluationReport(
        task=task,
        metric=metric,
        rows=int(x.shape[0]),
        candidate={metric: cand_metric, "p99_latency_ms": p99},
        champion=champion_metrics,
        slices=slices,
        gates=results,
        fairness=fairness,
    )


def _scores(model: bytes, x: Array, y: Array, task: str) -> tuple[Any, Scores | None, str]:
    """(session, per-row scores, "") or (None, None, why) when the model cannot run on x."""
    try:
        session = _session(model)
        return session, _row_scores(_predict(session, x), y, task), ""
    except Exception as exc:  # onnxruntime raises its own types; the report says why
        return None, None, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _metric_gate(cand: float, champ: float | None, metric: str, tolerance: float) -> GateResult:
    if champ is None:
        return GateResult("metric", True, cand, None, f"{metric} {cand:.4f}; no champion")
    if metric == "accuracy":
        threshold = champ - tolerance
        passed = cand >= threshold
        rule = f">= champion {champ:.4f} - tolerance {tolerance:g}"
    else:
        threshold = champ + tolerance
        passed = cand <= threshold
        rule = f"<= champion {champ:.4f} + tolerance {tolerance:g}"
    return GateResult("metric", passed, cand, threshold, f"{metric} {cand:.4f} must be {rule}")


def _slices(
    column: Array, cand_rows: Array, champ_rows: Array | None, gates: GatesSpec, metric: str
) -> list[dict[str, Any]]:
    groups = grouping.make_groups(column, gates.slice_bins)
    counts, cand, _ = grouping.group_figures(groups, cand_rows, None)
    champ = None
    if champ_rows is not None:
        champ = grouping.group_figures(groups, champ_rows, None)[1]
    out = []
    for b in range(groups.count):
        if counts[b] == 0:
            continue
        c = float(cand[b])
        h = float(champ[b]) if champ is not None else None
        out.append(
            {
                "bin": b,
                "feature": gates.slice_feature,
                "lo": float(groups.lo[b]),
                "hi": float(groups.hi[b]),
                "rows": int(counts[b]),
                "candidate": c,
                "champion": h,
                "gap": _worse_by(c, h, metric) if h is not None else None,
            }
        )
    return out


def _slice_gate(slices: list[dict[str, Any]], gates: GatesSpec, metric: str) -> GateResult:
    gaps = [s["gap"] for s in slices if s["gap"] is not None]
    if not gaps:
        return GateResult("slices", True, None, gates.max_slice_gap, "no champion to compare")
    s = max(slices, key=lambda s: s["gap"] if s["gap"] is not None else -math.inf)
    gap = float(s["gap"])
    where = f"= {s['lo']:g}" if s["lo"] == s["hi"] else f"in [{s['lo']:.4g}, {s['hi']:.4g}]"
    detail = (
        f"worst slice input[{gates.slice_feature}] {where} "
        f"({s['rows']} rows): {metric} {s['candidate']:.4f} vs champion {s['champion']:.4f}, "
        f"worse by {gap:+.4f} (at most {gates.max_slice_gap:g})"
    )
    return GateResult("slices", gap <= gates.max_slice_gap, gap, gates.max_slice_gap, detail)


def _fairness_gate(found: grouping.Fairness, gates: GatesSpec, metric: str) -> GateResult:
    limit = gates.max_group_gap_increase
    mine = found.candidate
    gaps = f"{metric} gap {_num(mine.metric)}, positive-rate gap {_num(mine.positive_rate)}"
    where = f"groups of input[{found.feature}] ({found.kind})"
    notes = "".join(f"; {n}" for n in found.notes)
    if found.champion is None:
        detail = f"{where}: {gaps}; no champion to compare{notes}"
        return GateResult("fairness", True, None, limit, detail)
    if found.increase is None:
        detail = f"{where}: fewer than two groups with >= {found.min_rows} rows to compare{notes}"
        return GateResult("fairness", True, None, limit, detail)
    theirs = found.champion
    widened = metric if found.widened == "metric" else "positive-rate"
    detail = (
        f"{where}: candidate {gaps}; champion {metric} gap {_num(theirs.metric)}, "
        f"positive-rate gap {_num(theirs.positive_rate)}; the {widened} gap widens by "
        f"{found.increase:+.4f} (at most {limit:g}){notes}"
    )
    return GateResult("fairness", found.increase <= limit, found.increase, limit, detail)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fairness_doc(found: grouping.Fairness) -> dict[str, Any]:
    return {
        "feature": found.feature,
        "kind": found.kind,
        "min_group_rows": found.min_rows,
        "groups": found.table,
        "candidate_gaps": asdict(found.candidate),
        "champion_gaps": None if found.champion is None else asdict(found.champion),
        "increase": found.increase,
        "widened": found.widened,
        "notes": list(found.notes),
    }
