"""Several gateway replicas read as one gateway, for the retrain worker's verdicts.

`Gateways.scrape()` reads every replica and returns one `gateway_metrics.Snapshot`:
- counters (requests, latency histogram buckets, shadow counts, labels) are summed. A replica's
  counters are carried across its resets (a restart starts them at 0) and a replica that leaves
  keeps counting with its last figures, as Prometheus' `rate` does, so the sum never goes back and
  a window between two scrapes is never mistaken for a reset of everything;
- drift is judged on the replicas' summed drift histograms (`GET /v1/monitor/snapshot`): each
  scrape's growth of the sum is folded into a drift monitor per version and side, with the
  version's reference profile and window settings and the gateways' own alert rule, so windows
  hold the traffic of all replicas, not each replica's share;
- the sketch p99 gauge is the largest of the replicas' and the weights are the first replica's
  (all apply the same state).

One replica that cannot be read fails the whole scrape: a step is never judged on part of its
traffic. With a single gateway its own figures are returned as they are.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import numpy as np

from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor import snapshot as monitor_snapshot
from lockgate.monitor.drift import DriftConfig, DriftMonitor
from lockgate.retrain.gateway_metrics import Snapshot, Version, scrape

DNS_SCHEME = "dns+"  # dns+http://name:port: one gateway per address the name resolves to
K = TypeVar("K", bound=Hashable)
Counters = dict[tuple[Any, ...], float]
Fetch = Callable[[str], Snapshot]
FetchMonitor = Callable[[str], monitor_snapshot.Snapshot]


class Carried(Generic[K]):
    """Per gateway, readings that only grow (numbers or count arrays): a reading below the last
    one (the gateway restarted) or gone (it left, or stopped serving a version) carries the
    last one on into the totals."""

    def __init__(self) -> None:
        self._last: dict[str, dict[K, Any]] = {}
        self._carried: dict[str, dict[K, Any]] = {}

    def update(self, gateway: str, now: dict[K, Any]) -> None:
        last = self._last.get(gateway, {})
        carried = self._carried.setdefault(gateway, {})
        for key, old in last.items():
            if key not in now or np.any(np.asarray(now[key]) < np.asarray(old)):
                carried[key] = carried.get(key, 0) + old
        self._last[gateway] = now

    def totals(self) -> dict[K, Any]:
        out: dict[K, Any] = {}
        for gateway, last in self._last.items():
            for readings in (last, self._carried[gateway]):
                for key, value in readings.items():
                    out[key] = out.get(key, 0) + value
        return out


def _counters(snap: Snapshot) -> Counters:
    """Every counter of a scrape, flat; online accuracy as a count of correct labels."""
    out: Counters = {("requests", *k): v for k, v in snap.requests.items()}
    for route, buckets in snap.latency.items():
        out.update({("latency", *route, bound): c for bound, c in buckets.items()})
    for key, fields in snap.shadows.items():
        out.update({("shadow", *key, name): v for name, v in fields.items()})
    for version, n in snap.labels.items():
        out[("labels", *version)] = n
        out[("correct", *version)] = snap.accuracy.get(version, 0.0) * n
    return out


def _snapshot(at: float, totals: Counters, parts: list[Snapshot]) -> Snapshot:
    """Summed counters back into a Snapshot, with the gauges of the live parts."""
    snap = Snapshot(at=at)
    correct: dict[Version, float] = {}
    for key, value in totals.items():
        kind, rest = key[0], key[1:]
        if kind == "requests":
            snap.requests[rest] = value
        elif kind == "latency":
            snap.latency.setdefault(rest[:4], {})[rest[4]] = value
        elif kind == "shadow":
            snap.shadows.setdefault(rest[:2], {})[rest[2]] = value
        elif kind == "labels":
            snap.labels[rest] = value
        else:
            correct[rest] = value
    snap.accuracy = {v: correct.get(v, 0.0) / n for v, n in snap.labels.items() if n > 0}
    for part in parts:
        for route, p99 in part.p99.items():
            snap.p99[route] = max(p99, snap.p99.get(route, p99))
    if parts:
        snap.weights = dict(parts[0].weights)
    return snap


class FleetDrift:
    """Drift windows over the summed drift histograms of every replica."""

    def __init__(self) -> None:
        self._counts: Carried[tuple[str, str, str]] = Carried()
        self._seen: dict[tuple[str, str, str], Any] = {}
        self._monitors: dict[tuple[str, str, str], DriftMonitor] = {}

    def alerts(self, snapshots: dict[str, monitor_snapshot.Snapshot]) -> dict[Version, bool]:
        """Fold this read's growth in; True for a version while any feature or its dataset
        alerts on either side. A version is judged from its first read on."""
        sides: dict[tuple[str, str, str], monitor_snapshot.DriftSnapshot] = {}
        for gateway, snap in snapshots.items():
            now = {}
            for (model, version), figures in snap.versions.items():
                for side, reading in figures.drift.items():
                    now[(model, version, side)] = reading.counts
                    sides[(model, version, side)] = reading
            self._counts.update(gateway, now)
        alerts: dict[Version, bool] = {}
        for key, total in self._counts.totals().items():
            drift = sides.get(key)
            if drift is None or drift.profile is None:
                continue  # served nowhere now, or without a profile
            monitor = self._monitors.get(key)
            if monitor is None:
                rows = max(1, drift.window_rows)
                config = DriftConfig(
                    window_rows=rows,
                    window_seconds=drift.window_seconds or float("inf"),
                    min_rows=min(DriftConfig.min_rows, rows),
                )
                self._monitors[key] = monitor = DriftMonitor(drift.profile, config)
            else:
                monitor.merge_window(total - self._seen[key])
                monitor.tick()
            self._seen[key] = total
            state = monitor.state
            on = bool(state.feature_alert.any()) or state.dataset_alert
            alerts[key[0], key[1]] = alerts.get((key[0], key[1]), False) or on
        return alerts


def read_monitor(url: str, token: str | None, timeout: float = 10.0) -> monitor_snapshot.Snapshot:
    """A gateway's monitor snapshot (`GET /v1/monitor/snapshot`, admin token)."""
    target = url.rstrip("/") + "/v1/monitor/snapshot"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(target, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return monitor_snapshot.Snapshot.from_bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LockgateError(
            ErrorKind.UNAVAILABLE, f"cannot read the monitor snapshot at {target}: {reason}"
        ) from None


class Gateways:
    """The gateways whose traffic the retrain worker judges: one admin URL, a list of replicas,
    or `dns+http://name:port` for every address a name resolves to (a Kubernetes headless
    Service)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: str | None = None,
        fetch: Fetch | None = None,
        fetch_monitor: FetchMonitor | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one gateway URL is needed")
        self.urls = tuple(urls)
        self.fetch = fetch or scrape
        self.fetch_monitor = fetch_monitor or (lambda url: read_monitor(url, token))
        self._counters: Carried[tuple[Any, ...]] = Carried()
        self._drift = FleetDrift()
        self._several = False

    def addresses(self) -> list[str]:
        """The gateways' admin URLs now (names behind `dns+` resolved)."""
        found: list[str] = []
        for url in self.urls:
            if not url.startswith(DNS_SCHEME):
                found.append(url)
                continue
            parts = urlsplit(url.removeprefix(DNS_SCHEME))
            try:
                infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise LockgateError(
                    ErrorKind.UNAVAILABLE, f"cannot resolve {parts.hostname}: {exc}"
                ) from None
            for address in sorted({str(info[4][0]) for info in infos}):
                host = f"[{address}]" if ":" in address else address
                found.append(f"{parts.scheme}://{host}:{parts.port}{parts.path}")
        return found

    def scrape(self) -> Snapshot:
        """Every gateway's figures as one gateway's (see the module doc)."""
        addresses = self.addresses()
        if len(addresses) == 1 and not self._several:
            return self.fetch(addresses[0])  # one gateway: its own figures, as they are
        self._several = True
        parts = [self.fetch(address) for address in addresses]
        monitors = {address: self.fetch_monitor(address) for address in addresses}
        for address, part in zip(addresses, parts, strict=True):
            self._counters.update(address, _counters(part))
        snap = _snapshot(max(p.at for p in parts), self._counters.totals(), parts)
        snap.alerts = self._drift.alerts(monitors)
        return snap
