"""What prometheus-client itself writes for a list of metric families (the expectation our
exposition formats are compared with), and a gateway snapshot with a figure of every kind."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.registry import Collector, CollectorRegistry

from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import DriftSnapshot, Snapshot, VersionSnapshot


class Fixed(Collector):
    """A collector that yields the given families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:  # type: ignore[override]
        return self.families


def reference(
    families: list[Metric], generate: Callable[[CollectorRegistry], bytes] = generate_text
) -> bytes:
    """`families` as prometheus-client writes them: the Prometheus text format by default, or
    OpenMetrics with `generate` = `prometheus_client.openmetrics.exposition.generate_latest`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(families))
    return bytes(generate(registry))


def gateway_snapshot() -> Snapshot:
    """Requests, weights, batches, shadows, a latency sketch and a drift window of one version."""
    rng = np.random.default_rng(1)
    latency = LatencySketch()
    latency.add(rng.exponential(0.002, size=1000))
    key = ("classifier", "2")
    drift = DriftSnapshot(
        names=("input[0]", "input[1]"),
        alert=np.array([True, False]),
        scores=np.where(rng.random((2, 8)) < 0.2, np.nan, rng.random((2, 8))),
        windows=4,
        share=0.5,
        dataset_alert=True,
        counts=rng.integers(0, 50, size=(2, 7)),
    )
    return Snapshot(
        revision=3,
        requests=Counter(
            {("e", "canary", *key, "http", "ok"): 10, ("e", "", "", "", "grpc", "x"): 1}
        ),
        weights={("e", "canary", *key): 5.0},
        loaded={key},
        batch={key: Counter(batches=4, rows=9, compute_ns=12345)},
        queued_rows=Counter({key: 2}),
        shadows={("e", "challenger"): Counter(requests=5, disagreeing_rows=1)},
        monitored=True,
        versions={
            key: VersionSnapshot(
                latency={("e", "canary"): latency}, rows=9, drift={"input": drift}, labelled=3
            )
        },
    )
