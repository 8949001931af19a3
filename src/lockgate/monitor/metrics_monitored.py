"""The metric families of what the monitor measured, per version: latency (classic buckets
and, for the protobuf format, the whole sketch as a native histogram), drift, joint drift and
feedback. The collector in :mod:`lockgate.monitor.metrics` yields them when monitoring is on.

Latency histograms use power-of-two bucket bounds, which are exact boundaries of the latency
sketch, so `histogram_quantile` in Grafana and the sketch quantiles agree.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import BucketSpan, NativeHistogram

from lockgate.monitor.drift import SCORE_NAMES
from lockgate.monitor.kernels.divergence import UNSEEN_SHARE
from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import LABEL_DELAY_BOUNDS, Snapshot, VersionSnapshot

LATENCY_BOUNDS = [2.0**k for k in range(-14, 6)]  # 61 us .. 32 s (past the 30 s default deadline)
QUANTILES = (0.5, 0.9, 0.99, 0.999)
Key = tuple[str, str]
ROUTE = ["endpoint", "variant", "model", "version"]
VERSION = ["model", "version"]


def _histogram(
    family: HistogramMetricFamily, labels: dict[str, str], sketch: LatencySketch, native: bool
) -> None:
    """Classic buckets at LATENCY_BOUNDS and, if `native`, the whole sketch as a native
    histogram (a sample of the family's own name, which only the protobuf format writes)."""
    counts = sketch.cumulative_buckets(LATENCY_BOUNDS)
    buckets = [(repr(b), c) for b, c in zip(LATENCY_BOUNDS, counts, strict=True)]
    buckets.append(("+Inf", sketch.count))
    family.add_metric(list(labels.values()), buckets, sketch.sum)
    if native:
        h = sketch.native_histogram()
        value = NativeHistogram(
            count_value=h.count,
            sum_value=h.sum,
            schema=h.schema,
            zero_threshold=h.zero_threshold,
            zero_count=h.zero_count,
            pos_spans=[BucketSpan(offset, length) for offset, length in h.spans],
            pos_deltas=list(h.deltas),
        )
        family.add_sample(family.name, labels, h.count, native_histogram=value)


def _summary(family: Metric, labels: dict[str, str], sketch: LatencySketch) -> None:
    name = family.name
    for q, value in zip(QUANTILES, sketch.quantiles(QUANTILES), strict=True):
        family.add_sample(name, {**labels, "quantile": str(q)}, float(value))
    family.add_sample(name + "_sum", labels, sketch.sum)
    family.add_sample(name + "_count", labels, sketch.count)


def latency_families(
    versions: list[tuple[Key, VersionSnapshot]],
    queues: bool,
    shadows: Collection[tuple[str, str]],
    native: bool,
) -> Iterator[Metric]:
    """Served traffic's latency, and shadow copies' in their own family: no panel, alert or
    rollout step can mix them."""
    latency = HistogramMetricFamily(
        "lockgate_request_latency_seconds",
        "Time of answered requests (shadow copies excluded) from the entry of the infer "
        "handler (HTTP or gRPC, before the body is read) to the end of the model run that "
        "answered them; the response's encoding and sending are not included",
        labels=ROUTE,
        unit="seconds",
    )
    shadow_latency = HistogramMetricFamily(
        "lockgate_shadow_latency_seconds",
        "Time of answered shadow copies from the entry of the primary request's infer "
        "handler to the end of the shadow's model run",
        labels=ROUTE,
        unit="seconds",
    )
    quantiles = Metric(
        "lockgate_request_latency_quantile_seconds",
        "Quantiles of lockgate_request_latency_seconds since the gateway started, from the "
        "mergeable sketch (0.54% relative accuracy)",
        "summary",
        unit="seconds",
    )
    queue = HistogramMetricFamily(
        "lockgate_queue_seconds",
        "Time from a request's arrival at its version's batcher to the start of the model "
        "run that takes it",
        labels=VERSION,
        unit="seconds",
    )
    written = CounterMetricFamily(
        "lockgate_predlog_rows", "Predictions the drain took from the rings", labels=VERSION
    )
    dropped = CounterMetricFamily(
        "lockgate_predlog_dropped",
        "Predictions dropped because the drain fell a whole ring behind",
        labels=VERSION,
    )
    unfollowed = GaugeMetricFamily(
        "lockgate_monitor_unfollowed_tensors",
        "Inputs and outputs the monitor does not follow (no fixed values per row; see the "
        "warning at load)",
        labels=VERSION,
    )
    mismatched = CounterMetricFamily(
        "lockgate_monitor_mismatched_rows",
        "Rows recorded as NaN because a tensor had a size the run at load did not show",
        labels=VERSION,
    )
    for key, vs in versions:
        unfollowed.add_metric(list(key), vs.unfollowed)
        mismatched.add_metric(list(key), vs.mismatched)
        for (endpoint, variant), sketch in sorted(vs.latency.items()):
            labels = dict(zip(ROUTE, (endpoint, variant, *key), strict=True))
            if (endpoint, variant) in shadows:
                _histogram(shadow_latency, labels, sketch, native)
                continue
            _histogram(latency, labels, sketch, native)
            if sketch.count:
                _summary(quantiles, labels, sketch)
        if queues:
            _histogram(queue, dict(zip(VERSION, key, strict=True)), vs.queue, native)
        written.add_metric(list(key), vs.rows)
        dropped.add_metric(list(key), vs.dropped)
    yield from (
        latency,
        shadow_latency,
        quantiles,
        queue,
        written,
        dropped,
        unfollowed,
        mismatched,
    )


def drift_families(versions: list[tuple[Key, VersionSnapshot]], scores: bool) -> Iterator[Metric]:
    side_labels = [*VERSION, "side"]
    score = GaugeMetricFamily(
        "lockgate_drift_score",
        "Last closed window's drift score per feature (psi, js, ks, wasserstein, nan_share, "
        "chi2, tvd, unseen_share; ks and wasserstein continuous only, tvd categorical only)",
        labels=[*side_labels, "feature", "statistic"],
    )
    alert = GaugeMetricFamily(
        "lockgate_drift_alert",
        "1 while a feature's drift alert is on (bands, noise floors and hysteresis applied)",
        labels=[*side_labels, "feature"],
    )
    dataset = GaugeMetricFamily(
        "lockgate_drift_dataset_alert", "1 while dataset-level drift is on", labels=side_labels
    )
    share = GaugeMetricFamily(
        "lockgate_drift_share",
        "Share of features alerting in the last window at the per-feature level (the dataset "
        "alert uses Bonferroni-corrected floors, so a share >= 0.5 is not a dataset alert)",
        labels=side_labels,
    )
    windows = CounterMetricFamily(
        "lockgate_drift_windows", "Scored drift windows", labels=side_labels
    )
    unseen = GaugeMetricFamily(
        "lockgate_drift_unseen_share",
        "Share of a categorical feature's values in the last window that are no category of "
        "the reference data (a new category, or a non-integer code)",
        labels=[*side_labels, "feature"],
    )
    for key, vs in versions:
        for side in ("input", "output"):
            drift = vs.drift.get(side)
            if drift is None:
                continue
            labels = [*key, side]
            for f, feature in enumerate(drift.names):
                alert.add_metric([*labels, feature], float(drift.alert[f]))
                for i, statistic in enumerate(SCORE_NAMES if scores else ()):
                    v = float(drift.scores[f, i])
                    if v == v:  # NaN: not scored (too few finite values)
                        score.add_metric([*labels, feature, statistic], v)
                share_f = float(drift.scores[f, UNSEEN_SHARE])
                categorical = drift.categorical is not None and drift.categorical[f]
                if categorical and share_f == share_f:
                    unseen.add_metric([*labels, feature], share_f)
            dataset.add_metric(labels, float(drift.dataset_alert))
            if drift.windows:
                share.add_metric(labels, drift.share)
            windows.add_metric(labels, drift.windows)
    yield from (score, alert, dataset, share, windows, unseen)


def joint_families(versions: list[tuple[Key, VersionSnapshot]]) -> Iterator[Metric]:
    score = GaugeMetricFamily(
        "lockgate_joint_drift_score",
        "Last closed window's joint drift of the continuous inputs: squared distance "
        "between the window's and the reference's random-Fourier-feature mean embeddings "
        "(biased MMD^2 estimate)",
        labels=VERSION,
    )
    threshold = GaugeMetricFamily(
        "lockgate_joint_drift_threshold",
        "The joint drift score that window had to exceed to alarm (it shrinks with the "
        "window's rows: 0.2 % false alarms per window under no drift)",
        labels=VERSION,
    )
    alarm = GaugeMetricFamily(
        "lockgate_joint_drift_alarm",
        "1 while joint drift is on (score above threshold, hysteresis applied)",
        labels=VERSION,
    )
    windows = CounterMetricFamily(
        "lockgate_joint_drift_windows", "Scored joint drift windows", labels=VERSION
    )
    for key, vs in versions:
        joint = vs.joint
        if joint is None:
            continue
        labels = list(key)
        if joint.score == joint.score:  # NaN before the first window
            score.add_metric(labels, joint.score)
            threshold.add_metric(labels, joint.threshold)
        alarm.add_metric(labels, float(joint.alarm))
        windows.add_metric(labels, joint.windows)
    yield from (score, threshold, alarm, windows)


def feedback_families(
    snap: Snapshot, versions: list[tuple[Key, VersionSnapshot]]
) -> Iterator[Metric]:
    labelled = CounterMetricFamily(
        "lockgate_feedback_labels", "Labels joined to a prediction", labels=VERSION
    )
    correct = CounterMetricFamily(
        "lockgate_feedback_correct",
        "Joined labels equal to the prediction (with lockgate_feedback_labels_total: "
        "accuracy over any window)",
        labels=VERSION,
    )
    delay = HistogramMetricFamily(
        "lockgate_label_delay_seconds",
        "Wall-clock time from the end of a prediction's model run to its label's arrival at "
        "the gateway, for labels joined to a recent prediction",
        labels=VERSION,
        unit="seconds",
    )
    accuracy = GaugeMetricFamily(
        "lockgate_online_accuracy", "Share of labels equal to the prediction", labels=VERSION
    )
    error = GaugeMetricFamily(
        "lockgate_online_abs_error",
        "Mean absolute error of predictions vs labels",
        labels=VERSION,
    )
    for key, vs in versions:
        labels = list(key)
        labelled.add_metric(labels, vs.labelled)
        correct.add_metric(labels, vs.correct)
        cumulative = np.cumsum(vs.label_delay)
        buckets = [
            (repr(b), int(c)) for b, c in zip(LABEL_DELAY_BOUNDS, cumulative[:-1], strict=True)
        ]
        buckets.append(("+Inf", int(cumulative[-1])))
        delay.add_metric(labels, buckets, vs.label_delay_sum)
        if vs.labelled:
            accuracy.add_metric(labels, vs.correct / vs.labelled)
            error.add_metric(labels, vs.abs_error_sum / vs.labelled)
    unknown = CounterMetricFamily(
        "lockgate_feedback_unknown", "Labels whose request id matched no recent prediction"
    )
    unknown.add_metric([], snap.feedback_unknown)
    yield from (labelled, correct, accuracy, error, delay, unknown)
