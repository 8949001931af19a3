"""The performance trigger: the champion's online accuracy over its last N labels, read from the
gateways' /metrics, against the accuracy it was gated with. On synthetic scrapes first (windows,
counter resets, a new champion), then a real gateway with labelled traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lockgate.control.client import AdminClient
from lockgate.control.registry import Registry
from lockgate.demo import classifier_data, ensure_demo_models, send_traffic
from lockgate.retrain.evaluate import evaluate
from lockgate.retrain.gateway_metrics import Snapshot
from lockgate.retrain.lineage import gates_record
from lockgate.retrain.pipeline import GatesSpec, parse_pipeline
from lockgate.retrain.triggers import AccuracyWatch, gated_accuracy
from lockgate.retrain.worker import RetrainWorker
from tests.conftest import RunningGateway, loopback_config

V = ("m", "1")


def scrape(labels: float, correct: float, key: tuple[str, str] = V) -> Snapshot:
    """A scrape as /metrics gives it: the label count and the lifetime accuracy gauge."""
    return Snapshot(labels={key: labels}, accuracy={key: correct / labels if labels else 0.0})


def test_the_newest_window_with_enough_labels_is_measured() -> None:
    watch = AccuracyWatch(labels=100, drop=0.05)
    assert watch.observe(scrape(0, 0), *V, gated=0.9) is None  # nothing to difference yet
    assert watch.observe(scrape(60, 54), *V, gated=0.9) is None  # 60 labels: too few
    reading = watch.observe(scrape(120, 108), *V, gated=0.9)
    assert reading is not None and (reading.labels, reading.accuracy) == (120, 0.9)
    assert not watch.dropped(reading)
    # 100 more labels, 70 right: the window is those 100 (from the scrape at 120), not all 220
    reading = watch.observe(scrape(220, 178), *V, gated=0.9)
    assert reading is not None and reading.labels == 100
    assert reading.accuracy == pytest.approx(0.7) and reading.drop == pytest.approx(0.2)
    assert watch.dropped(reading) and "0.7000 over the last 100 labels" in reading.describe()
    # the same count again: no new labels, the same window
    same = watch.observe(scrape(220, 178), *V, gated=0.9)
    assert same is not None and same.accuracy == pytest.approx(0.7)


def test_a_gateway_restart_and_a_new_champion_start_over() -> None:
    watch = AccuracyWatch(labels=50, drop=0.05)
    watch.observe(scrape(500, 450), *V, gated=0.9)
    # the gateway restarted: its counters start again; 60 labels since, 30 right
    reading = watch.observe(scrape(60, 30), *V, gated=0.9)
    assert reading is not None and (reading.labels, reading.accuracy) == (60, 0.5)
    other = ("m", "2")
    assert watch.observe(scrape(1000, 500, other), *other, gated=0.9) is None  # new champion
    watch.reset()
    assert watch.observe(scrape(1100, 550, other), *other, gated=0.9) is None  # after a job


def test_the_gated_accuracy_comes_from_the_gate_results_else_the_lineage() -> None:
    recorded = {"report": {"candidate": {"accuracy": 0.91}}}
    lineage = {"gates": {"candidate": {"accuracy": 0.88}}}
    assert gated_accuracy(recorded, lineage) == 0.91
    assert gated_accuracy(None, lineage) == 0.88
    assert gated_accuracy(None, {}) is None
    assert gated_accuracy({"report": {"candidate": {"mae": 1.0}}}, {}) is None


def test_an_accuracy_drop_triggers_a_job(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    ensure_demo_models(registry)
    with RunningGateway(loopback_config(tmp_path), Registry(tmp_path)) as gw:
        spec = parse_pipeline(
            {
                "endpoint": "classifier",
                "triggers": {
                    "drift": False,
                    "min_new_labels": 0,
                    "accuracy_drop": 0.1,
                    "accuracy_labels": 100,
                },
                "rollout": {"admin_url": f"http://{gw.admin}"},
            }
        )
        worker = RetrainWorker(spec, tmp_path, AdminClient(f"http://{gw.admin}", None))
        champion = worker._champion()
        assert champion is not None
        info = registry.get("classifier", champion)
        assert worker.trigger() is None  # not gated: not watched
        # gate the champion as `lockgate models evaluate` does, on data like its traffic
        x, y = classifier_data(np.random.default_rng(7), 2000)
        report = evaluate(
            info.model_path.read_bytes(), None, x, y, GatesSpec(p99_latency_ms=60_000.0),
            "classification", latency_calls=10, warmup_calls=1,
        )  # fmt: skip
        record = gates_record(report, against=None, data={"rows": 2000}, actor="tests")
        registry.write_gates(info, record)
        gated = report.candidate["accuracy"]
        assert gated is not None
        assert worker.trigger() is None  # the first look: nothing to measure a window against
        calm = send_traffic(gw.http, 150, drifted=False, seed=2)
        assert abs(calm["served_accuracy"] - gated) < 0.1  # the construction
        assert worker.trigger() is None
        drifted = send_traffic(gw.http, 150, drifted=True, seed=3)
        assert drifted["served_accuracy"] < gated - 0.1  # the construction
        assert worker.trigger() == "accuracy"
        reading = worker.accuracy.observe(worker.gateways.scrape(), "classifier", champion, gated)
        assert reading is not None and reading.labels == 150
        assert reading.accuracy == pytest.approx(drifted["served_accuracy"])
