"""Lineage records and model cards carry the data hash, the parent version and the gates, and
survive a round trip through the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lockgate.control.registry import Registry
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain.dataset import build_dataset, split
from lockgate.retrain.evaluate import EvaluationReport, evaluate
from lockgate.retrain.lineage import code_version, jsonable, lineage_record, model_card
from lockgate.retrain.pipeline import GatesSpec
from lockgate.retrain.train import logistic_regression, sigmoid

T0 = 1.7e9
F = 4


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small end-to-end job: logs -> dataset -> train -> evaluate."""
    home = tmp_path_factory.mktemp("home")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, F)).astype(np.float32)
    y = (rng.random(600) < sigmoid(x @ np.array([2.0, -1.0, 0.5, 0.0]))).astype(np.float64)
    ids = np.array([f"r{i}".encode() for i in range(600)], dtype="S32")
    predlog, feedback = PredictionLog(home / "predlog"), FeedbackLog(home / "feedback")
    predlog.append_predictions(
        "clf",
        "1",
        ts=T0 + np.arange(600) / 10,
        request_id=ids,
        endpoint="clf",
        variant="stable",
        inputs=x,
        outputs=np.zeros((600, 1), np.float32),
        latency_s=0.001,
        queue_s=0.0,
    )
    feedback.append_labels(T0 + 100, ids, y)
    data = build_dataset(predlog, feedback, "clf", ["1"], T0, T0 + 3600, 10_000)
    train, holdout = split(data, 0.25, seed=0)
    champion = logistic_regression(train.x[:50], train.y[:50], {"l2": 10.0}, 0)
    candidate = logistic_regression(train.x, train.y, {}, 0)
    gates = GatesSpec(slice_feature=0, tolerance=0.05, max_slice_gap=0.5, p99_latency_ms=100.0)
    report = evaluate(
        candidate.onnx,
        champion.onnx,
        holdout.x,
        holdout.y,
        gates,
        "classification",
        latency_calls=20,
        warmup_calls=2,
    )
    return {"home": home, "data": data, "candidate": candidate, "report": report}


def test_lineage_record(job: dict[str, Any]) -> None:
    data, candidate, report = job["data"], job["candidate"], job["report"]
    assert isinstance(report, EvaluationReport)
    manifest = {**data.manifest, "numpy_value": np.float32(0.5)}
    record = lineage_record(
        manifest,
        "3",
        "lockgate.retrain.train:logistic_regression",
        candidate.params,
        {**candidate.metrics, "holdout_accuracy": np.float64(0.9)},
        report.to_dict(),
        "0.1.0+gabc",
    )
    assert record["data_hash"] == data.manifest["hash"]
    assert record["data"]["rows"] == 600 and record["data"]["numpy_value"] == 0.5
    assert record["parent"] == "3"
    assert record["trainer"] == "lockgate.retrain.train:logistic_regression"
    assert record["params"] == {"l2": 1e-3, "max_iter": 100}
    assert record["metrics"]["holdout_accuracy"] == 0.9
    assert [g["name"] for g in record["gates"]["gates"]] == [
        "schema",
        "metric",
        "slices",
        "latency",
    ]
    assert record["code_version"] == "0.1.0+gabc"
    assert orjson.loads(orjson.dumps(record)) == record  # plain JSON types only


def test_lineage_survives_the_registry(job: dict[str, Any], tmp_path: Path) -> None:
    data, candidate, report = job["data"], job["candidate"], job["report"]
    assert isinstance(report, EvaluationReport)
    record = lineage_record(
        data.manifest,
        None,
        "t:f",
        {},
        {},
        report.to_dict(),
        code_version(),
    )
    info = Registry(tmp_path).register(candidate.onnx, "clf", lineage=record)
    assert Registry(tmp_path).get("clf", info.version).lineage == record
    assert record["parent"] is None and record["code_version"].startswith("0.")


def test_model_card(job: dict[str, Any]) -> None:
    data, report = job["data"], job["report"]
    assert isinstance(report, EvaluationReport)
    manifest = data.manifest
    card = model_card(
        "clf",
        "4",
        "classification",
        manifest,
        report,
        intended_use="Scores card payments for review.",
        limitations=["Trained on labelled traffic only.", "Not for other regions."],
        parent="3",
    )
    assert card.startswith("# clf v4\n")
    assert "Retrained from champion v3." in card
    assert "Scores card payments for review." in card
    assert manifest["hash"] in card
    assert "rows: 600" in card
    assert f"{manifest['time_range'][0]:.3f}" in card
    accuracy = report.candidate["accuracy"]
    champion = report.champion
    assert champion is not None
    assert f"| accuracy | {accuracy:.4f} | {champion['accuracy']:.4f} |" in card
    assert "| metric | v4 | champion v3 |" in card
    assert "## Slices (quantile bins of input[0])" in card
    assert card.count("\n| 0 | ") == 1 and "\n| 3 | " in card
    for gate in report.gates:
        assert f"| {gate.name} | {'pass' if gate.passed else 'FAIL'} |" in card
        assert f"- {gate.name}: {gate.detail}" in card
    assert "- Not for other regions." in card
    # the same card from the stored dict form
    again = model_card(
        "clf",
        "4",
        "classification",
        manifest,
        orjson.loads(orjson.dumps(report.to_dict())),
        intended_use="Scores card payments for review.",
        limitations=["Trained on labelled traffic only.", "Not for other regions."],
        parent="3",
    )
    assert again == card


def test_jsonable() -> None:
    value = {"a": np.int64(3), "b": (np.float32(1.5), float("nan")), "c": np.arange(2)}
    assert jsonable(value) == {"a": 3, "b": [1.5, None], "c": [0, 1]}
