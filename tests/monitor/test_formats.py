"""The exposition formats: OpenMetrics exactly as prometheus-client writes it, protobuf with the
latency sketches as native histograms whose buckets are those of the Prometheus schema, and the
choice among the formats by the scraper's Accept header."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from google.protobuf.internal.decoder import _DecodeVarint
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_parser

from lockgate._proto import prometheus_metrics_pb2 as pb
from lockgate.monitor.exposition import encode_openmetrics
from lockgate.monitor.formats import OPENMETRICS, PROTOBUF, TEXT, negotiate
from lockgate.monitor.metrics import GatewayCollector, render_metrics
from lockgate.monitor.sketch import LatencySketch
from tests.monitor.exposition_reference import gateway_snapshot, reference

# What Prometheus 2.42 sends: by default, and with --enable-feature=native-histograms.
PROMETHEUS_DEFAULT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_NATIVE = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
    "application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_openmetrics_renders_as_prometheus_client_does() -> None:
    counter = CounterMetricFamily("c", 'help with \\ and "quotes"\nand a newline', labels=["a"])
    counter.add_metric(['back\\slash "quoted"\nnewline'], 3)
    counter.add_metric(["plain"], 2.5, created=1700000000.5)
    gauge = GaugeMetricFamily("g_bytes", "gauge", labels=["z", "a"], unit="bytes")
    for value in (0.0, -1.5, float("inf"), float("-inf"), float("nan"), 1e-9, 12345678901234.0):
        gauge.add_metric(["v", repr(value)], value)
    histogram = HistogramMetricFamily("h_seconds", "histogram", labels=["route"], unit="seconds")
    histogram.add_metric(["a"], [("0.5", 1), ("1.0", 3), ("+Inf", 4)], 2.75)
    summary = SummaryMetricFamily("s", "summary", count_value=3, sum_value=1.5)
    info = InfoMetricFamily("i", "info", value={"build": "x"})
    families: list[Metric] = [counter, gauge, histogram, summary, info]
    assert encode_openmetrics(families) == reference(families, generate_openmetrics)


def test_a_gateway_snapshot_in_openmetrics_is_prometheus_clients_and_parses() -> None:
    snap = gateway_snapshot()
    text = render_metrics(snap, fmt=OPENMETRICS)
    assert text == reference(list(GatewayCollector(snap).collect()), generate_openmetrics)
    parsed = {f.name: f for f in text_string_to_metric_families(text.decode())}  # strict parser
    assert parsed["lockgate_request_latency_seconds"].unit == "seconds"
    assert parsed["lockgate_requests"].type == "counter"
    assert text.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, TEXT),
        ("", TEXT),
        ("*/*", TEXT),
        ("text/plain", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("application/json", TEXT),  # nothing we serve: the default, not a 406
        (PROMETHEUS_DEFAULT, OPENMETRICS),
        (PROMETHEUS_NATIVE, PROTOBUF),
        ("application/openmetrics-text", OPENMETRICS),
        ("text/plain;q=0.9, application/openmetrics-text;version=1.0.0;q=0.5", TEXT),
        ("application/openmetrics-text;version=2.0.0, text/plain;q=0.1", TEXT),
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily", TEXT),
        (
            "application/vnd.google.protobuf;encoding=delimited;"
            "proto=io.prometheus.client.MetricFamily;q=0.9, text/plain;q=0.8",
            PROTOBUF,
        ),
        ("application/openmetrics-text;q=0, text/plain;q=0.2", TEXT),
        ("application/openmetrics-text;q=nonsense, */*;q=0.1", TEXT),
        # Prometheus 3 (scrape_protocols: [PrometheusText1.0.0, ...]): UTF-8 names allowed
        ("text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,*/*;q=0.1", TEXT),
    ],
)
def test_negotiation(accept: str | None, expected: object) -> None:
    assert negotiate(accept) is expected


def _families(data: bytes) -> dict[str, pb.MetricFamily]:
    """Length-delimited MetricFamily messages, decoded."""
    out, pos = {}, 0
    while pos < len(data):
        size, pos = _DecodeVarint(data, pos)
        family = pb.MetricFamily.FromString(data[pos : pos + size])
        out[family.name] = family
        pos += size
    return out


def _labels(metric: pb.Metric) -> dict[str, str]:
    return {pair.name: pair.value for pair in metric.label}


def _native_buckets(h: pb.Histogram) -> Counter[int]:
    """Bucket index -> count, expanded from spans and deltas as Prometheus reads them."""
    counts: Counter[int] = Counter()
    index, count, deltas = 0, 0, iter(h.positive_delta)
    for n, span in enumerate(h.positive_span):
        index = span.offset if n == 0 else index + span.offset
        for _ in range(span.length):
            count += next(deltas)
            if count:
                counts[index] = count
            index += 1
    assert next(deltas, None) is None, "more deltas than buckets in spans"
    return counts


def test_protobuf_carries_each_sketch_as_a_native_histogram_of_schema_6() -> None:
    rng = np.random.default_rng(5)
    # latencies over five decades, plus zeros, a value below the zero threshold and two gaps
    values = np.concatenate(
        (10.0 ** rng.uniform(-5, 1, 3000), [0.0, 0.0, 2.0**-22], rng.uniform(40, 41, 5))
    )
    exponent = 64 * np.log2(values[values > 2.0**-20])
    assert np.all(np.abs(exponent - np.round(exponent)) > 1e-6)  # no value on a boundary
    sketch = LatencySketch()
    sketch.add(values)
    snap = gateway_snapshot()
    snap.versions[("classifier", "2")].latency[("e", "canary")] = sketch
    families = _families(render_metrics(snap, fmt=PROTOBUF))
    family = families["lockgate_request_latency_seconds"]
    assert family.type == pb.HISTOGRAM and family.unit == "seconds"
    (metric,) = family.metric
    assert _labels(metric) == {
        "endpoint": "e",
        "variant": "canary",
        "model": "classifier",
        "version": "2",
    }
    h = metric.histogram
    assert (h.schema, h.zero_threshold, h.zero_count) == (6, 2.0**-20, 3)
    assert h.sample_count == len(values) and math.isclose(h.sample_sum, values.sum(), rel_tol=1e-9)
    # Prometheus's bucket i of schema 6 is (2**((i-1)/64), 2**(i/64)]
    expected = Counter(int(i) for i in np.ceil(exponent))
    assert _native_buckets(h) == expected
    assert len(h.positive_span) > 1  # the gaps made more than one span
    # the classic buckets ride along: cumulative, +Inf left to the count
    bounds = [b.upper_bound for b in h.bucket]
    assert bounds == sorted(bounds) and bounds[-1] == 32.0 and bounds[0] == 2.0**-14
    le_1 = next(b.cumulative_count for b in h.bucket if b.upper_bound == 1.0)
    assert le_1 == int((values <= 1.0).sum())


def test_protobuf_families_are_named_and_typed_as_their_series() -> None:
    snap = gateway_snapshot()
    families = _families(render_metrics(snap, fmt=PROTOBUF))
    requests = families["lockgate_requests_total"]
    assert requests.type == pb.COUNTER
    assert sorted(m.counter.value for m in requests.metric) == [1.0, 10.0]
    assert families["lockgate_state_revision"].metric[0].gauge.value == 3
    summary = families["lockgate_request_latency_quantile_seconds"]
    (metric,) = summary.metric
    assert [q.quantile for q in metric.summary.quantile] == [0.5, 0.9, 0.99, 0.999]
    assert metric.summary.sample_count == 1000
    delay = families["lockgate_label_delay_seconds"].metric[0].histogram
    assert delay.schema == 0 and delay.zero_threshold == 0 and not delay.positive_span  # classic
    assert "lockgate_shadow_requests_total" in families
    # the same families as the text format, less those without samples
    parsed = text_parser(render_metrics(snap).decode())
    names = {f.name + ("_total" if f.type == "counter" else "") for f in parsed if f.samples}
    assert set(families) == names
