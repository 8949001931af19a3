"""The monitor inside a real gateway: every answered request reaches the prediction log exactly
once, labels join to predictions, overflow is counted, and /metrics says so."""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.demo import classifier_data, ensure_demo_models
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.monitor.sketch import LatencySketch
from lockgate.retrain.gateway_metrics import parse, scrape
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until


def metrics(gw: RunningGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://{gw.admin}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ensure_demo_models(Registry(tmp_path))
    return tmp_path


def _infer(client: httpx.Client, request_id: str, rows: np.ndarray) -> httpx.Response:
    doc = {
        "id": request_id,
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ],
    }
    r = client.post("/v2/models/classifier/infer", json=doc)
    assert r.status_code == 200, r.text
    return r


def test_every_request_is_logged_once_and_labels_join(home: Path) -> None:
    rng = np.random.default_rng(5)
    sent: dict[str, int] = {}
    predicted: dict[str, int] = {}
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        with httpx.Client(base_url=f"http://{gw.http}", timeout=10) as client:
            for i in range(60):
                rows = rng.normal(size=(1 + i % 3, 16)).astype(np.float32)
                r = _infer(client, f"req-{i}", rows)
                sent[f"req-{i}"] = rows.shape[0]
                label = next(o for o in r.json()["outputs"] if o["name"] == "label")
                predicted[f"req-{i}"] = int(label["data"][0])
            # labels: right for 40 requests, wrong for 20, plus 5 ids nobody asked about
            labels = [
                {"id": rid, "label": p if i < 40 else 1 - p}
                for i, (rid, p) in enumerate(predicted.items())
            ]
            labels += [{"id": f"ghost-{i}", "label": 1} for i in range(5)]
            r = client.post("/v2/models/classifier/feedback", json={"labels": labels})
            assert r.json() == {"accepted": 65, "matched": 60, "unknown": 5}
            bad = client.post("/v2/models/classifier/feedback", json={"labels": [{"id": 3}]})
            assert bad.status_code == 400 and "'id' string" in bad.json()["error"]
        samples = metrics(gw)
        v2 = {"model": "classifier", "version": "2"}
        # multi-row requests: accuracy counts the first row's label per request id
        assert value(samples, "lockgate_feedback_labels_total", **v2) == 60
        assert value(samples, "lockgate_online_accuracy", **v2) == pytest.approx(40 / 60)
        assert value(samples, "lockgate_feedback_correct_total", **v2) == 40
        assert value(samples, "lockgate_label_delay_seconds_count", **v2) == 60
        assert value(samples, "lockgate_feedback_unknown_total") == 5
        route = {"endpoint": "classifier", "variant": "stable", **v2}  # implicit: as shown
        ok = {**route, "protocol": "http", "outcome": "ok"}
        assert value(samples, "lockgate_requests_total", **ok) == 60
        assert value(samples, "lockgate_request_latency_seconds_count", **route) == 60
        assert value(samples, "lockgate_predlog_rows_total", **v2) == sum(sent.values())
    log = PredictionLog(home / "predlog").read_predictions("classifier", "2")
    ids, counts = np.unique(log["request_id"], return_counts=True)
    assert dict(zip([i.decode() for i in ids], counts.tolist(), strict=True)) == sent
    assert log["inputs"].shape == (sum(sent.values()), 16) and log["outputs"].shape[1] == 2
    assert set(log["endpoint"].tolist()) == {b"classifier"}
    feedback = FeedbackLog(home / "feedback").read_labels()
    assert len(feedback["request_id"]) == 65


def test_a_scrape_can_ask_for_some_samples_only(home: Path) -> None:
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        with httpx.Client(base_url=f"http://{gw.http}", timeout=10) as client:
            for i in range(5):
                _infer(client, f"r{i}", np.zeros((1, 16), np.float32))
        gw.call(gw.gateway.monitor.drain())
        url = f"http://{gw.admin}/metrics"
        wanted = ["lockgate_requests_total", "lockgate_drift_alert"]
        text = httpx.get(url, params=[("name[]", n) for n in wanted]).text
        got = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert got == set(wanted)
        # the rollout controller's scrape asks for its samples only and reads what it read
        # from the whole page
        full = parse(httpx.get(url).text, at=0.0)
        assert dataclasses.replace(scrape(f"http://{gw.admin}"), at=0.0) == full
        assert full.requests and full.latency


def test_ring_overflow_is_counted_not_hidden(home: Path) -> None:
    """A run with more rows than the ring's filling set has left is dropped whole and counted
    (a ring half full is drained early, so only a large run can overflow it)."""
    monitor = MonitorConfig(ring_rows=4, drain_interval=3600)
    config = dataclasses.replace(loopback_config(home), monitor=monitor)
    with RunningGateway(config, Registry(home)) as gw:
        with httpx.Client(base_url=f"http://{gw.http}", timeout=10) as client:
            _infer(client, "large", np.zeros((10, 16), np.float32))
            _infer(client, "small", np.zeros((1, 16), np.float32))
        gw.call(gw.gateway.monitor.drain())
        samples = metrics(gw)
    v2 = {"model": "classifier", "version": "2"}
    assert value(samples, "lockgate_predlog_dropped_total", **v2) == 10
    assert value(samples, "lockgate_predlog_rows_total", **v2) == 1


def test_monitoring_off_refuses_feedback(home: Path) -> None:
    config = dataclasses.replace(loopback_config(home), monitor=MonitorConfig(enabled=False))
    with RunningGateway(config, Registry(home)) as gw:
        r = httpx.post(
            f"http://{gw.http}/v2/models/classifier/feedback", json={"id": "x", "label": 1}
        )
        assert r.status_code == 503 and "monitoring is off" in r.json()["error"]
        assert httpx.get(f"http://{gw.admin}/metrics").status_code == 200


def test_shifted_traffic_flips_the_drift_alert(home: Path) -> None:
    rng = np.random.default_rng(11)
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        client = httpx.Client(base_url=f"http://{gw.http}", timeout=30)
        v2 = {"model": "classifier", "version": "2", "side": "input"}
        for _ in range(2):  # two windows (1,000 rows each) from the training distribution
            x, _ = classifier_data(rng, 1000)
            _infer(client, "calm", x)
        gw.call(gw.gateway.monitor.drain())
        calm = metrics(gw)
        assert value(calm, "lockgate_drift_windows_total", **v2) == 2
        assert value(calm, "lockgate_drift_alert", **v2, feature="input[0]") == 0
        assert value(calm, "lockgate_drift_dataset_alert", **v2) == 0
        x, _ = classifier_data(rng, 1000)
        x[:, 0] += 0.5  # feature 0 has std 0.5: a one-sigma shift
        _infer(client, "shifted", x)
        gw.call(gw.gateway.monitor.drain())
        shifted = metrics(gw)
        assert value(shifted, "lockgate_drift_alert", **v2, feature="input[0]") == 1
        assert value(shifted, "lockgate_drift_alert", **v2, feature="input[5]") == 0
        psi = value(shifted, "lockgate_drift_score", **v2, feature="input[0]", statistic="psi")
        assert psi > 0.25
        admin = f"http://{gw.admin}/v1/models/classifier/versions/2"
        report = httpx.get(f"{admin}/drift").json()
        assert report["inputs"]["features"]["input[0]"]["alert"] is True
        assert report["outputs"]["last_window"]["rows"] == 1000
        recent = httpx.get(f"{admin}/recent", params={"limit": 3}).json()
        assert [r["id"] for r in recent["rows"]] == ["shifted"] * 3
        assert recent["input_features"][0] == "input[0]"
        sketches = msgpack.unpackb(httpx.get(f"{admin}/sketches").content)
        merged = LatencySketch.from_bytes(sketches["latency"]["classifier/stable"])
        assert merged.count == 3  # three requests
        client.close()


@pytest.mark.parametrize("removed", ["reference.npz", "profile.npz"])
def test_drift_monitors_come_from_the_stored_profile_or_else_the_reference(
    home: Path, removed: str
) -> None:
    """The profile built at registration is what a gateway loads; a version without one (an
    older registration) gets it built from its reference data at load, identically."""
    registry = Registry(home)
    info = registry.get("classifier", "2")
    stored = registry.load_profiles(info)
    assert stored is not None and stored.outputs is not None
    (info.path / removed).unlink()
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        monitored = gw.gateway.monitor.versions[("classifier", "2")]
        assert monitored.input_drift is not None and monitored.output_drift is not None
        for got, want in (
            (monitored.input_drift.profile, stored.inputs),
            (monitored.output_drift.profile, stored.outputs),
        ):
            assert got.names == want.names
            for name in ("edges", "n_edges", "counts", "norms"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_rows_the_drain_cannot_assemble_are_counted_as_dropped(home: Path) -> None:
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        with httpx.Client(base_url=f"http://{gw.http}", timeout=10) as client:
            _infer(client, "good", np.zeros((1, 16), np.float32))
            gw.call(gw.gateway.monitor.drain())
            monitor = gw.gateway.monitor
            vm = monitor.versions[("classifier", "2")]
            original = vm.recorder.ring.assemble

            def broken(*args: object) -> object:
                raise ValueError("simulated assembly failure")

            vm.recorder.ring.assemble = broken  # type: ignore[method-assign]
            try:
                _infer(client, "lost", np.zeros((3, 16), np.float32))
                gw.call(monitor.drain())
            finally:
                vm.recorder.ring.assemble = original  # type: ignore[method-assign]
            _infer(client, "after", np.zeros((1, 16), np.float32))
            gw.call(monitor.drain())
        samples = metrics(gw)
    v2 = {"model": "classifier", "version": "2"}
    assert value(samples, "lockgate_predlog_dropped_total", **v2) == 3
    assert value(samples, "lockgate_predlog_rows_total", **v2) == 2


def test_a_scrape_never_holds_the_event_loop_on_the_drains_lock(home: Path) -> None:
    """While the drain holds the monitor's lock (absorbing rows), a scrape and the recent-rows
    view wait for it off the event loop: predictions are answered meanwhile."""
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        rows = classifier_data(np.random.default_rng(1), 1)[0]
        with httpx.Client(base_url=f"http://{gw.http}", timeout=10) as client:
            _infer(client, "warm", rows)
            monitor = gw.dataplane.monitor
            lock = WatchedLock(monitor.lock)
            monitor.lock = lock
            urls = ["/metrics", "/v1/models/classifier/versions/2/recent"]
            try:
                with ThreadPoolExecutor(len(urls)) as pool:
                    with lock.lock:
                        waiting = [
                            pool.submit(lambda u=u: httpx.get(f"http://{gw.admin}{u}", timeout=60))
                            for u in urls
                        ]
                        wait_until(
                            lambda: lock.waiting_in({"capture_monitor", "recent_rows_now"}),
                            "both requests to wait for the lock",
                        )
                        assert not any(w.done() for w in waiting)
                        for i in range(5):
                            _infer(client, f"while-locked-{i}", rows)  # 10 s timeout each
                    scrapes = [w.result().status_code for w in waiting]
            finally:
                monitor.lock = lock.lock
        assert scrapes == [200, 200]


class WatchedLock:
    """The monitor's lock, knowing which functions are waiting for it."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self._waiting: Counter[str] = Counter()
        self._books = threading.Lock()

    def waiting_in(self, functions: set[str]) -> bool:
        with self._books:
            return all(self._waiting[f] > 0 for f in functions)

    def __enter__(self) -> None:
        caller = sys._getframe(1).f_code.co_name
        with self._books:
            self._waiting[caller] += 1
        self.lock.acquire()
        with self._books:
            self._waiting[caller] -= 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
