"""Labels carry the name of the API key that sent them, and the retrain worker trains only on the
sources its pipeline names: driven end to end over a real gateway's home (labels posted over
HTTP, one source refused at the door, the worker's own dataset step and label trigger)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lockgate.control.client import AdminClient
from lockgate.control.registry import Registry
from lockgate.control.rollouts import RolloutStore
from lockgate.demo import ensure_demo_models
from lockgate.errors import LockgateError
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain import dataset as datasets
from lockgate.retrain.pipeline import PipelineSpec, parse_pipeline
from lockgate.retrain.worker import RetrainWorker
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

APP, TRUSTED, CROWD = "app-key-0123456789abcd", "trusted-key-0123456789", "crowd-key-0123456789ab"
KEYS = (("app", APP, "infer"), ("trusted", TRUSTED, "feedback"), ("crowd", CROWD, "feedback"))
REQUESTS = 12
# who labels which request: 0-3 the trusted source, 4-7 the crowd, 8-11 nobody with a key
SENDERS: list[str | None] = [TRUSTED] * 4 + [CROWD] * 4 + [None] * 4


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pipeline(**data: Any) -> PipelineSpec:
    return parse_pipeline(
        {
            "endpoint": "classifier",
            "triggers": {"drift": False, "min_new_labels": 5},
            "data": {"min_rows": 200, **data},
            "rollout": {"admin_url": f"http://127.0.0.1:{closed_port()}"},
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A home whose classifier answered REQUESTS requests of one client, labelled by three
    senders; returns it, the rows sent and the labels sent."""
    home = tmp_path_factory.mktemp("labels-home")
    ensure_demo_models(Registry(home))
    RolloutStore(home).set_alias("classifier", "champion", "classifier", "2")
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(REQUESTS, 16)).astype(np.float32)
    labels = (np.arange(REQUESTS) % 2).astype(np.float64)
    config = loopback_config(home, client_keys=KEYS)
    with RunningGateway(config, Registry(home)) as gw, httpx.Client(timeout=30) as http:
        base = f"http://{gw.http}/v2/models/classifier"
        for i, row in enumerate(rows):
            doc = {
                "id": f"t{i}",
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 16], "data": row.tolist()}
                ],
            }
            r = http.post(f"{base}/infer", json=doc, headers={"authorization": f"Bearer {APP}"})
            assert r.status_code == 200, r.text
        for i, sender in enumerate(SENDERS):
            headers = {"authorization": f"Bearer {sender}"} if sender else {}
            body = {"labels": [{"id": f"t{i}", "label": labels[i]}]}
            r = http.post(f"{base}/feedback", json=body, headers=headers)
            assert r.status_code == (200 if sender else 401), r.text
        predlog = PredictionLog(home / "predlog")
        wait_until(
            lambda: len(predlog.read_predictions("classifier", "2").get("ts", ())) == REQUESTS,
            "every prediction on disk",
        )
        wait_until(
            lambda: len(FeedbackLog(home / "feedback").read_labels().get("ts", ())) == 8,
            "the accepted labels on disk",
        )
    return home, rows, labels


def build(home: Path, spec: PipelineSpec) -> datasets.Dataset:
    """The dataset step as the worker takes it (the same call, its arguments from the spec)."""
    now = time.time()
    return datasets.build_dataset(
        PredictionLog(home / "predlog"),
        FeedbackLog(home / "feedback"),
        spec.model,
        ["1", "2"],
        now - spec.data.window_seconds,
        now,
        spec.data.max_rows,
        label_sources=spec.data.label_sources,
    )


def test_a_label_without_a_key_is_never_stored(
    served: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    home, _, _ = served
    stored = FeedbackLog(home / "feedback").read_labels()
    assert sorted(stored["request_id"].tolist()) == sorted(f"t{i}".encode() for i in range(8))
    by_id = dict(zip(stored["request_id"].tolist(), stored["source"].tolist(), strict=True))
    assert {by_id[f"t{i}".encode()] for i in range(4)} == {b"trusted"}
    assert {by_id[f"t{i}".encode()] for i in range(4, 8)} == {b"crowd"}


def test_only_labels_from_the_named_sources_are_trained_on(
    served: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    home, rows, labels = served
    trusted = build(home, pipeline(label_sources=["trusted"]))
    np.testing.assert_array_equal(trusted.x, rows[:4])  # in the order they were predicted
    np.testing.assert_array_equal(trusted.y, labels[:4])
    assert trusted.manifest["label_sources"] == ["trusted"]
    both = build(home, pipeline(label_sources=["crowd", "trusted"]))
    np.testing.assert_array_equal(both.x, rows[:8])
    anyone = build(home, pipeline())  # no restriction: every stored label (none unkeyed)
    np.testing.assert_array_equal(anyone.x, rows[:8])
    assert "label_sources" not in anyone.manifest
    assert build(home, pipeline(label_sources=["someone-else"])).rows == 0


def test_the_worker_counts_and_uses_only_the_named_sources(
    served: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    home, _, _ = served

    def worker(spec: PipelineSpec) -> RetrainWorker:
        return RetrainWorker(spec, home, AdminClient(spec.rollout.admin_url, "t", timeout=10))

    # the job stops for want of rows (min_rows 200): its detail says how many it found
    result = worker(pipeline(label_sources=["trusted"])).run_job("labels")
    assert result.outcome == "no_data" and result.detail["rows"] == 4
    result = worker(pipeline()).run_job("labels")
    assert result.detail["rows"] == 8
    # min_new_labels 5: four trusted labels are not enough, eight of both are
    for path in (home / "retrain").glob("*.json"):
        path.unlink()  # forget the jobs above: count labels from the start
    assert worker(pipeline(label_sources=["trusted"])).trigger() is None
    assert worker(pipeline(label_sources=["trusted", "crowd"])).trigger() == "labels"


@pytest.mark.parametrize(
    "value",
    [[], "trusted", ["ok", ""], ["bad name"], [1]],
    ids=["empty", "string", "blank", "space", "number"],
)
def test_label_sources_must_be_a_list_of_key_names(value: object) -> None:
    with pytest.raises(LockgateError, match=r"data\.label_sources must be a non-empty list"):
        pipeline(label_sources=value)
