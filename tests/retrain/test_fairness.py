"""The fairness gate: groups are exact values of a categorical attribute (quantile bins only for a
continuous one), per group the metric and the positive rate, and a candidate that is better
overall but worse for one group is refused. Models and data are built deterministically."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lockgate.retrain.evaluate import evaluate
from lockgate.retrain.groups import MAX_CATEGORIES, make_groups
from lockgate.retrain.lineage import model_card
from lockgate.retrain.pipeline import GatesSpec
from lockgate.retrain.train import LinearModel, logistic_onnx, sigmoid

Array = np.ndarray[Any, Any]
F = 5
GROUP = 4  # input[4]: a binary attribute, 1 for a quarter of the rows
TRUTH = np.array([1.5, -1.0, 0.8, 0.5, 0.0])
FAST: dict[str, int] = {"latency_calls": 20, "warmup_calls": 2}
GATES = GatesSpec(group_by=GROUP, p99_latency_ms=60_000.0)  # latency is not what is tested


def holdout(rows: int = 4000, seed: int = 7) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, F)).astype(np.float32)
    x[:, GROUP] = (rng.random(rows) < 0.25).astype(np.float32)
    y = (rng.random(rows) < sigmoid(x.astype(np.float64) @ TRUTH)).astype(np.float64)
    return x, y


def flipped_in_group(weights: Array, feature: int, threshold: float) -> bytes:
    """A logistic classifier whose answer is flipped (p -> 1 - p) for the rows of group 1
    (input[GROUP] > 0.5) whose input[feature] > threshold: worse for that group only."""
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Slice", ["input", "f0", "f1", "axis"], ["xf"]),
        helper.make_node("Slice", ["input", "g0", "g1", "axis"], ["xg"]),
        helper.make_node("Greater", ["xf", "t"], ["above"]),
        helper.make_node("Greater", ["xg", "half"], ["member"]),
        helper.make_node("And", ["above", "member"], ["flip"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Where", ["flip", "q", "p"], ["probability"]),
        helper.make_node("Greater", ["probability", "half"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["label"], to=TensorProto.INT64),
    ]
    consts = {
        "W": weights.reshape(-1, 1).astype(np.float32),
        "f0": np.array([feature], np.int64),
        "f1": np.array([feature + 1], np.int64),
        "g0": np.array([GROUP], np.int64),
        "g1": np.array([GROUP + 1], np.int64),
        "axis": np.array([1], np.int64),
        "t": np.array([threshold], np.float32),
        "half": np.array([0.5], np.float32),
        "one": np.array([1.0], np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "flipped",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", F])],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def labels_of(model: bytes, x: Array) -> Array:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"input": x})[0][:, 0], np.float64)


def by_group(predicted: Array, y: Array, group: Array) -> dict[str, Array]:
    """Accuracy and positive rate per group value (0, 1), by plain masks."""
    values = [0.0, 1.0]
    accuracy = np.array([np.mean(predicted[group == v] == y[group == v]) for v in values])
    rate = np.array([np.mean(predicted[group == v] == 1) for v in values])
    return {"accuracy": accuracy, "rate": rate}


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    x, y = holdout()
    champion = logistic_onnx(LinearModel(TRUTH * np.array([0.5, 1, 1, 1, 1]), 0.0))
    oracle = logistic_onnx(LinearModel(TRUTH, 0.0))
    harmful = flipped_in_group(TRUTH, 3, 1.1)
    return {"x": x, "y": y, "champion": champion, "oracle": oracle, "harmful": harmful}


def test_better_overall_but_worse_for_one_group_is_refused(case: dict[str, Any]) -> None:
    x, y, group = case["x"], case["y"], case["x"][:, GROUP]
    cand, champ = labels_of(case["harmful"], x), labels_of(case["champion"], x)
    mine, theirs = by_group(cand, y, group), by_group(champ, y, group)
    # the construction: better overall, at least 3% worse than the champion for group 1
    assert np.mean(cand == y) > np.mean(champ == y)
    assert mine["accuracy"][1] <= theirs["accuracy"][1] - 0.03
    report = evaluate(case["harmful"], case["champion"], x, y, GATES, "classification", **FAST)
    assert report.gate("metric").passed  # the overall metric alone would let it through
    gate = report.gate("fairness")
    assert not gate.passed and not report.passed
    widening = np.ptp(mine["accuracy"]) - np.ptp(theirs["accuracy"])
    rate_widening = np.ptp(mine["rate"]) - np.ptp(theirs["rate"])
    assert gate.value == pytest.approx(max(widening, rate_widening))
    assert gate.value > 0.03 and gate.threshold == 0.01
    assert "the accuracy gap widens by +0.0" in gate.detail and "input[4]" in gate.detail
    fairness = report.fairness
    assert fairness is not None and fairness["kind"] == "values"
    groups = fairness["groups"]
    assert [g["group"] for g in groups] == ["input[4] = 0", "input[4] = 1"]
    assert [g["rows"] for g in groups] == [int((group == 0).sum()), int((group == 1).sum())]
    assert [g["candidate"] for g in groups] == pytest.approx(mine["accuracy"])
    assert [g["champion"] for g in groups] == pytest.approx(theirs["accuracy"])
    assert [g["candidate_positive_rate"] for g in groups] == pytest.approx(mine["rate"])
    assert [g["champion_positive_rate"] for g in groups] == pytest.approx(theirs["rate"])


def test_a_fair_better_candidate_passes(case: dict[str, Any]) -> None:
    x, y = case["x"], case["y"]
    report = evaluate(case["oracle"], case["champion"], x, y, GATES, "classification", **FAST)
    gate = report.gate("fairness")
    cand, champ = labels_of(case["oracle"], x), labels_of(case["champion"], x)
    mine, theirs = by_group(cand, y, x[:, GROUP]), by_group(champ, y, x[:, GROUP])
    expected = max(
        np.ptp(mine["accuracy"]) - np.ptp(theirs["accuracy"]),
        np.ptp(mine["rate"]) - np.ptp(theirs["rate"]),
    )
    assert gate.value == pytest.approx(expected) and expected <= 0.01
    assert gate.passed and report.passed


def test_the_allowed_increase_is_configurable(case: dict[str, Any]) -> None:
    x, y = case["x"], case["y"]
    lenient = GatesSpec(group_by=GROUP, max_group_gap_increase=0.2, p99_latency_ms=60_000.0)
    report = evaluate(case["harmful"], case["champion"], x, y, lenient, "classification", **FAST)
    assert report.gate("fairness").passed


def test_small_groups_are_reported_not_judged(case: dict[str, Any]) -> None:
    x, y = case["x"].copy(), case["y"]
    x[:, GROUP] = 0.0
    x[:10, GROUP] = 2.0  # a third group of 10 rows
    x[10:2000, GROUP] = 1.0
    report = evaluate(case["harmful"], case["champion"], x, y, GATES, "classification", **FAST)
    assert report.fairness is not None
    groups = {g["group"]: g for g in report.fairness["groups"]}
    assert groups["input[4] = 2"]["rows"] == 10 and not groups["input[4] = 2"]["judged"]
    assert groups["input[4] = 0"]["judged"] and groups["input[4] = 1"]["judged"]
    assert (
        "1 group(s) with fewer than 30 rows reported, not judged" in report.gate("fairness").detail
    )
    # one judged group only: nothing to compare, nothing refused
    x[:, GROUP] = 0.0
    x[:10, GROUP] = 2.0
    alone = evaluate(case["harmful"], case["champion"], x, y, GATES, "classification", **FAST)
    gate = alone.gate("fairness")
    assert gate.passed and gate.value is None and "fewer than two groups" in gate.detail


def test_without_a_champion_the_gaps_are_reported(case: dict[str, Any]) -> None:
    x, y = case["x"], case["y"]
    report = evaluate(case["harmful"], None, x, y, GATES, "classification", **FAST)
    gate = report.gate("fairness")
    assert gate.passed and "no champion to compare" in gate.detail
    assert report.fairness is not None and report.fairness["champion_gaps"] is None


def test_groups_values_for_few_distinct_quantiles_for_continuous() -> None:
    rng = np.random.default_rng(1)
    binary = (rng.random(1000) < 0.3).astype(np.float64)
    groups = make_groups(binary, bins=4)
    assert groups.kind == "values" and groups.count == 2
    assert np.array_equal(groups.index, binary.astype(np.int64))
    categories = rng.integers(0, MAX_CATEGORIES, 1000).astype(np.float64)
    groups = make_groups(categories, bins=4)
    assert groups.kind == "values" and groups.count == MAX_CATEGORIES
    assert np.array_equal(groups.lo[groups.index], categories)
    continuous = rng.normal(size=1000)
    groups = make_groups(continuous, bins=4)
    assert groups.kind == "quantiles" and groups.count == 4
    edges = np.quantile(continuous, [0.25, 0.5, 0.75])
    assert np.array_equal(groups.index, np.searchsorted(edges, continuous, side="right"))
    assert np.bincount(groups.index).tolist() == [250, 250, 250, 250]


def test_regression_groups_are_judged_on_mae() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, F)).astype(np.float32)
    x[:, GROUP] = (rng.random(3000) < 0.5).astype(np.float32)
    target = x.astype(np.float64) @ TRUTH
    from lockgate.retrain.train import linear_onnx

    exact = linear_onnx(LinearModel(TRUTH, 0.0))
    biased = linear_onnx(LinearModel(TRUTH + np.array([0, 0, 0, 0, 0.5]), 0.0))  # group 1 +0.5
    gates = GatesSpec(metric="mae", tolerance=1.0, group_by=GROUP, p99_latency_ms=60_000.0)
    report = evaluate(biased, exact, x, target, gates, "regression", **FAST)
    gate = report.gate("fairness")
    assert not gate.passed and gate.value == pytest.approx(0.5, abs=1e-5)
    assert report.fairness is not None
    assert [g["candidate_positive_rate"] for g in report.fairness["groups"]] == [None, None]


def test_the_card_shows_the_groups(case: dict[str, Any]) -> None:
    x, y = case["x"], case["y"]
    report = evaluate(case["harmful"], case["champion"], x, y, GATES, "classification", **FAST)
    manifest = {"rows": 4000, "hash": "h"}
    card = model_card("clf", "2", "classification", manifest, report, "use", [], parent="1")
    assert "## Fairness (groups of input[4], exact values)" in card
    assert "| input[4] = 0 | " in card and "| input[4] = 1 | " in card
    assert "| fairness | FAIL |" in card


def test_a_binary_slice_feature_makes_two_slices(case: dict[str, Any]) -> None:
    x, y = case["x"], case["y"]
    gates = GatesSpec(slice_feature=GROUP, tolerance=1.0, p99_latency_ms=60_000.0)
    report = evaluate(case["harmful"], case["champion"], x, y, gates, "classification", **FAST)
    assert [(s["lo"], s["hi"]) for s in report.slices] == [(0.0, 0.0), (1.0, 1.0)]
    assert "input[4] = 1" in report.gate("slices").detail
