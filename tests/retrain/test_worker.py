"""The retrain worker's job without a gateway: a real registry, state database, prediction log
and feedback log in `tmp_path`. A job stops for want of data or at the gates, registering
nothing; a job that passes registers its candidate with lineage and records its rollout, which
waits for an admin API to resume it. Triggers and trainer retries on their own."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lockgate.control.client import AdminClient
from lockgate.control.registry import Registry
from lockgate.control.rollouts import PENDING, RUNNING, RolloutStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain.pipeline import PipelineSpec, parse_pipeline
from lockgate.retrain.train import (
    LinearModel,
    TrainedModel,
    fit_logistic,
    logistic_onnx,
    logistic_regression,
    sigmoid,
)
from lockgate.retrain.worker import RetrainWorker

F = 6
MODEL = "clf"
ATTEMPTS: list[int] = []  # calls of the flaky trainer


def inverted(x: Any, y: Any, params: dict[str, Any], seed: int) -> TrainedModel:
    """Fits the data, then predicts the opposite class: the gates must stop it."""
    fitted = fit_logistic(x, y, 1e-3, 100)
    return TrainedModel(logistic_onnx(LinearModel(-fitted.weights, -fitted.bias)), {}, {})


def flaky(x: Any, y: Any, params: dict[str, Any], seed: int) -> TrainedModel:
    """Fails on its first call of a test, then trains."""
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        raise RuntimeError("out of memory, this once")
    return logistic_regression(x, y, params, seed)


def broken(x: Any, y: Any, params: dict[str, Any], seed: int) -> Any:
    ATTEMPTS.append(1)
    return "not a model"  # breaks the trainer contract: a configuration mistake


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(function: str | None = None, **sections: dict[str, Any]) -> PipelineSpec:
    """A pipeline for endpoint `clf` (with a trainer of this module's, when named)."""
    doc: dict[str, Any] = {
        "endpoint": MODEL,
        "triggers": {"drift": False, "min_new_labels": 0},
        "data": {"min_rows": 200},
        # the latency gate is tested with a known clock (test_evaluate.py): here it must pass
        "gates": {"tolerance": 0.0, "p99_latency_ms": 60000.0},
        "rollout": {"admin_url": f"http://127.0.0.1:{closed_port()}"},
    }
    if function is not None:
        doc["trainer"] = {"function": f"tests.retrain.test_worker:{function}", "retries": 1}
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return parse_pipeline(doc)


def world(rows: int, seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a world whose truth turns round as `shift` goes from 0 to 1 (at
    0.6 the champion's old truth predicts the opposite of the new one more often than not)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, size=(rows, F)).astype(np.float32)
    truth = np.linspace(-1.0, 1.0, F) * (1 - 2 * shift)
    y = (rng.random(rows) < sigmoid(3 * (x @ truth))).astype(np.float64)
    return x, y


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Champion clf v1 (trained on the old world) serving the endpoint `clf`."""
    x, y = world(2000, 1, shift=0.0)
    Registry(tmp_path).register(logistic_regression(x, y, {}, 0).onnx, MODEL)
    RolloutStore(tmp_path).set_alias(MODEL, "champion", MODEL, "1")
    return tmp_path


def log_traffic(home: Path, rows: int, labelled: int, seed: int = 2, shift: float = 0.6) -> None:
    """`rows` predictions of v1 in the last minutes, the first `labelled` of them labelled."""
    x, y = world(rows, seed, shift)
    now = time.time()
    ids = np.array([f"r{seed}-{i}".encode() for i in range(rows)], dtype="S32")
    with PredictionLog(home / "predlog") as predlog:
        predlog.append_predictions(
            MODEL,
            "1",
            ts=now - 300 + np.arange(rows) * (200 / rows),
            request_id=ids,
            endpoint=MODEL,
            variant="stable",
            inputs=x,
            outputs=np.zeros((rows, 2), np.float32),
            latency_s=0.001,
            queue_s=0.0,
        )
    with FeedbackLog(home / "feedback") as feedback:
        feedback.append_labels(now - 60, ids[:labelled], y[:labelled])


def worker(home: Path, pipeline: PipelineSpec) -> RetrainWorker:
    return RetrainWorker(pipeline, home, AdminClient(pipeline.rollout.admin_url, "t", timeout=10))


def marks(home: Path) -> dict[str, float]:
    doc: dict[str, float] = orjson.loads((home / "retrain" / f"{MODEL}.json").read_bytes())
    return doc


def test_too_few_labels_is_no_job_and_waits_for_more(home: Path) -> None:
    log_traffic(home, rows=500, labelled=50)
    before = time.time()
    result = worker(home, spec()).run_job("labels")
    assert result.outcome == "no_data" and result.version is None
    assert result.detail["rows"] == 50
    assert "not enough labelled rows to train: 50 < data.min_rows 200" in result.detail["reason"]
    assert before <= marks(home)["last_job"] <= time.time()  # no retry before new labels
    assert [v.version for v in Registry(home).versions(MODEL)] == ["1"]


def test_a_worse_candidate_is_stopped_by_the_gates(home: Path) -> None:
    log_traffic(home, rows=1200, labelled=1200, shift=0.0)  # the world the champion knows
    result = worker(home, spec("inverted")).run_job("manual")
    assert result.outcome == "gates_failed" and result.version is None
    report = result.detail
    assert report["passed"] is False
    metric = next(g for g in report["gates"] if g["name"] == "metric")
    assert not metric["passed"] and metric["value"] < metric["threshold"]
    assert report["rows"] == 240  # the holdout: 20% of the labelled rows
    assert [v.version for v in Registry(home).versions(MODEL)] == ["1"]  # nothing registered
    assert RolloutStore(home).rollouts(MODEL) == []
    assert "last_job" in marks(home)


def test_a_better_candidate_is_registered_and_its_rollout_recorded(home: Path) -> None:
    log_traffic(home, rows=1500, labelled=1500)
    job = worker(home, spec())
    with pytest.raises(LockgateError, match="cannot reach the admin API") as info:
        job.run_job("drift")  # the first step cannot move traffic: no admin API listens
    assert info.value.kind is ErrorKind.UNAVAILABLE
    registry = Registry(home)
    v2 = registry.get(MODEL, "2")
    registry.verify(v2)
    lineage = v2.lineage
    assert lineage["parent"] == "1"
    assert lineage["code_version"].startswith(("git:", "sha256:"))  # the trainer's own code
    assert lineage["trainer"] == "lockgate.retrain.train:logistic_regression"
    assert lineage["data"]["rows"] == 1500 and lineage["data_hash"] == lineage["data"]["hash"]
    metrics = lineage["metrics"]
    assert metrics["candidate"]["accuracy"] > metrics["champion"]["accuracy"]
    assert all(g["passed"] for g in lineage["gates"]["gates"])
    assert v2.card_path is not None and "endpoint 'clf'" in v2.card_path.read_text()
    reference = registry.load_reference(v2)
    assert reference is not None and reference.shape == (1200, F)  # the training rows
    # the rollout is recorded before traffic moves: a restarted worker resumes it
    store = RolloutStore(home)
    (rollout,) = store.active(MODEL)
    assert (rollout.candidate, rollout.champion) == ("2", "1")
    assert rollout.status in (PENDING, RUNNING) and rollout.weight in (0.0, rollout.plan.steps[0])
    assert store.alias(MODEL, "challenger") == (MODEL, "2")
    assert store.alias(MODEL, "champion") == (MODEL, "1")


def test_triggers(home: Path) -> None:
    scheduled = worker(home, spec(triggers={"schedule_seconds": 3600.0}))
    assert scheduled.trigger() == "schedule"  # no job yet: one is due
    scheduled._mark(time.time())
    assert scheduled.trigger() is None  # one ran within the hour
    scheduled._mark(time.time() - 7200)
    assert scheduled.trigger() == "schedule"

    by_labels = worker(home, spec(triggers={"min_new_labels": 100}))
    log_traffic(home, rows=150, labelled=99, seed=3)
    by_labels._mark(time.time() - 3600)
    assert by_labels.trigger() is None  # 99 new labels
    log_traffic(home, rows=10, labelled=1, seed=4)
    assert by_labels.trigger() == "labels"
    by_labels._mark(time.time())  # a job ran: those labels are old now
    assert by_labels.trigger() is None


def test_a_failing_trainer_is_retried_then_reported(home: Path) -> None:
    x, y = world(400, 5, shift=0.0)
    ATTEMPTS.clear()
    model = worker(home, spec("flaky"))._train(x, y)  # retries = 1
    assert len(ATTEMPTS) == 2 and isinstance(model.onnx, bytes)
    ATTEMPTS.clear()
    once = worker(home, spec("flaky", trainer={"retries": 0}))
    with pytest.raises(LockgateError, match="trainer failed 1 times: out of memory") as info:
        once._train(x, y)
    assert info.value.kind is ErrorKind.UNPROCESSABLE
    ATTEMPTS.clear()
    with pytest.raises(LockgateError, match="must return a TrainedModel") as invalid:
        worker(home, spec("broken", trainer={"retries": 3}))._train(x, y)
    assert invalid.value.kind is ErrorKind.INVALID and len(ATTEMPTS) == 1  # not retried
