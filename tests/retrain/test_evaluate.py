"""Candidate vs champion on one holdout: each gate passes and fails for the reason it exists."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lockgate.errors import LockgateError
from lockgate.retrain.evaluate import evaluate
from lockgate.retrain.pipeline import GatesSpec
from lockgate.retrain.train import (
    LinearModel,
    linear_regression,
    logistic_onnx,
    logistic_regression,
    sigmoid,
)

Array = np.ndarray[Any, Any]
F = 8
# Every timed call takes 0.1 ms on a scripted clock, within any budget below: the latency gate
# passes on any machine, and is tested on its own (test_the_latency_gate_judges_...).
RELAXED = GatesSpec(p99_latency_ms=1.0)


class ScriptedClock:
    """A nanosecond clock under which the n-th timed call takes `durations[n]` (cycled): the
    first of each pair of readings starts a call, the second ends it."""

    def __init__(self, durations: list[int]) -> None:
        self.durations = durations
        self.now = 0
        self.timed = 0  # calls timed so far
        self._started = False

    def __call__(self) -> int:
        if self._started:
            self.now += self.durations[self.timed % len(self.durations)]
            self.timed += 1
        self._started = not self._started
        return self.now


REAL: dict[str, Any] = {"latency_calls": 50, "warmup_calls": 5}
FAST: dict[str, Any] = {**REAL, "clock": ScriptedClock([100_000])}


def data(rows: int, seed: int, shift: float = 0.0) -> tuple[Array, Array]:
    """Labels from a ground truth that rotates with `shift` (concept drift), features whose
    mean moves with it (covariate drift)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, size=(rows, F)).astype(np.float32)
    truth = np.linspace(-1.0, 1.0, F) * (1 - 2 * shift) + shift * np.linspace(1.0, -0.5, F)
    y = (rng.random(rows) < sigmoid(3 * (x @ truth - shift))).astype(np.float64)
    return x, y


def flip_above(classifier: bytes, threshold: float) -> bytes:
    """The classifier with its probability flipped (p -> 1 - p) where input[:, 0] > threshold."""
    model = onnx.load_model_from_string(classifier)
    graph = model.graph
    kept = [n for n in graph.node if n.op_type not in ("Greater", "Cast")]
    for node in kept:
        if node.output[0] == "probability":
            node.output[0] = "p"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
            numpy_helper.from_array(np.array([1], np.int64), "one_i"),
            numpy_helper.from_array(np.array([threshold], np.float32), "t"),
            numpy_helper.from_array(np.array([1.0], np.float32), "one_f"),
        ]
    )
    kept += [
        helper.make_node("Slice", ["input", "zero_i", "one_i", "one_i"], ["x0"]),
        helper.make_node("Greater", ["x0", "t"], ["top"]),
        helper.make_node("Sub", ["one_f", "p"], ["q"]),
        helper.make_node("Where", ["top", "q", "p"], ["probability"]),
        helper.make_node("Greater", ["probability", "half"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["label"], to=TensorProto.INT64),
    ]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    old_x, old_y = data(3000, 1)
    new_x, new_y = data(3000, 2, shift=0.6)
    holdout_x, holdout_y = data(2000, 3, shift=0.6)
    return {
        "champion": logistic_regression(old_x, old_y, {}, 0).onnx,
        "candidate": logistic_regression(new_x, new_y, {}, 0).onnx,
        "holdout": (holdout_x, holdout_y),
    }


def test_candidate_trained_on_shifted_data_beats_the_champion(models: dict[str, Any]) -> None:
    x, y = models["holdout"]
    report = evaluate(
        models["candidate"], models["champion"], x, y, RELAXED, "classification", **FAST
    )
    assert report.candidate["accuracy"] is not None and report.champion is not None
    assert report.candidate["accuracy"] > report.champion["accuracy"] + 0.05
    metric = report.gate("metric")
    assert metric.passed and metric.value == report.candidate["accuracy"]
    assert metric.threshold == report.champion["accuracy"]
    assert [g.name for g in report.gates] == ["schema", "metric", "latency"]
    assert report.passed
    doc = report.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["passed"] is True and doc["metrics"]["champion"] == report.champion


def test_the_report_accuracy_is_the_label_accuracy(models: dict[str, Any]) -> None:
    x, y = models["holdout"]
    import onnxruntime as ort

    session = ort.InferenceSession(models["champion"], providers=["CPUExecutionProvider"])
    labels = session.run(["label"], {"input": x})[0][:, 0]
    report = evaluate(models["champion"], None, x, y, RELAXED, "classification", **FAST)
    assert report.candidate["accuracy"] == pytest.approx(float(np.mean(labels == y)))
    assert report.champion is None and report.passed  # nothing to beat


def test_a_worse_model_fails_the_metric_gate(models: dict[str, Any]) -> None:
    x, y = models["holdout"]
    constant = logistic_onnx(LinearModel(np.zeros(F), 0.0))  # always label 0
    report = evaluate(constant, models["candidate"], x, y, RELAXED, "classification", **FAST)
    metric = report.gate("metric")
    assert not metric.passed and not report.passed
    assert metric.value == pytest.approx(float(np.mean(y == 0)))
    assert report.gate("schema").passed and report.gate("latency").passed
    # with a tolerance wide enough the same candidate passes
    lenient = GatesSpec(tolerance=1.0, p99_latency_ms=1.0)
    assert evaluate(constant, models["candidate"], x, y, lenient, "classification", **FAST).passed


def test_the_latency_gate_judges_the_p99_of_the_timed_calls(models: dict[str, Any]) -> None:
    """The gate's verdict comes from the timed calls alone: a known clock makes 2 of 100
    candidate calls take 3 ms (p99 3 ms, over a 0.5 ms budget), then 1 of 100 champion calls
    (p99 0.2 + 0.01 x 2.8 = 0.228 ms by linear interpolation: under it)."""
    x, y = models["holdout"]
    candidate = [200_000] * 98 + [3_000_000] * 2
    champion = [200_000] * 50 + [3_000_000] + [200_000] * 49
    clock = ScriptedClock(candidate + champion)
    gates = GatesSpec(p99_latency_ms=0.5)
    report = evaluate(
        models["candidate"],
        models["champion"],
        x,
        y,
        gates,
        "classification",
        latency_calls=100,
        warmup_calls=7,
        clock=clock,
    )
    assert clock.timed == 200  # every timed call, and none of the warm-up calls
    latency = report.gate("latency")
    assert not latency.passed and not report.passed
    assert latency.value == pytest.approx(3.0) and latency.threshold == 0.5
    assert "3.000 ms (budget 0.5 ms)" in latency.detail
    assert report.gate("schema").passed and report.gate("metric").passed
    assert report.champion is not None
    assert report.champion["p99_latency_ms"] == pytest.approx(0.228)
    # the champion's timings as the candidate's: within the budget
    swapped = evaluate(
        models["candidate"],
        None,
        x,
        y,
        gates,
        "classification",
        latency_calls=100,
        warmup_calls=0,
        clock=ScriptedClock(champion),
    )
    assert swapped.passed and swapped.gate("latency").value == pytest.approx(0.228)


def test_the_latency_gate_compares_the_measured_p99_with_the_budget(
    models: dict[str, Any],
) -> None:
    """Budgets on either side of anything a machine can measure (1 us: no onnxruntime call is
    that fast; 60 s: every call is faster), so the verdict never depends on the machine's
    speed or load. Timed on the real clock, as in production."""
    x, y = models["holdout"]
    model = models["candidate"]
    budget = GatesSpec(tolerance=1.0, p99_latency_ms=0.001)
    tight = evaluate(model, models["champion"], x, y, budget, "classification", **REAL)
    latency = tight.gate("latency")
    assert not latency.passed and latency.value is not None and latency.value > 0.001
    assert latency.threshold == 0.001 and "budget 0.001 ms" in latency.detail
    assert tight.gate("schema").passed and tight.gate("metric").passed
    assert not tight.passed
    budget = GatesSpec(tolerance=1.0, p99_latency_ms=60_000)
    loose = evaluate(model, models["champion"], x, y, budget, "classification", **REAL)
    assert loose.gate("latency").passed and loose.gate("latency").value == pytest.approx(
        loose.candidate["p99_latency_ms"]
    )


def test_a_different_output_schema_fails_the_schema_gate(models: dict[str, Any]) -> None:
    x, y = models["holdout"]
    regressor = linear_regression(x, y, {}, 0).onnx  # `value` instead of probability + label
    report = evaluate(regressor, models["champion"], x, y, RELAXED, "classification", **FAST)
    schema = report.gate("schema")
    assert not schema.passed and "outputs differ" in schema.detail and "value" in schema.detail
    assert not report.passed


def test_a_candidate_that_cannot_run_fails_without_raising(models: dict[str, Any]) -> None:
    x, y = models["holdout"]
    narrow = logistic_onnx(LinearModel(np.ones(F - 1), 0.0))
    report = evaluate(narrow, models["champion"], x, y, RELAXED, "classification", **FAST)
    assert "inputs differ" in report.gate("schema").detail
    assert not report.gate("metric").passed and "candidate failed" in report.gate("metric").detail
    assert not report.passed


def test_slices(models: dict[str, Any]) -> None:
    x, y = models["holdout"]
    gates = GatesSpec(tolerance=0.5, slice_feature=0, slice_bins=4, p99_latency_ms=1.0)
    same = evaluate(models["candidate"], models["candidate"], x, y, gates, "classification", **FAST)
    assert same.gate("slices").passed and same.gate("slices").value == 0.0
    assert [s["rows"] for s in same.slices] == [500, 500, 500, 500]
    edges = np.quantile(x[:, 0], [0.25, 0.5, 0.75])
    assert [s["hi"] for s in same.slices[:3]] == pytest.approx(edges)

    # Wrong exactly where feature 0 is in its top quartile: within a 0.5 tolerance overall,
    # refused by the slice gate, which names that slice.
    threshold = float(edges[2])
    wrong_on_top = flip_above(models["candidate"], threshold)
    report = evaluate(wrong_on_top, models["candidate"], x, y, gates, "classification", **FAST)
    assert report.gate("metric").passed
    gate = report.gate("slices")
    assert not gate.passed and gate.value is not None and gate.value > 0.05
    gaps = [s["gap"] for s in report.slices]
    assert gaps[:3] == [0.0, 0.0, 0.0] and gaps[3] == gate.value
    top = x[:, 0] > threshold
    correct = report.slices[3]["champion"]
    assert report.slices[3]["candidate"] == pytest.approx(1 - correct)
    assert report.slices[3]["rows"] == int(top.sum())
    assert f"[{threshold:.4g}," in gate.detail
    with pytest.raises(LockgateError, match="slice_feature 99 is out of range"):
        evaluate(wrong_on_top, None, x, y, GatesSpec(slice_feature=99), "classification", **FAST)


def test_regression_is_gated_on_mae() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2000, F)).astype(np.float32)
    old = x.astype(np.float64) @ np.linspace(-1, 1, F) + 0.5
    new = x.astype(np.float64) @ np.linspace(1, -1, F) - 0.5
    champion = linear_regression(x[:1000], old[:1000], {}, 0).onnx
    candidate = linear_regression(x[:1000], new[:1000], {}, 0).onnx
    gates = GatesSpec(metric="mae", p99_latency_ms=1.0)
    good = evaluate(candidate, champion, x[1000:], new[1000:], gates, "regression", **FAST)
    assert good.metric == "mae" and good.passed
    assert good.candidate["mae"] == pytest.approx(0.0, abs=1e-4)
    bad = evaluate(champion, candidate, x[1000:], new[1000:], gates, "regression", **FAST)
    assert not bad.gate("metric").passed
    assert bad.gate("metric").threshold == pytest.approx(good.candidate["mae"])
