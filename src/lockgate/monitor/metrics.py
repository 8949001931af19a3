"""Prometheus metrics, read from the gateway's own counters and the monitor's arrays at scrape
time by one custom collector: the request path makes no prometheus-client call.

Latency histograms use power-of-two bucket bounds, which are exact boundaries of the latency
sketch, so `histogram_quantile` in Grafana and the sketch quantiles agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from lockgate.monitor.drain import Monitor, VersionMonitor
from lockgate.monitor.drift import SCORE_NAMES
from lockgate.monitor.sketch import LatencySketch

LATENCY_BOUNDS = [2.0**k for k in range(-14, 6)]  # 61 us .. 32 s (past the 30 s default deadline)
QUANTILES = (0.5, 0.9, 0.99, 0.999)
ROUTE = ["endpoint", "variant", "model", "version"]
VERSION = ["model", "version"]


def _histogram(family: HistogramMetricFamily, labels: list[str], sketch: LatencySketch) -> None:
    counts = sketch.cumulative_buckets(LATENCY_BOUNDS)
    buckets = [(repr(b), c) for b, c in zip(LATENCY_BOUNDS, counts, strict=True)]
    buckets.append(("+Inf", sketch.count))
    family.add_metric(labels, buckets, sketch.sum)


class GatewayCollector(Collector):
    """Everything one gateway process knows, as Prometheus metric families."""

    def __init__(self, pipeline: Any, monitor: Monitor | None) -> None:
        self.pipeline = pipeline
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._serving()
        if self.monitor is not None:
            with self.monitor.lock:
                versions = list(self.monitor.versions.values())
                yield from self._latency(versions)
                yield from self._drift(versions)
                yield from self._feedback(versions)

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "lockgate_requests",
            "Inference requests by endpoint, variant, version, protocol and outcome",
            labels=[*ROUTE, "protocol", "outcome"],
        )
        for labels, count in list(self.pipeline.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests

    def _serving(self) -> Iterator[Metric]:
        p = self.pipeline
        revision = GaugeMetricFamily("lockgate_state_revision", "Applied state revision")
        revision.add_metric([], p.routes.revision)
        yield revision
        weight = GaugeMetricFamily(
            "lockgate_traffic_weight", "Traffic share of each variant in percent", labels=ROUTE
        )
        for route in p.routes.endpoints.values():
            for v in route.variants:
                weight.add_metric([route.name, v.name, v.model, v.version], v.weight)
        yield weight
        loaded = GaugeMetricFamily(
            "lockgate_model_loaded", "1 when loaded, 0 when it failed", labels=VERSION
        )
        for key in p.models.loaded:
            loaded.add_metric(list(key), 1)
        for key in p.models.failed:
            loaded.add_metric(list(key), 0)
        yield loaded
        families = {
            name: CounterMetricFamily(f"lockgate_{name}", doc, labels=VERSION)
            for name, doc in (
                ("batches", "Model runs"),
                ("batch_rows", "Rows run (rows / batches = mean batch size)"),
                ("batch_requests", "Requests run (requests / batches = requests per batch)"),
                ("shed", "Requests refused because the version's queue was full"),
                ("expired", "Requests whose deadline passed while queued"),
                ("compute_seconds", "Time spent in the model"),
            )
        }
        depth = GaugeMetricFamily(
            "lockgate_queue_rows", "Rows queued for the model", labels=VERSION
        )
        for key, lv in list(p.models.loaded.items()):
            s, labels = lv.batcher.stats, list(key)
            families["batches"].add_metric(labels, s.batches)
            families["batch_rows"].add_metric(labels, s.rows)
            families["batch_requests"].add_metric(labels, s.requests)
            families["shed"].add_metric(labels, s.shed)
            families["expired"].add_metric(labels, s.expired)
            families["compute_seconds"].add_metric(labels, s.compute_ns / 1e9)
            depth.add_metric(labels, lv.batcher.queued_rows)
        yield from families.values()
        yield depth
        yield from self._shadows()

    def _shadows(self) -> Iterator[Metric]:
        labels = ["endpoint", "shadow"]
        fields = {
            "requests": "Shadow copies answered",
            "shed": "Shadow copies shed under pressure",
            "failed": "Shadow copies that failed",
            "rows": "Rows answered by shadows",
            "disagreeing_rows": "Shadow rows whose outputs differ from the primary's",
        }
        families = {
            f: CounterMetricFamily(f"lockgate_shadow_{f}", doc, labels=labels)
            for f, doc in fields.items()
        }
        for (endpoint, shadow), stats in list(self.pipeline.shadows.stats.items()):
            for f, family in families.items():
                family.add_metric([endpoint, shadow], getattr(stats, f))
        yield from families.values()

    def _latency(self, versions: list[VersionMonitor]) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "lockgate_request_latency_seconds",
            "Server time from decoded request to answer",
            labels=ROUTE,
        )
        quantiles = GaugeMetricFamily(
            "lockgate_request_latency_quantile_seconds",
            "Latency quantiles from the mergeable sketch (0.54% relative accuracy)",
            labels=[*ROUTE, "quantile"],
        )
        queue = HistogramMetricFamily(
            "lockgate_queue_seconds", "Time waiting for the model", labels=VERSION
        )
        written = CounterMetricFamily(
            "lockgate_predlog_rows", "Predictions the drain took from the rings", labels=VERSION
        )
        dropped = CounterMetricFamily(
            "lockgate_predlog_dropped",
            "Predictions dropped because the drain fell a whole ring behind",
            labels=VERSION,
        )
        for vm in versions:
            routes = vm.recorder.ring.routes
            for code, sketch in vm.latency.items():
                endpoint, variant = routes[code]
                labels = [endpoint, variant, *vm.key]
                _histogram(latency, labels, sketch)
                if sketch.count:
                    for q, value in zip(QUANTILES, sketch.quantiles(QUANTILES), strict=True):
                        quantiles.add_metric([*labels, str(q)], float(value))
            _histogram(queue, list(vm.key), vm.queue)
            written.add_metric(list(vm.key), vm.rows)
            dropped.add_metric(list(vm.key), vm.dropped)
        yield from (latency, quantiles, queue, written, dropped)

    def _drift(self, versions: list[VersionMonitor]) -> Iterator[Metric]:
        side = [*VERSION, "side"]
        score = GaugeMetricFamily(
            "lockgate_drift_score",
            "Last closed window's drift score per feature (psi, js, ks, wasserstein, nan_share)",
            labels=[*side, "feature", "statistic"],
        )
        alert = GaugeMetricFamily(
            "lockgate_drift_alert",
            "1 while a feature's drift alert is on (bands, noise floors and hysteresis applied)",
            labels=[*side, "feature"],
        )
        dataset = GaugeMetricFamily(
            "lockgate_drift_dataset_alert", "1 while dataset-level drift is on", labels=side
        )
        share = GaugeMetricFamily(
            "lockgate_drift_share",
            "Share of features alerting in the last window at the per-feature level (the dataset "
            "alert uses Bonferroni-corrected floors, so a share >= 0.5 is not a dataset alert)",
            labels=side,
        )
        windows = CounterMetricFamily("lockgate_drift_windows", "Scored drift windows", labels=side)
        for vm in versions:
            for name, drift in (("input", vm.input_drift), ("output", vm.output_drift)):
                if drift is None:
                    continue
                labels = [*vm.key, name]
                st = drift.state
                for f, feature in enumerate(drift.profile.names):
                    alert.add_metric([*labels, feature], float(st.feature_alert[f]))
                    if st.windows:
                        for i, statistic in enumerate(SCORE_NAMES):
                            v = float(st.last_scores[f, i])
                            if v == v:  # NaN: not scored (too few finite values)
                                score.add_metric([*labels, feature, statistic], v)
                dataset.add_metric(labels, float(st.dataset_alert))
                if st.windows:
                    share.add_metric(labels, st.share)
                windows.add_metric(labels, st.windows)
        yield from (score, alert, dataset, share, windows)

    def _feedback(self, versions: list[VersionMonitor]) -> Iterator[Metric]:
        labelled = CounterMetricFamily(
            "lockgate_feedback_labels", "Labels joined to a prediction", labels=VERSION
        )
        accuracy = GaugeMetricFamily(
            "lockgate_online_accuracy", "Share of labels equal to the prediction", labels=VERSION
        )
        error = GaugeMetricFamily(
            "lockgate_online_abs_error",
            "Mean absolute error of predictions vs labels",
            labels=VERSION,
        )
        for vm in versions:
            a, labels = vm.accuracy, list(vm.key)
            labelled.add_metric(labels, a.labelled)
            if a.labelled:
                accuracy.add_metric(labels, a.correct / a.labelled)
                error.add_metric(labels, a.abs_error_sum / a.labelled)
        unknown = CounterMetricFamily(
            "lockgate_feedback_unknown", "Labels whose request id matched no recent prediction"
        )
        assert self.monitor is not None
        unknown.add_metric([], self.monitor.feedback_unknown)
        yield from (labelled, accuracy, error, unknown)


def metrics_registry(pipeline: Any, monitor: Monitor | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(pipeline, monitor))
    return registry
