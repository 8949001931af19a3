"""What the rollout controller knows about live traffic: the gateway's `/metrics`, scraped twice
and differenced, so each verdict rests on the step's own window rather than on lifetime totals.

Counters are differenced with Prometheus' reset rule (a counter that went down restarted from 0:
a version unloaded and loaded again). Latency p99 comes from the histogram's bucket deltas,
interpolated inside the bucket like `histogram_quantile`; the sketch's lifetime p99 gauge is used
only when a variant has no histogram.

The gateway counts a failed request per endpoint only (variant label empty), because most
failures happen before or without a variant. Those are reported as `unattributed_errors` and the
controller decides whom to charge them to. Only server-side failures (5xx, timeouts, shedding)
count as a variant's errors; a client's malformed request (4xx) is not held against it.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lockgate.errors import SERVER_SIDE_OUTCOMES, ErrorKind, LockgateError
from lockgate.monitor.snapshot import SHADOW_FIELDS

Route = tuple[str, str, str, str]  # endpoint, variant, model, version
Version = tuple[str, str]  # model, version
Buckets = dict[float, float]  # upper bound (inf for +Inf) -> cumulative count


@dataclass(slots=True)
class Snapshot:
    """One scrape, indexed for differencing."""

    at: float = 0.0  # time.monotonic() of the scrape
    requests: dict[tuple[str, str, str, str, str], float] = field(default_factory=dict)
    latency: dict[Route, Buckets] = field(default_factory=dict)
    p99: dict[Route, float] = field(default_factory=dict)
    alerts: dict[Version, bool] = field(default_factory=dict)
    shadows: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    labels: dict[Version, float] = field(default_factory=dict)
    accuracy: dict[Version, float] = field(default_factory=dict)
    weights: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)

    def drift_alert(self, model: str, version: str) -> bool:
        """True while any feature (input or output) of the version, or the dataset, alerts."""
        return self.alerts.get((model, str(version)), False)

    def endpoint_weights(self, endpoint: str) -> dict[str, float]:
        """{variant: weight} this gateway serves for the endpoint."""
        return {v: w for (e, v), (_, _, w) in self.weights.items() if e == endpoint}


def parse(text: str, at: float | None = None) -> Snapshot:
    """A Snapshot from Prometheus text exposition."""
    snap = Snapshot(at=time.monotonic() if at is None else at)
    requests: defaultdict[tuple[str, str, str, str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            name = s.name
            if name == "lockgate_requests_total":
                key = (labels["endpoint"], labels["variant"], labels["model"], labels["version"])
                requests[(*key, labels["outcome"])] += s.value
            elif name == "lockgate_request_latency_seconds_bucket":
                route = (labels["endpoint"], labels["variant"], labels["model"], labels["version"])
                snap.latency.setdefault(route, {})[float(labels["le"])] = s.value
            elif name == "lockgate_request_latency_quantile_seconds":
                if labels["quantile"] == "0.99":
                    route = (
                        labels["endpoint"], labels["variant"], labels["model"], labels["version"]
                    )  # fmt: skip
                    snap.p99[route] = s.value
            elif name in ("lockgate_drift_alert", "lockgate_drift_dataset_alert"):
                key2 = (labels["model"], labels["version"])
                snap.alerts[key2] = snap.alerts.get(key2, False) or s.value >= 1
            elif name.startswith("lockgate_shadow_") and name.endswith("_total"):
                fieldname = name.removeprefix("lockgate_shadow_").removesuffix("_total")
                shadow = (labels["endpoint"], labels["shadow"])
                snap.shadows.setdefault(shadow, {})[fieldname] = s.value
            elif name == "lockgate_feedback_labels_total":
                snap.labels[(labels["model"], labels["version"])] = s.value
            elif name == "lockgate_online_accuracy":
                snap.accuracy[(labels["model"], labels["version"])] = s.value
            elif name == "lockgate_traffic_weight":
                where = (labels["endpoint"], labels["variant"])
                snap.weights[where] = (labels["model"], labels["version"], s.value)
    snap.requests = dict(requests)
    return snap


# The samples `parse` reads. A scrape asks for these alone (`name[]`): the gateway then renders a
# third of its families, on the event loop that serves the traffic being judged.
SAMPLES = (
    "lockgate_requests_total",
    "lockgate_request_latency_seconds_bucket",
    "lockgate_request_latency_quantile_seconds",
    "lockgate_drift_alert",
    "lockgate_drift_dataset_alert",
    *(f"lockgate_shadow_{name}_total" for name in SHADOW_FIELDS),
    "lockgate_feedback_labels_total",
    "lockgate_online_accuracy",
    "lockgate_traffic_weight",
)


def metrics_url(url: str) -> str:
    """The /metrics URL, given it or the admin listener's base URL."""
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else url + "/metrics"


def scrape(url: str, timeout: float = 10.0) -> Snapshot:
    """Fetch and parse the gateway's metrics (no token needed); UNAVAILABLE when unreachable."""
    target = metrics_url(url)
    query = urllib.parse.urlencode([("name[]", name) for name in SAMPLES])
    try:
        with urllib.request.urlopen(f"{target}?{query}", timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LockgateError(
            ErrorKind.UNAVAILABLE, f"cannot read metrics at {target}: {reason}"
        ) from None
    return parse(text)


def _delta(after: float, before: float | None) -> float:
    """A counter's increase; a counter below its old value was reset (counts from 0)."""
    if before is None or after < before:
        return after
    return after - before


def quantile(q: float, buckets: Buckets) -> float | None:
    """`histogram_quantile` on cumulative buckets: linear inside the bucket holding the rank;
    the highest finite bound when the rank lies in +Inf. None without observations."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, buckets[bounds[-1]] if bounds else 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True, slots=True)
class VariantWindow:
    """One side of the comparison over a window: one variant, or several merged."""

    requests: float  # answered, plus failures carrying this variant's label
    errors: float
    buckets: Buckets
    p99_gauge: float | None = None  # the sketch's lifetime p99, when there are no buckets

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def p99(self) -> float | None:
        value = quantile(0.99, self.buckets) if self.buckets else None
        return value if value is not None else self.p99_gauge

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_seconds": self.p99,
        }


def _merge(parts: Iterable[VariantWindow]) -> VariantWindow:
    requests = errors = 0.0
    buckets: defaultdict[float, float] = defaultdict(float)
    gauges: list[float] = []
    for part in parts:
        requests += part.requests
        errors += part.errors
        for bound, count in part.buckets.items():
            buckets[bound] += count
        if part.p99_gauge is not None:
            gauges.append(part.p99_gauge)
    return VariantWindow(requests, errors, dict(buckets), max(gauges) if gauges else None)


@dataclass(frozen=True, slots=True)
class EndpointWindow:
    """Per-variant traffic of one endpoint between two scrapes."""

    endpoint: str
    seconds: float
    variants: dict[str, VariantWindow]
    unattributed_errors: dict[str, float]  # outcome -> failures without a variant label

    def variant(self, name: str) -> VariantWindow:
        return self.variants.get(name, VariantWindow(0.0, 0.0, {}))

    def others(self, name: str) -> VariantWindow:
        """Every variant but `name`, merged (the stable side of a canary)."""
        return _merge(w for v, w in self.variants.items() if v != name)


def window(before: Snapshot, after: Snapshot, endpoint: str) -> EndpointWindow:
    """Traffic of `endpoint` between two snapshots of the same gateway."""
    ok: defaultdict[str, float] = defaultdict(float)
    errors: defaultdict[str, float] = defaultdict(float)
    unattributed: defaultdict[str, float] = defaultdict(float)
    for key, value in after.requests.items():
        e, variant, _, _, outcome = key
        if e != endpoint:
            continue
        delta = _delta(value, before.requests.get(key))
        if not variant:
            if outcome != "ok" and delta:
                unattributed[outcome] += delta
        elif outcome == "ok":
            ok[variant] += delta
        elif outcome in SERVER_SIDE_OUTCOMES:
            errors[variant] += delta
        # a client's mistake (4xx) says nothing of the variant: neither a request nor an error
    latency: dict[str, list[VariantWindow]] = defaultdict(list)
    for route, buckets in after.latency.items():
        if route[0] != endpoint:
            continue
        old = before.latency.get(route, {})
        # A reset shows in +Inf first; then every bucket starts again from zero.
        reset = buckets.get(math.inf, 0.0) < old.get(math.inf, 0.0)
        deltas = {b: _delta(c, None if reset else old.get(b)) for b, c in buckets.items()}
        latency[route[1]].append(VariantWindow(0, 0, deltas, after.p99.get(route)))
    for route, value in after.p99.items():
        if route[0] == endpoint and route not in after.latency:
            latency[route[1]].append(VariantWindow(0, 0, {}, value))
    variants = {}
    for name in ok.keys() | errors.keys() | latency.keys():
        merged = _merge(latency.get(name, []))
        variants[name] = VariantWindow(
            ok[name] + errors[name], errors[name], merged.buckets, merged.p99_gauge
        )
    return EndpointWindow(endpoint, after.at - before.at, variants, dict(unattributed))


@dataclass(frozen=True, slots=True)
class ShadowWindow:
    """A shadow's answers between two scrapes."""

    requests: float
    failed: float
    shed: float
    rows: float
    disagreeing_rows: float

    @property
    def disagreement(self) -> float | None:
        return self.disagreeing_rows / self.rows if self.rows > 0 else None

    @property
    def failure_rate(self) -> float | None:
        attempted = self.requests + self.failed
        return self.failed / attempted if attempted > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "shed": self.shed,
            "rows": self.rows,
            "disagreeing_rows": self.disagreeing_rows,
            "disagreement": self.disagreement,
            "failure_rate": self.failure_rate,
        }


def shadow_window(before: Snapshot, after: Snapshot, endpoint: str, shadow: str) -> ShadowWindow:
    new = after.shadows.get((endpoint, shadow), {})
    old = before.shadows.get((endpoint, shadow), {})
    names = ("requests", "failed", "shed", "rows", "disagreeing_rows")
    values = [_delta(new.get(n, 0.0), old.get(n)) for n in names]
    return ShadowWindow(*values)


def accuracy_window(
    before: Snapshot, after: Snapshot, model: str, version: str
) -> tuple[float, float | None]:
    """(labels, online accuracy) of a version over the window. The gauge is the lifetime
    share correct, so lifetime correct = accuracy x labels, and correct counts difference."""
    key = (model, str(version))
    n_after, n_before = after.labels.get(key, 0.0), before.labels.get(key)
    labels = _delta(n_after, n_before)
    if labels <= 0:
        return 0.0, None
    correct_after = after.accuracy.get(key, 0.0) * n_after
    reset = n_before is None or n_after < n_before
    correct_before = 0.0 if reset else before.accuracy.get(key, 0.0) * (n_before or 0.0)
    share = (correct_after - correct_before) / labels
    return labels, min(1.0, max(0.0, share))
