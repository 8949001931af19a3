"""Lineage records and model cards carry the data hash and snapshots, the parent version, the
gates, the seed, the code and the environment, and survive a round trip through the registry."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import lockgate.retrain.train
from lockgate.control.registry import Registry
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain.dataset import build_dataset, split
from lockgate.retrain.evaluate import EvaluationReport, evaluate
from lockgate.retrain.lineage import (
    code_identity,
    code_version,
    environment,
    gates_record,
    jsonable,
    lineage_record,
    model_card,
)
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
    code = {"module": "m", "file": "/m.py", "file_sha256": "ab" * 32, "git": None}
    record = lineage_record(
        manifest,
        "3",
        "lockgate.retrain.train:logistic_regression",
        candidate.params,
        {**candidate.metrics, "holdout_accuracy": np.float64(0.9)},
        report.to_dict(),
        seed=np.int64(7),
        code=code,
        environment={"python": "3.11.0", "packages": {"numpy": "2.0.0"}},
        snapshot={"train": "t" * 64, "holdout": "h" * 64},
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
    assert record["code_version"] == "sha256:" + "ab" * 32 and record["code"] == code
    assert record["seed"] == 7 and record["schema"] == 2
    assert record["snapshot"] == {"train": "t" * 64, "holdout": "h" * 64}
    assert record["environment"]["packages"] == {"numpy": "2.0.0"}
    assert orjson.loads(orjson.dumps(record)) == record  # plain JSON types only


def test_lineage_survives_the_registry(job: dict[str, Any], tmp_path: Path) -> None:
    data, candidate, report = job["data"], job["candidate"], job["report"]
    assert isinstance(report, EvaluationReport)
    trainer = "lockgate.retrain.train:logistic_regression"
    record = lineage_record(
        data.manifest,
        None,
        trainer,
        {},
        {},
        report.to_dict(),
        seed=0,
        code=code_identity(trainer),
        environment=environment(trainer),
        snapshot={"train": "t" * 64},
    )
    info = Registry(tmp_path).register(candidate.onnx, "clf", lineage=record)
    assert Registry(tmp_path).get("clf", info.version).lineage == record
    assert record["parent"] is None and record["code_version"].startswith(("git:", "sha256:"))


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
    assert "## Slices (groups of input[0])" in card
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


def test_environment_names_exact_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = environment("lockgate.retrain.train:logistic_regression")
    assert env["python"] == platform.python_version() == sys.version.split()[0]
    assert env["platform"] == platform.platform()
    packages = env["packages"]
    for name in ("numpy", "onnx", "onnxruntime", "lockgate"):
        assert packages[name] == importlib.metadata.version(name)
    assert env["trainer_distribution"] == "lockgate"
    assert env["threads"]["OMP_NUM_THREADS"] == "3" and env["threads"]["MKL_NUM_THREADS"] is None
    # a trainer no installed distribution owns (this test module) is recorded as such
    assert environment("tests.retrain.test_lineage:f")["trainer_distribution"] is None


def test_code_identity_is_the_commit_in_a_work_tree_else_the_file_hash(tmp_path: Path) -> None:
    source = Path(lockgate.retrain.train.__file__).resolve()
    identity = code_identity("lockgate.retrain.train:logistic_regression")
    assert identity["file"] == str(source)
    assert identity["file_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    head = subprocess.run(
        ["git", "-C", str(source.parent), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # the checkout the tests run from
        assert identity["git"]["commit"] == head.stdout.strip()
        assert code_version(identity).startswith("git:" + head.stdout.strip())
    # a trainer module outside any work tree: identified by its file's sha256
    module = tmp_path / "outside_trainer_q.py"
    module.write_text("def fit(x, y, params, seed):\n    raise NotImplementedError\n")
    sys.path.insert(0, str(tmp_path))
    try:
        outside = code_identity("outside_trainer_q:fit")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("outside_trainer_q", None)
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    assert outside["git"] is None and outside["file_sha256"] == digest
    assert code_version(outside) == f"sha256:{digest}"


def test_code_identity_sees_a_dirty_work_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    module = repo / "dirty_trainer_q.py"
    module.write_text("VALUE = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    sys.path.insert(0, str(repo))
    try:
        clean = code_identity("dirty_trainer_q:VALUE")
        module.write_text("VALUE = 2\n")
        dirty = code_identity("dirty_trainer_q:VALUE")
    finally:
        sys.path.remove(str(repo))
        sys.modules.pop("dirty_trainer_q", None)
    assert clean["git"] == {"commit": commit.stdout.strip(), "dirty": False}
    assert dirty["git"] == {"commit": commit.stdout.strip(), "dirty": True}
    assert code_version(dirty) == f"git:{commit.stdout.strip()}+dirty"
    assert clean["file_sha256"] != dirty["file_sha256"]


def test_gates_record(job: dict[str, Any]) -> None:
    report = job["report"]
    assert isinstance(report, EvaluationReport)
    record = gates_record(report, against="3", data={"hash": "h", "rows": 150}, actor="alice")
    assert record["passed"] is report.passed and record["against"] == "3"
    assert record["actor"] == "alice" and record["data"] == {"hash": "h", "rows": 150}
    assert record["report"] == report.to_dict()
    assert orjson.loads(orjson.dumps(record)) == record
