"""Our text exposition writes exactly what prometheus-client's `generate_latest` writes."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from lockgate.monitor.exposition import encode_text
from lockgate.monitor.metrics import GatewayCollector, render_metrics
from lockgate.monitor.snapshot import Snapshot
from lockgate.retrain.gateway_metrics import SAMPLES, parse
from tests.monitor.exposition_reference import gateway_snapshot, reference


def test_every_family_type_and_awkward_values_render_identically() -> None:
    counter = CounterMetricFamily("c", 'help with \\ and "quotes"\nand a newline', labels=["a"])
    counter.add_metric(['back\\slash "quoted"\nnewline'], 3)
    counter.add_metric(["plain"], 2.5, created=1700000000.5)
    gauge = GaugeMetricFamily("g", "gauge", labels=["z", "a"])  # label names out of order
    for value in (0.0, -1.5, float("inf"), float("-inf"), float("nan"), 1e-9, 12345678901234.0):
        gauge.add_metric(["v", repr(value)], value)
    bare = GaugeMetricFamily("bare", "no labels", value=7)
    histogram = HistogramMetricFamily("h", "histogram", labels=["route"])
    histogram.add_metric(["a"], [("0.5", 1), ("1.0", 3), ("+Inf", 4)], 2.75)
    summary = SummaryMetricFamily("s", "summary", count_value=3, sum_value=1.5)
    info = InfoMetricFamily("i", "info", value={"build": "x"})
    families: list[Metric] = [counter, gauge, bare, histogram, summary, info]
    assert encode_text(families) == reference(families)


@given(
    st.lists(
        st.tuples(st.text(max_size=12), st.text(max_size=12), st.floats(allow_nan=False)),
        max_size=20,
    )
)
def test_any_label_values_render_identically(samples: list[tuple[str, str, float]]) -> None:
    family = GaugeMetricFamily("lockgate_x", "x", labels=["endpoint", "variant"])
    for endpoint, variant, value in samples:
        family.add_metric([endpoint, variant], value)
    assert encode_text([family]) == reference([family])


def test_a_gateway_snapshot_renders_identically() -> None:
    snap = gateway_snapshot()
    expected = reference(list(GatewayCollector(snap).collect()))
    assert render_metrics(snap) == expected
    assert render_metrics(snap) == expected  # again, from the label cache


def _restricted(snap: Snapshot, names: set[str]) -> bytes:
    """prometheus-client's own `/metrics?name[]=...`: its registry, restricted."""
    registry = CollectorRegistry(auto_describe=True)  # it learns the names from collect()
    registry.register(GatewayCollector(snap))
    return generate_latest(registry.restricted_registry(names))


def test_names_restrict_the_output_as_prometheus_clients_registry_does() -> None:
    snap = gateway_snapshot()
    every = {s.name for m in GatewayCollector(snap).collect() for s in m.samples}
    assert len(every) > 30
    rng = np.random.default_rng(2)
    choices = [{name} for name in sorted(every)]  # each sample name alone: every family found
    choices += [set(rng.choice(sorted(every), size=8, replace=False)) for _ in range(10)]
    choices += [set(SAMPLES), {"lockgate_no_such_metric"}]
    for names in choices:
        got = render_metrics(snap, names)
        assert got == _restricted(snap, names), names
        assert bool(got) == bool(names & every)


def test_the_rollouts_scrape_parses_as_the_full_output_does() -> None:
    snap = gateway_snapshot()
    full = parse(render_metrics(snap).decode(), at=0.0)
    restricted = parse(render_metrics(snap, SAMPLES).decode(), at=0.0)
    assert restricted == full
    assert full.requests and full.latency and full.alerts and full.shadows and full.weights
    assert len(render_metrics(snap, SAMPLES)) < len(render_metrics(snap)) / 2
