"""Prometheus metrics, read from the gateway's own counters and the monitor's arrays at scrape
time by one custom collector: the request path makes no prometheus-client call. The collector
renders a :class:`Snapshot`, so one process's figures and the merged figures of several worker
processes come out the same way. The families of what the monitor measured (latency, drift,
feedback) are built in :mod:`lockgate.monitor.metrics_monitored`; the serving families here.
"""

from __future__ import annotations

import platform
from collections.abc import Collection, Iterator
from importlib import metadata

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lockgate.monitor.formats import TEXT, Format
from lockgate.monitor.metrics_monitored import (
    ROUTE,
    VERSION,
    drift_families,
    feedback_families,
    joint_families,
    latency_families,
)
from lockgate.monitor.snapshot import Snapshot

BUILD_PACKAGES = ("onnxruntime", "numpy", "numba")


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
            yield from latency_families(versions, queues, snap.shadows.keys(), self.native)
            yield from drift_families(versions, self.wants("lockgate_drift_score"))
            yield from joint_families(versions)
            yield from feedback_families(snap, versions)

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
        monitor_restarts = CounterMetricFamily(
            "lockgate_monitor_process_restarts",
            "Monitor processes (--monitor-process) started again after one died or stopped "
            "answering",
        )
        monitor_restarts.add_metric([], snap.monitor_restarts)
        yield monitor_restarts
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


def render_metrics(
    snap: Snapshot, names: Collection[str] | None = None, fmt: Format = TEXT
) -> bytes:
    """`snap` in an exposition format (the Prometheus text format unless told otherwise; only
    samples named in `names`, if given)."""
    return fmt.encode(GatewayCollector(snap, names, fmt.native_histograms).collect())
