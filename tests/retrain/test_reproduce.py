"""A version the retrain worker registers carries what it takes to rebuild it (data snapshots,
seed, trainer and parameters, code and environment), its gate results and an audit record;
`lockgate models reproduce` rebuilds it in a fresh process and compares the bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.cli import main
from lockgate.control.client import AdminClient
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain import dataset as datasets
from lockgate.retrain.datastore import DataStore
from lockgate.retrain.evaluate import evaluate
from lockgate.retrain.pipeline import PipelineSpec, parse_pipeline
from lockgate.retrain.reproduce import reproduce
from lockgate.retrain.train import logistic_regression, sigmoid
from lockgate.retrain.worker import RetrainWorker
from tests import onnx_models

T0 = 1.7e9
F = 4
ROWS = 800


def logged(home: Path) -> None:
    """Predictions and labels in the logs, as a gateway leaves them."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(ROWS, F)).astype(np.float32)
    x[:, 3] = (rng.random(ROWS) < 0.4).astype(np.float32)  # a binary attribute
    y = (rng.random(ROWS) < sigmoid(x @ np.array([2.0, -1.0, 0.5, 0.3]))).astype(np.float64)
    ids = np.array([f"r{i}".encode() for i in range(ROWS)], dtype="S32")
    PredictionLog(home / "predlog").append_predictions(
        "clf",
        "1",
        ts=T0 + np.arange(ROWS) / 10,
        request_id=ids,
        endpoint="clf",
        variant="stable",
        inputs=x,
        outputs=np.zeros((ROWS, 1), np.float32),
        latency_s=0.001,
        queue_s=0.0,
    )
    FeedbackLog(home / "feedback").append_labels(T0 + 100, ids, y)


def pipeline(trainer: str = "lockgate.retrain.train:logistic_regression") -> PipelineSpec:
    return parse_pipeline(
        {
            "endpoint": "clf",
            "trainer": {"function": trainer, "params": {}},
            "data": {"seed": 3, "min_rows": 100},
            "gates": {
                "tolerance": 1.0,
                "group_by": 3,
                "max_group_gap_increase": 0.5,
                "p99_latency_ms": 60_000.0,
            },
        }
    )


def retrain(home: Path, spec: PipelineSpec) -> Any:
    """The worker's job up to registration, on the logged data (no gateway needed)."""
    worker = RetrainWorker(spec, home, AdminClient("http://127.0.0.1:9", None))
    data = datasets.build_dataset(
        PredictionLog(home / "predlog"), FeedbackLog(home / "feedback"), "clf", ["1"], T0,
        T0 + 3600, 10_000,
    )  # fmt: skip
    train, holdout = datasets.split(data, spec.data.holdout_fraction, spec.data.seed)
    model = worker._train(train.x, train.y)
    champion = Registry(home).get("clf", "1").model_path.read_bytes()
    report = evaluate(
        model.onnx, champion, holdout.x, holdout.y, spec.gates, spec.task, latency_calls=20,
        warmup_calls=2,
    )  # fmt: skip
    info = worker._register(model, (train, holdout), data.manifest, "1", report.to_dict())
    return info, train, holdout, report


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("governed")
    logged(home)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, F)).astype(np.float32)
    champion = logistic_regression(x, (x[:, 0] > 0).astype(np.float64), {"l2": 1.0}, 0)
    Registry(home).register(champion.onnx, "clf")  # v1: the champion, by hand
    return home


@pytest.fixture(scope="module")
def retrained(home: Path) -> Any:
    return retrain(home, pipeline())


def test_the_worker_records_lineage_gates_and_audit(home: Path, retrained: Any) -> None:
    info, train, holdout, report = retrained
    lineage = info.lineage
    assert lineage["seed"] == 3 and lineage["trainer"].endswith(":logistic_regression")
    assert lineage["params"] == {"l2": 1e-3, "max_iter": 100}
    assert lineage["environment"]["packages"]["numpy"] == np.__version__
    assert lineage["code"]["module"] == "lockgate.retrain.train"
    assert lineage["code_version"].startswith(("git:", "sha256:"))
    snapshot = lineage["snapshot"]
    assert snapshot["train"] == train.manifest["hash"]
    assert snapshot["holdout"] == holdout.manifest["hash"]
    x, y = DataStore(home).get(snapshot["train"])
    assert np.array_equal(x, train.x) and np.array_equal(y, train.y)
    gates = Registry(home).gates(info)
    assert gates is not None and gates["passed"] is report.passed is True
    assert gates["against"] == "1" and gates["actor"] == "retrain"
    assert gates["data"]["hash"] == holdout.manifest["hash"]
    assert [g["name"] for g in gates["report"]["gates"]] == [
        "schema",
        "metric",
        "fairness",
        "latency",
    ]
    assert gates["report"]["fairness"]["kind"] == "values"
    record = StateStore(home).audit(target=f"clf/{info.version}")[0]
    assert record["action"] == "version.register" and record["actor"] == "retrain"
    assert record["after"]["sha256"] == info.sha256
    card = info.card_path.read_text()
    assert "## Fairness (groups of input[3], exact values)" in card
    assert f"`lockgate models reproduce clf {info.version}`" in card
    assert snapshot["train"] in card and lineage["code_version"] in card


def test_a_retrained_version_reproduces(
    home: Path, retrained: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    info = retrained[0]
    result = reproduce(home, "clf", info.version)
    assert result.matched and result.actual == info.sha256
    # nothing changed since: only a dirty work tree (while developing) may show
    assert [d for d in result.differences if "uncommitted" not in d] == []
    assert main(["models", "reproduce", "clf", info.version, "--home", str(home)]) == 0
    assert f"clf v{info.version} reproduced: sha256 {info.sha256}" in capsys.readouterr().out


def test_a_trainer_that_ignores_the_seed_does_not_reproduce(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = retrain(home, pipeline("tests.retrain.trainers:noisy"))[0]
    result = reproduce(home, "clf", info.version)
    assert not result.matched and result.actual is not None and result.error is None
    assert main(["models", "reproduce", "clf", info.version, "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert "does not reproduce" in out and f"registered sha256 {info.sha256}" in out


def test_environment_differences_are_listed(home: Path, retrained: Any) -> None:
    info = retrained[0]
    lineage = {**info.lineage}
    recorded = lineage["environment"]
    lineage["environment"] = {
        **recorded,
        "python": "3.0.1",
        "packages": {**recorded["packages"], "numpy": "0.0.1"},
    }
    lineage["code"] = {**lineage["code"], "file_sha256": "0" * 64}
    registry = Registry(home)
    copy = registry.register(info.model_path.read_bytes(), "clf", lineage=lineage)
    result = reproduce(home, "clf", copy.version)
    assert result.matched  # the bytes still match; what differs is reported all the same
    assert f"python: 3.0.1 recorded, {recorded['python']} now" in result.differences
    assert f"numpy: 0.0.1 recorded, {np.__version__} now" in result.differences
    assert any(d.startswith("trainer source ") for d in result.differences)


def test_what_cannot_be_reproduced_says_why(
    home: Path, retrained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(LockgateError, match="cannot be reproduced: its lineage lacks") as hand:
        reproduce(home, "clf", "1")
    assert hand.value.kind is ErrorKind.INVALID
    assert main(["models", "reproduce", "clf", "1", "--home", str(home)]) == 1
    assert "only versions the retrain worker registered" in capsys.readouterr().err
    # a copy of the home whose data snapshot is gone (retention, or a careless clean-up)
    info = retrained[0]
    other = tmp_path / "home"
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    registry = Registry(other)
    registry.register(model, "clf")
    copy = registry.register(info.model_path.read_bytes(), "clf", lineage=info.lineage)
    with pytest.raises(LockgateError, match="training data snapshot") as gone:
        reproduce(other, "clf", copy.version)
    assert gone.value.kind is ErrorKind.NOT_FOUND
