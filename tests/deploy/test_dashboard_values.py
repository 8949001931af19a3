"""The dashboard's key panels read the right values under a canary split, a shadow and client
errors: a real gateway, a real Prometheus scraping it with native histograms on (so it reads the
protobuf exposition), and each panel's PromQL evaluated through Prometheus's query API with the
dashboard's variables expanded. The expectations come from the gateway's own figures (its
monitor snapshot, its answers), never from Prometheus."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.demo import classifier_data, ensure_demo_models
from lockgate.monitor.kernels import ddsketch as dd
from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import Snapshot
from tests.conftest import RunningGateway, loopback_config
from tests.deploy.conftest import PROMETHEUS_DIR, dashboard, infer
from tests.deploy.prometheus_server import Prometheus, running_prometheus
from tests.waiting import wait_until

ALPHA = (2 ** (1 / 64) - 1) / (2 ** (1 / 64) + 1)  # the sketch's relative accuracy (0.54%)
SERVED = {  # route -> version
    ("classifier", "stable"): "2",
    ("classifier", "canary"): "1",
    ("regressor", "stable"): "1",
}
SHADOW = ("classifier", "challenger")
ROWS = 150  # single-row classifier requests, each labelled


@dataclass
class Scene:
    prom: Prometheus
    before: Snapshot  # once every series exists, before the traffic the panels are judged on
    after: Snapshot
    window: str  # a range from just after `before` to `at`, as PromQL writes it
    at: float  # evaluation time
    errors: Counter[str] = field(default_factory=Counter)  # endpoint -> failed requests
    requests: Counter[str] = field(default_factory=Counter)  # endpoint -> all requests
    labels: dict[str, list[bool]] = field(default_factory=dict)  # version -> label == prediction

    def panel(self, title: str, ref: str = "A") -> list[dict[str, Any]]:
        """The panel's target `ref`, with Grafana's variables as "All", evaluated at `at`."""
        (panel,) = [p for p in dashboard()["panels"] if p.get("title") == title]
        (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref]
        for name in ("$job", "$instance", "$endpoint", "$model"):
            expr = expr.replace(name, ".*")
        expr = expr.replace("$__rate_interval", self.window).replace("$__range", self.window)
        assert "$" not in expr, expr
        r = httpx.get(
            f"{self.prom.base}/api/v1/query", params={"query": expr, "time": self.at}, timeout=10
        )
        doc = r.json()
        assert doc["status"] == "success", (expr, doc)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result


def _post(client: httpx.Client, endpoint: str, rows: np.ndarray, key: str) -> dict[str, Any]:
    """An FP32 request routed by `key`; returns the answer (its `id` is the request's)."""
    return infer(client, endpoint, rows, uuid.uuid4().hex, key)


def _snapshot(gw: RunningGateway, shadow_copies: int) -> Snapshot:
    """The gateway's figures once its shadow has answered `shadow_copies` copies and the
    monitor has drained them."""

    def ready() -> Snapshot | None:
        gw.call(gw.gateway.monitor.drain())
        raw = httpx.get(f"http://{gw.admin}/v1/monitor/snapshot", timeout=10)
        snap = Snapshot.from_bytes(raw.content)
        return snap if snap.shadows[SHADOW]["requests"] == shadow_copies else None

    return wait_until(ready, f"{shadow_copies} shadow copies answered and drained")


def _sketch(snap: Snapshot, route: tuple[str, str], version: str) -> LatencySketch:
    return snap.versions[(route[0], version)].latency[route]


def _count(snap: Snapshot, endpoint: str, ok_only: bool = False) -> int:
    """Requests to `endpoint` (labels: endpoint, variant, model, version, protocol, outcome)."""
    return sum(
        n
        for labels, n in snap.requests.items()
        if labels[0] == endpoint and (labels[-1] == "ok" or not ok_only)
    )


def _wait_scraped(prom: Prometheus, snap: Snapshot) -> None:
    """Until Prometheus holds `snap`'s latency counts (native histograms) for every route."""
    routes = {**SERVED, SHADOW: "1"}

    def scraped() -> bool:
        for (endpoint, variant), version in routes.items():
            family = "shadow" if (endpoint, variant) == SHADOW else "request"
            selector = f'endpoint="{endpoint}", variant="{variant}", version="{version}"'
            result = prom.query(f"histogram_count(lockgate_{family}_latency_seconds{{{selector}}})")
            sketch = _sketch(snap, (endpoint, variant), version)
            if len(result) != 1 or float(result[0]["value"][1]) != sketch.count:
                return False
        return True

    prom.wait("the gateway's latency counts", scraped)


def _scrape_times(prom: Prometheus) -> list[float]:
    """The times of the gateway's scrapes in the last 10 minutes (ms precision)."""
    (series,) = prom.query('up{job="lockgate"}[10m]')
    return [float(ts) for ts, _ in series["values"]]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    home = tmp_path_factory.mktemp("dashboard-values")
    ensure_demo_models(Registry(home))
    monitor = MonitorConfig(drift_window_seconds=3600.0)  # windows close by rows only
    rng = np.random.default_rng(17)
    with RunningGateway(loopback_config(home, monitor=monitor), Registry(home)) as gw:
        body = {
            "variants": [
                {"name": "stable", "model": "classifier", "version": "2", "weight": 80},
                {"name": "canary", "model": "classifier", "version": "1", "weight": 20},
            ],
            "shadows": [{"name": "challenger", "model": "classifier", "version": "1"}],
        }
        r = httpx.put(f"http://{gw.admin}/v1/endpoints/classifier", json=body, timeout=30)
        assert r.status_code == 200, r.text
        rules = [str(PROMETHEUS_DIR / "alerts.yml")]
        tmp = tmp_path_factory.mktemp("prometheus-native")
        with (
            running_prometheus(tmp, [gw.admin], rules, ["native-histograms"]) as prom,
            httpx.Client(base_url=f"http://{gw.http}", timeout=30) as client,
        ):
            # Every series first: both variants, the shadow, the regressor and each error.
            keys: dict[str, str] = {}  # version -> a routing key that lands on it
            copies = 0
            for i in range(500):
                answer = _post(client, "classifier", classifier_data(rng, 1)[0], f"warm-{i}")
                keys.setdefault(answer["model_version"], f"warm-{i}")
                copies += 1
                if len(keys) == 2:
                    break
            assert keys.keys() == {"1", "2"}
            _post(client, "regressor", rng.normal(size=(1, 8)), "warm")
            assert client.post("/v2/models/classifier/infer", content=b"{").status_code == 400
            assert client.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
            before = _snapshot(gw, copies)
            _wait_scraped(prom, before)
            start = time.time()
            # a scrape after `start` holds `before`: the window's first sample
            prom.wait("a scrape after the warm-up", lambda: max(_scrape_times(prom)) > start)
            scene = Scene(prom, before, before, "", 0.0)

            # Drift on the stable version's input[0]: two calm windows, then two shifted ones.
            for shift in (0.0, 0.0, 0.5, 0.5):
                x = classifier_data(rng, 1000)[0]
                x[:, 0] += shift  # feature 0 has std 0.5: a one-sigma shift
                _post(client, "classifier", x, keys["2"])
            copies += 4
            # Single-row requests over both variants (random keys), each labelled later.
            labels = []
            for i in range(ROWS):
                answer = _post(client, "classifier", classifier_data(rng, 1)[0], f"k{i}")
                predicted = int(
                    next(o for o in answer["outputs"] if o["name"] == "label")["data"][0]
                )
                label = predicted if i % 3 else 1 - predicted
                labels.append({"id": answer["id"], "label": label})
                scene.labels.setdefault(answer["model_version"], []).append(label == predicted)
            copies += ROWS
            for _ in range(30):  # a healthy endpoint
                _post(client, "regressor", rng.normal(size=(1, 8)), "r")
            for _ in range(5):  # client errors: a broken body, a model that does not exist
                assert client.post("/v2/models/classifier/infer", content=b"{").status_code == 400
                assert client.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
            r = client.post("/v2/models/classifier/feedback", json={"labels": labels})
            assert r.status_code == 200, r.text
            after = _snapshot(gw, copies)
            _wait_scraped(prom, after)
            drift = 'ALERTS{alertname="LockgateFeatureDrift", version="2", feature="input[0]"}'
            prom.wait(
                "the stable version's input[0] drift alert pending", lambda: prom.query(drift)
            )
            # The window runs from just before the first scrape after `start` (which holds
            # `before`) to the last scrape (which holds `after`): rate() then extrapolates
            # every series alike (by 1 ms), so ratios of rates are ratios of counts.
            alerted = time.time()  # the alert is in Prometheus: end after a later scrape
            prom.wait("a scrape after the alert", lambda: max(_scrape_times(prom)) > alerted)
            scrapes = _scrape_times(prom)
            first = min(s for s in scrapes if s > start)
            scene.after, scene.at = after, max(scrapes)
            scene.window = f"{round((scene.at - first) * 1000) + 1}ms"
            for endpoint in ("classifier", "regressor", "_unknown"):
                scene.requests[endpoint] = _count(after, endpoint) - _count(before, endpoint)
                scene.errors[endpoint] = scene.requests[endpoint] - (
                    _count(after, endpoint, ok_only=True) - _count(before, endpoint, ok_only=True)
                )
            yield scene


def _buckets(sketch: LatencySketch, q: float) -> list[tuple[float, float]]:
    """The native-histogram bucket(s) (lower, upper] that hold the q-quantile of `sketch`'s
    values: the first whose cumulative count reaches q * n, and the next non-empty one when the
    count equals q * n exactly (Prometheus compares scaled floats there)."""
    counts = sketch.state[dd.SLOT_FIRST_BUCKET : dd.SLOT_OVERFLOW]
    index = np.flatnonzero(counts)
    cumulative = np.cumsum(counts[index]) + sketch.state[dd.SLOT_ZERO : dd.SLOT_FIRST_BUCKET].sum()
    rank = q * sketch.count
    first = int(np.searchsorted(cumulative, rank, side="left"))
    chosen = [first] + ([first + 1] if cumulative[first] == rank else [])
    bounds = []
    for n in chosen:
        i = int(index[n]) + dd.INDEX_MIN
        bounds.append((2 ** ((i - 1) / 64), 2 ** (i / 64)))
    return bounds


def _assert_quantile(value: float, sketch: LatencySketch, q: float) -> None:
    """Prometheus's quantile of the native histogram lies in the bucket the sketch's quantile
    comes from, so it is within the sketch's relative accuracy of it."""
    buckets = _buckets(sketch, q)
    assert any(lo * (1 - 1e-12) <= value <= hi * (1 + 1e-12) for lo, hi in buckets), (
        value,
        buckets,
    )
    if len(buckets) == 1:
        assert abs(value - sketch.quantile(q)) <= ALPHA * value * (1 + 1e-9)


def _delta(scene: Scene, route: tuple[str, str], version: str) -> LatencySketch:
    a, b = _sketch(scene.after, route, version), _sketch(scene.before, route, version)
    return LatencySketch.from_state(a.state - b.state)


def _by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in result}


def test_p99_is_served_traffics_without_the_shadow(scene: Scene) -> None:
    served = LatencySketch()
    for route, version in SERVED.items():
        served.merge(_delta(scene, route, version))
    assert served.count == sum(
        scene.requests[e] - scene.errors[e] for e in ("classifier", "regressor")
    )
    ((value,),) = [tuple(_by(scene.panel("p99 latency")).values())]
    _assert_quantile(value, served, 0.99)
    shadow = _delta(scene, SHADOW, "1")
    assert shadow.count == 4 + ROWS  # every classifier request of the window got a copy


def test_latency_per_variant_is_each_variants_own(scene: Scene) -> None:
    title = "Latency p50 / p99 per variant (histogram)"
    for ref, q in (("A", 0.5), ("B", 0.99)):
        values = _by(scene.panel(title, ref), "endpoint", "variant")
        assert values.keys() == SERVED.keys()  # no shadow among them
        for route, version in SERVED.items():
            _assert_quantile(values[route], _delta(scene, route, version), q)
    shadow = _by(scene.panel("Shadow latency p99"), "endpoint", "variant")
    assert shadow.keys() == {SHADOW}
    _assert_quantile(shadow[SHADOW], _delta(scene, SHADOW, "1"), 0.99)


def test_error_ratios_read_zero_when_healthy_and_leave_unknown_models_out(scene: Scene) -> None:
    assert scene.errors["regressor"] == 0 and scene.errors["classifier"] == 5
    assert scene.errors["_unknown"] == scene.requests["_unknown"] == 5
    ratios = {k[0]: v for k, v in _by(scene.panel("Error ratio by endpoint"), "endpoint").items()}
    assert ratios.keys() == {"classifier", "regressor"}
    assert ratios["regressor"] == 0.0
    expected = scene.errors["classifier"] / scene.requests["classifier"]
    assert math.isclose(ratios["classifier"], expected, rel_tol=1e-9)
    ((overall,),) = [tuple(_by(scene.panel("Error ratio")).values())]
    served = scene.requests["classifier"] + scene.requests["regressor"]
    assert math.isclose(overall, scene.errors["classifier"] / served, rel_tol=1e-9)
    # the unknown model's requests are not lost: they are errors by outcome
    outcomes = _by(scene.panel("Errors by outcome"), "endpoint", "outcome")
    assert outcomes.keys() == {("classifier", "invalid"), ("_unknown", "not_found")}


def test_traffic_split_and_requests_per_variant(scene: Scene) -> None:
    split = _by(scene.panel("Traffic split"), "endpoint", "variant")
    assert split[("classifier", "stable")] == 80 and split[("classifier", "canary")] == 20
    rates = _by(scene.panel("Requests/s by endpoint / variant"), "endpoint", "variant")
    assert rates.keys() == SERVED.keys()  # shadow copies are not requests


def test_feature_drift_alert_state(scene: Scene) -> None:
    state = _by(scene.panel("Feature drift alert state"), "model", "version", "side", "feature")
    stable = {k[3]: v for k, v in state.items() if k[:3] == ("classifier", "2", "input")}
    assert len(stable) == 16
    assert stable.pop("input[0]") == 1.0  # pending: the rule's `for: 5m` has not passed
    assert set(stable.values()) == {0.0}
    assert set(state.values()) <= {0.0, 1.0, 2.0}


def test_accuracy_and_label_delay(scene: Scene) -> None:
    accuracy = _by(scene.panel("Online accuracy"), "model", "version")
    for version, hits in scene.labels.items():
        assert math.isclose(accuracy[("classifier", version)], sum(hits) / len(hits))
    labelled = {v: len(h) for v, h in scene.labels.items()}
    for version, n in labelled.items():
        vs_after = scene.after.versions[("classifier", version)]
        vs_before = scene.before.versions[("classifier", version)]
        assert vs_after.labelled - vs_before.labelled == n
    mean = _by(scene.panel("Label delay", "C"), "model", "version")
    for version in labelled:
        a, b = (
            scene.after.versions[("classifier", version)],
            scene.before.versions[("classifier", version)],
        )
        expected = (a.label_delay_sum - b.label_delay_sum) / (
            int(a.label_delay.sum()) - int(b.label_delay.sum())
        )
        assert math.isclose(mean[("classifier", version)], expected, rel_tol=1e-9)
    p50 = _by(scene.panel("Label delay", "A"), "model", "version")
    assert all(p50[("classifier", v)] > 0 for v in labelled)
