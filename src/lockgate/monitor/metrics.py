"""Prometheus metrics, read from the gateway's own counters and the monitor's arrays at scrape
time by one custom collector: the request path makes no prometheus-client call. The collector
renders a :class:`Snapshot`, so one process's figures and the merged figures of several worker
processes come out the same way.

Latency histograms use power-of-two bucket bounds, which are exact boundaries of the latency
sketch, so `histogram_quantile` in Grafana and the sketch quantiles agree. In the protobuf format
the same families also carry each sketch whole, as a native histogram (schema 6).
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Collection, Iterator
from importlib import metadata

import numpy as np
from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import BucketSpan, NativeHistogram

from lockgate.monitor.drain import Monitor
from lockgate.monitor.drift import SCORE_NAMES
from lockgate.monitor.formats import TEXT, Format
from lockgate.monitor.kernels.divergence import UNSEEN_SHARE
from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import (
    LABEL_DELAY_BOUNDS,
    DriftSnapshot,
    JointSnapshot,
    Snapshot,
    VersionSnapshot,
)

LATENCY_BOUNDS = [2.0**k for k in range(-14, 6)]  # 61 us .. 32 s (past the 30 s default deadline)
QUANTILES = (0.5, 0.9, 0.99, 0.999)
PROCESS_FIGURES = {
    "process_cpu_seconds_total": "cpu_seconds",
    "process_resident_memory_bytes": "resident_memory_bytes",
    "process_virtual_memory_bytes": "virtual_memory_bytes",
    "process_open_fds": "open_fds",
}
BUILD_PACKAGES = ("onnxruntime", "numpy", "numba")
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


def capture_process(snap: Snapshot) -> None:
    """This process's OS figures (read from /proc: call it off the event loop)."""
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            name = PROCESS_FIGURES.get(sample.name)
            if name is not None:
                snap.process[name] = sample.value


@functools.cache
def build_labels() -> list[str]:
    """lockgate's version and the versions it runs on, for `lockgate_build_info`."""
    versions = [lockgate_version()]
    for package in BUILD_PACKAGES:
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("")
    return [*versions, platform.python_version()]


def lockgate_version() -> str:
    try:
        return metadata.version("lockgate")
    except metadata.PackageNotFoundError:
        return "unknown"


def capture_monitor(snap: Snapshot, monitor: Monitor) -> None:
    """Add the monitor's figures to `snap`. Takes the monitor's lock, which the drain holds
    while it absorbs a batch of rows (milliseconds): call it off the event loop."""
    with monitor.lock:
        snap.feedback_unknown = monitor.feedback_unknown
        for key, vm in monitor.versions.items():
            routes = vm.recorder.ring.routes
            vs = snap.versions[key] = VersionSnapshot(
                latency={routes[code]: s.copy() for code, s in vm.latency.items()},
                queue=vm.queue.copy(),
                rows=vm.rows,
                dropped=vm.dropped,
                unfollowed=len(vm.recorder.unfollowed),
                mismatched=vm.recorder.ring.mismatched,
                labelled=vm.accuracy.labelled,
                correct=vm.accuracy.correct,
                abs_error_sum=vm.accuracy.abs_error_sum,
                label_delay=vm.accuracy.delay_counts.copy(),
                label_delay_sum=vm.accuracy.delay_sum,
            )
            for side, drift in (("input", vm.input_drift), ("output", vm.output_drift)):
                if drift is not None:
                    st = drift.state
                    vs.drift[side] = DriftSnapshot(
                        names=drift.profile.names,
                        alert=st.feature_alert,
                        scores=st.last_scores,  # NaN before the first window
                        windows=st.windows,
                        share=st.share,
                        dataset_alert=st.dataset_alert,
                        counts=drift.cumulative_counts,
                        profile=drift.profile,
                        window_rows=drift.config.window_rows,
                        window_seconds=drift.config.window_seconds,
                        categorical=drift.profile.categorical,
                    )
            if vm.joint_drift is not None:
                js = vm.joint_drift.state
                vs.joint = JointSnapshot(js.score, js.threshold, js.alarm, js.windows)


class GatewayCollector(Collector):
    """A snapshot (one process's, or the merge of several) as Prometheus metric families.

    `names`, when given, restricts the output to samples of those names, as prometheus-client's
    `restricted_registry` does for `/metrics?name[]=...` (the rollout controller reads a few
    families, twice a step); the two largest families are not even built when unasked.
    `native` adds each latency sketch as a native-histogram sample (for the protobuf format)."""

    def __init__(
        self, snap: Snapshot, names: Collection[str] | None = None, native: bool = False
    ) -> None:
        self.snap = snap
        self.names = None if names is None else frozenset(names)
        self.native = native

    def collect(self) -> Iterator[Metric]:
        if self.names is None:
            yield from self._families()
            return
        for metric in self._families():
            metric.samples = [s for s in metric.samples if s.name in self.names]
            if metric.samples:
                yield metric

    def _families(self) -> Iterator[Metric]:
        snap = self.snap
        yield from self._build_and_process(snap)
        yield from self._requests(snap)
        yield from self._serving(snap)
        yield from self._shadows(snap)
        if snap.monitored:
            versions = sorted(snap.versions.items())
            queues = self.wants("lockgate_queue_seconds")
            yield from self._latency(versions, queues, snap.shadows.keys(), self.native)
            yield from self._drift(versions, self.wants("lockgate_drift_score"))
            yield from self._joint(versions)
            yield from self._feedback(snap, versions)

    def wants(self, family: str) -> bool:
        """Whether any sample of `family` is asked for."""
        suffixes = ("", "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum")
        return self.names is None or any(family + s in self.names for s in suffixes)

    @staticmethod
    def _build_and_process(snap: Snapshot) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "lockgate_build_info",
            "Always 1: the lockgate version and the versions it runs on",
            labels=["version", *BUILD_PACKAGES, "python"],
        )
        build.add_metric(build_labels(), 1)
        yield build
        if not snap.process:
            return
        cpu = CounterMetricFamily(
            "process_cpu_seconds", "CPU seconds of the gateway processes (exited ones included)"
        )
        cpu.add_metric([], snap.process.get("cpu_seconds", 0.0))
        yield cpu
        for name, doc in (
            ("resident_memory_bytes", "Resident memory of the running gateway processes"),
            ("virtual_memory_bytes", "Virtual memory of the running gateway processes"),
            ("open_fds", "Open file descriptors of the running gateway processes"),
        ):
            family = GaugeMetricFamily(f"process_{name}", doc)
            family.add_metric([], snap.process.get(name, 0.0))
            yield family

    @staticmethod
    def _requests(snap: Snapshot) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "lockgate_requests",
            "Inference requests by endpoint, variant, version, protocol and outcome",
            labels=[*ROUTE, "protocol", "outcome"],
        )
        for labels, count in sorted(snap.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests
        if snap.clients:
            clients = CounterMetricFamily(
                "lockgate_client_requests",
                "Data-plane calls (infer, feedback, model reads) authenticated with an API key, "
                "by the key's name (only with --api-keys-file / LOCKGATE_API_KEYS)",
                labels=["client"],
            )
            for name, count in sorted(snap.clients.items()):
                clients.add_metric([name], count)
            yield clients

    @staticmethod
    def _serving(snap: Snapshot) -> Iterator[Metric]:
        processes = GaugeMetricFamily(
            "lockgate_worker_processes", "Gateway processes whose figures these metrics sum"
        )
        processes.add_metric([], snap.processes)
        yield processes
        restarts = CounterMetricFamily(
            "lockgate_worker_restarts", "Worker processes restarted after they died"
        )
        restarts.add_metric([], snap.restarts)
        yield restarts
        revision = GaugeMetricFamily(
            "lockgate_state_revision", "Applied state revision (the lowest of all workers)"
        )
        revision.add_metric([], snap.revision)
        yield revision
        weight = GaugeMetricFamily(
            "lockgate_traffic_weight", "Traffic share of each variant in percent", labels=ROUTE
        )
        for route, share in sorted(snap.weights.items()):
            weight.add_metric(list(route), share)
        yield weight
        fallback = GaugeMetricFamily(
            "lockgate_variant_fallback",
            "1 while a variant's version cannot load and the endpoint's other variants serve its "
            "share",
            labels=ROUTE,
        )
        for route in sorted(snap.fallback):
            fallback.add_metric(list(route), 1)
        yield fallback
        loaded = GaugeMetricFamily(
            "lockgate_model_loaded", "1 when loaded, 0 when it failed", labels=VERSION
        )
        for key in sorted(snap.loaded):
            loaded.add_metric(list(key), 1)
        for key in sorted(snap.failed):
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
                (
                    "compute_seconds",
                    "Wall time of model runs, summed over batches (from the start of a batch's "
                    "run, thread hand-off included, to its outputs)",
                ),
            )
        }
        depth = GaugeMetricFamily(
            "lockgate_queue_rows", "Rows queued for the model", labels=VERSION
        )
        for key, s in sorted(snap.batch.items()):
            labels = list(key)
            families["batches"].add_metric(labels, s["batches"])
            families["batch_rows"].add_metric(labels, s["rows"])
            families["batch_requests"].add_metric(labels, s["requests"])
            families["shed"].add_metric(labels, s["shed"])
            families["expired"].add_metric(labels, s["expired"])
            families["compute_seconds"].add_metric(labels, s["compute_ns"] / 1e9)
            depth.add_metric(labels, snap.queued_rows[key])
        yield from families.values()
        yield depth

    @staticmethod
    def _shadows(snap: Snapshot) -> Iterator[Metric]:
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
        for key, stats in sorted(snap.shadows.items()):
            for f, family in families.items():
                family.add_metric(list(key), stats[f])
        yield from families.values()

    @staticmethod
    def _latency(
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

    @staticmethod
    def _drift(versions: list[tuple[Key, VersionSnapshot]], scores: bool) -> Iterator[Metric]:
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

    @staticmethod
    def _joint(versions: list[tuple[Key, VersionSnapshot]]) -> Iterator[Metric]:
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

    @staticmethod
    def _feedback(snap: Snapshot, versions: list[tuple[Key, VersionSnapshot]]) -> Iterator[Metric]:
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


def render_metrics(
    snap: Snapshot, names: Collection[str] | None = None, fmt: Format = TEXT
) -> bytes:
    """`snap` in an exposition format (the Prometheus text format unless told otherwise; only
    samples named in `names`, if given)."""
    return fmt.encode(GatewayCollector(snap, names, fmt.native_histograms).collect())
