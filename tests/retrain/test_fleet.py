"""Several gateway replicas read as one: sums, gauges, restarts and departures of replicas, drift
judged on the summed histograms, and names resolved to every address."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor import snapshot as monitor
from lockgate.monitor.drift import build_profile
from lockgate.retrain.fleet import Gateways
from lockgate.retrain.gateway_metrics import Snapshot, parse, window
from tests.monitor.test_kernels import reference_histogram

ROUTE = 'endpoint="e",variant="stable",model="m",version="1"'


def text(ok: float, errors: float = 0.0, fast: float = 0.0, labels: float = 0.0,
         accuracy: float = 0.0, alert: float = 0.0) -> str:  # fmt: skip
    """A gateway's /metrics: `ok` answered requests, `fast` of them under 10 ms."""
    return f"""# TYPE lockgate_requests counter
lockgate_requests_total{{{ROUTE},protocol="http",outcome="ok"}} {ok}
lockgate_requests_total{{{ROUTE},protocol="http",outcome="model_failed"}} {errors}
# TYPE lockgate_request_latency_seconds histogram
lockgate_request_latency_seconds_bucket{{{ROUTE},le="0.01"}} {fast}
lockgate_request_latency_seconds_bucket{{{ROUTE},le="+Inf"}} {ok}
lockgate_request_latency_seconds_count{{{ROUTE}}} {ok}
lockgate_request_latency_seconds_sum{{{ROUTE}}} 1.0
# TYPE lockgate_feedback_labels counter
lockgate_feedback_labels_total{{model="m",version="1"}} {labels}
# TYPE lockgate_online_accuracy gauge
lockgate_online_accuracy{{model="m",version="1"}} {accuracy}
# TYPE lockgate_drift_alert gauge
lockgate_drift_alert{{model="m",version="1",side="input",feature="f0"}} {alert}
"""


class Replicas:
    """What each replica's /metrics and monitor snapshot say now, by URL."""

    def __init__(self, **texts: str) -> None:
        self.texts = {f"http://{name}:8002": t for name, t in texts.items()}
        self.monitors = {url: monitor.Snapshot() for url in self.texts}

    def fetch(self, url: str) -> Snapshot:
        if url not in self.texts:
            raise LockgateError(ErrorKind.UNAVAILABLE, f"cannot read metrics at {url}/metrics")
        return parse(self.texts[url])

    def gateways(self, urls: list[str] | None = None) -> Gateways:
        urls = urls or list(self.texts)
        return Gateways(urls, fetch=self.fetch, fetch_monitor=self.monitors.__getitem__)


def test_replicas_sum_and_their_gauges_merge() -> None:
    replicas = Replicas(a=text(100, 2, 60, 10, 0.9), b=text(50, 0, 50, 30, 0.5))
    snap = replicas.gateways().scrape()
    assert snap.requests[("e", "stable", "m", "1", "ok")] == 150
    assert snap.requests[("e", "stable", "m", "1", "model_failed")] == 2
    assert snap.latency[("e", "stable", "m", "1")] == {0.01: 110, float("inf"): 150}
    assert snap.labels[("m", "1")] == 40
    assert snap.accuracy[("m", "1")] == pytest.approx((9 + 15) / 40)  # weighted by labels


def test_a_restarted_or_departed_replica_does_not_look_like_a_reset_of_all() -> None:
    replicas = Replicas(a=text(100, fast=100), b=text(50, fast=50))
    gateways = replicas.gateways()
    before = gateways.scrape()
    replicas.texts["http://a:8002"] = text(5, fast=5)  # a restarted and answered 5 since
    replicas.texts["http://b:8002"] = text(60, fast=60)
    after = gateways.scrape()
    w = window(before, after, "e")
    assert w.variant("stable").requests == 15
    assert w.variant("stable").buckets[float("inf")] == 15
    # b leaves (scaled down): its counts stay, only a's growth is new
    gateways.urls = ("http://a:8002",)
    replicas.texts["http://a:8002"] = text(8, fast=8)
    later = gateways.scrape()
    assert window(after, later, "e").variant("stable").requests == 3


def test_one_unreadable_replica_means_no_verdict() -> None:
    replicas = Replicas(a=text(1))
    gateways = replicas.gateways(["http://a:8002", "http://b:8002"])
    with pytest.raises(LockgateError, match="http://b:8002"):
        gateways.scrape()


def test_a_name_stands_for_every_address_it_resolves_to() -> None:
    gateways = Gateways(["dns+http://localhost:8002", "http://10.0.0.9:8002"])
    addresses = gateways.addresses()
    assert "http://127.0.0.1:8002" in addresses and addresses[-1] == "http://10.0.0.9:8002"
    with pytest.raises(LockgateError, match="cannot resolve"):
        Gateways(["dns+http://no-such-host.invalid:8002"]).addresses()


REFERENCE = np.random.default_rng(0).normal(size=(2000, 2))
PROFILE = build_profile(REFERENCE)
EDGES = [PROFILE.edges[f, : PROFILE.n_edges[f]] for f in range(PROFILE.n_features)]


def reading(rows: np.ndarray) -> monitor.Snapshot:
    """A replica's monitor snapshot after it has seen `rows` (windows of 200 rows)."""
    drift = monitor.DriftSnapshot(
        names=("f0", "f1"),
        alert=np.zeros(2, dtype=bool),
        scores=np.full((2, 5), np.nan),
        windows=0,
        share=math.nan,
        dataset_alert=False,
        counts=reference_histogram(rows, EDGES),
        profile=PROFILE,
        window_rows=200,
        window_seconds=math.inf,
    )
    return monitor.Snapshot(versions={("m", "1"): monitor.VersionSnapshot(drift={"input": drift})})


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_drift_is_judged_on_the_sum_of_the_replicas(shift: float) -> None:
    """150 new rows per replica: no replica alone fills a 200-row window, their sum does; a
    one-sigma shift alerts, the same traffic unshifted does not."""
    rng = np.random.default_rng(1)
    replicas = Replicas(a=text(1), b=text(1))
    seen = {url: rng.normal(size=(100, 2)) for url in replicas.texts}
    replicas.monitors = {url: reading(rows) for url, rows in seen.items()}
    gateways = replicas.gateways()
    assert not gateways.scrape().drift_alert("m", "1")  # the first read is the baseline
    for url in replicas.texts:
        seen[url] = np.vstack([seen[url], rng.normal(loc=shift, size=(150, 2))])
        replicas.monitors[url] = reading(seen[url])
    assert gateways.scrape().drift_alert("m", "1") is (shift > 0)
