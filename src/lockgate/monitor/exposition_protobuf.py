"""Metric families in the Prometheus protobuf exposition format: length-delimited
`io.prometheus.client.MetricFamily` messages, the only format in which Prometheus reads native
histograms.

A family's samples (prometheus-client's `Metric`) are grouped into one `Metric` message per label
set, in the order they first appear: a histogram's `_bucket`/`_count`/`_sum` samples and its
native-histogram sample (a `Sample` carrying `native_histogram`) fill one `Histogram` message,
so Prometheus can keep the classic buckets, the native histogram, or both.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.samples import NativeHistogram, Sample

from lockgate._proto import prometheus_metrics_pb2 as pb

_TYPES = {
    "counter": pb.COUNTER,
    "gauge": pb.GAUGE,
    "info": pb.GAUGE,
    "summary": pb.SUMMARY,
    "histogram": pb.HISTOGRAM,
    "unknown": pb.UNTYPED,
}
# Protobuf families are named as their series are (the Go client's convention).
_SUFFIXES = {"counter": "_total", "info": "_info"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _series(metric: Metric, drop: str) -> dict[tuple[tuple[str, str], ...], list[Sample]]:
    """Samples grouped by their labels without `drop` (``le`` or ``quantile``)."""
    groups: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in metric.samples:
        if sample.timestamp is not None:
            raise ValueError(f"{sample.name}: timestamps are not supported")
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != drop))
        groups.setdefault(key, []).append(sample)
    return groups


def _labels(message: pb.Metric, key: tuple[tuple[str, str], ...]) -> None:
    for name, value in key:
        message.label.add(name=name, value=value)


def _native(histogram: pb.Histogram, native: NativeHistogram) -> None:
    if native.neg_spans or native.neg_deltas:
        raise ValueError("negative native-histogram buckets are not supported")
    histogram.schema = native.schema
    histogram.zero_threshold = native.zero_threshold
    histogram.zero_count = int(native.zero_count)
    histogram.sample_count = int(native.count_value)
    histogram.sample_sum = native.sum_value
    for offset, length in native.pos_spans or ():
        histogram.positive_span.add(offset=offset, length=length)
    histogram.positive_delta.extend(native.pos_deltas or ())


def _histogram(message: pb.Metric, name: str, samples: list[Sample]) -> None:
    histogram = message.histogram
    for sample in samples:
        if sample.native_histogram is not None:
            _native(histogram, sample.native_histogram)
        elif sample.name == name + "_bucket":
            bound = float(sample.labels["le"])
            if bound != float("inf"):  # Prometheus adds +Inf from the count
                histogram.bucket.add(cumulative_count=int(sample.value), upper_bound=bound)
        elif sample.name == name + "_count":
            histogram.sample_count = int(sample.value)
        elif sample.name == name + "_sum":
            histogram.sample_sum = sample.value
        # _created, _gcount, _gsum: never written by lockgate's collectors


def _summary(message: pb.Metric, name: str, samples: list[Sample]) -> None:
    summary = message.summary
    for sample in samples:
        if sample.name == name:
            quantile = float(sample.labels["quantile"])
            summary.quantile.add(quantile=quantile, value=sample.value)
        elif sample.name == name + "_count":
            summary.sample_count = int(sample.value)
        elif sample.name == name + "_sum":
            summary.sample_sum = sample.value


def _family(metric: Metric) -> pb.MetricFamily:
    kind = _TYPES.get(metric.type)
    if kind is None:
        raise ValueError(f"{metric.name}: {metric.type} has no protobuf form here")
    name = metric.name + _SUFFIXES.get(metric.type, "")
    family = pb.MetricFamily(name=name, help=metric.documentation, type=kind, unit=metric.unit)
    drop = {"histogram": "le", "summary": "quantile"}.get(metric.type, "")
    for key, samples in _series(metric, drop).items():
        message = family.metric.add()
        _labels(message, key)
        if metric.type == "histogram":
            _histogram(message, metric.name, samples)
        elif metric.type == "summary":
            _summary(message, metric.name, samples)
        else:
            values = [s.value for s in samples if s.name == name]
            value = values[0] if values else 0.0
            if metric.type == "counter":
                message.counter.value = value
            elif metric.type == "unknown":
                message.untyped.value = value
            else:
                message.gauge.value = value
    return family


def encode_protobuf(metrics: Iterable[Metric]) -> bytes:
    """The families as length-delimited `MetricFamily` messages (families without samples are
    left out: Prometheus has nothing to read in them)."""
    out: list[bytes] = []
    for metric in metrics:
        if not metric.samples:
            continue
        data = _family(metric).SerializeToString()
        out += (_varint(len(data)), data)
    return b"".join(out)
