"""Everything `/metrics` reports, as plain data that merges across processes.

One gateway process captures a :class:`Snapshot` from its live objects at scrape time; with
`--workers N` the admin process asks every worker for one and merges them, and the retrain
worker does the same across replicas (`GET /v1/monitor/snapshot` on each admin listener).
Counters, latency sketches and drift histograms merge by addition, so the merged figures are
exact. The few point-in-time values merge by a stated rule: the applied state revision is the
lowest any process has; a drift alert is on when any process has it on, and a drift score is the
largest any process saw in its last window (each process scores windows of its own share of the
traffic; the cumulative histograms, summed, are exact for anyone who wants to re-score).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.drift import ReferenceProfile
from lockgate.monitor.sketch import LatencySketch

Key = tuple[str, str]
_NONE = np.zeros(0)
Route = tuple[str, str, str, str]  # endpoint, variant, model, version
BATCH_FIELDS = ("batches", "rows", "requests", "shed", "expired", "compute_ns")
SHADOW_FIELDS = ("requests", "shed", "failed", "rows", "disagreeing_rows")
WIRE_FORMAT = 2
# Label delay (prediction -> label) bucket bounds in seconds, 1 s .. 7 days; one more bucket
# counts the labels beyond the last bound. Fixed, so histograms of any processes add up.
LABEL_DELAY_BOUNDS: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
LABEL_DELAY_BOUNDS += (7200.0, 21600.0, 86400.0, 259200.0, 604800.0)
_DELAY_EDGES = np.array(LABEL_DELAY_BOUNDS)


def label_delay_counts(delays: NDArray[Any]) -> NDArray[np.int64]:
    """Per bucket counts of `delays` (seconds), in one pass over the array: a bucket holds the
    delays above the previous bound and at most its own (Prometheus' `le`)."""
    index = np.searchsorted(_DELAY_EDGES, np.asarray(delays, np.float64), side="left")
    return np.bincount(index, minlength=_DELAY_EDGES.size + 1).astype(np.int64)


@dataclass
class DriftSnapshot:
    """One side (inputs or outputs) of one version's drift monitor."""

    names: tuple[str, ...]
    alert: NDArray[np.bool_]  # [F] after hysteresis
    scores: NDArray[np.float64]  # [F, 5] of the last window, NaN where not scored
    windows: int
    share: float  # NaN before the first window
    dataset_alert: bool
    counts: NDArray[np.int64]  # [F, bins] every row seen since the version was attached
    # what windows of summed counts are scored against, by the same rule (retrain/fleet.py)
    profile: ReferenceProfile | None = None
    window_rows: int = 0
    window_seconds: float = 0.0
    categorical: NDArray[np.bool_] | None = None  # [F]; None: all continuous

    def merge(self, other: DriftSnapshot) -> None:
        if other.names != self.names or other.counts.shape != self.counts.shape:
            raise ValueError("drift snapshots of different profiles do not merge")
        self.alert = self.alert | other.alert
        self.scores = np.fmax(self.scores, other.scores)
        self.windows += other.windows
        self.share = float(np.fmax(self.share, other.share))
        self.dataset_alert = self.dataset_alert or other.dataset_alert
        self.counts = self.counts + other.counts


@dataclass
class JointSnapshot:
    """One version's joint-drift monitor (:mod:`lockgate.monitor.joint`). Merged, the alarm
    is on when any process has it on, and score and threshold are the pair of the process whose
    last window came closest to (or went furthest past) its threshold."""

    score: float  # last window's MMD^2; NaN before the first
    threshold: float  # for that window's rows; NaN before the first
    alarm: bool
    windows: int

    @property
    def ratio(self) -> float:
        ratio = self.score / self.threshold
        return ratio if ratio == ratio else -1.0  # NaN (no window yet) loses every comparison

    def merge(self, other: JointSnapshot) -> None:
        if other.ratio > self.ratio:
            self.score, self.threshold = other.score, other.threshold
        self.alarm = self.alarm or other.alarm
        self.windows += other.windows


@dataclass
class VersionSnapshot:
    """What the monitor knows about one loaded version."""

    latency: dict[tuple[str, str], LatencySketch] = field(default_factory=dict)  # by route
    queue: LatencySketch = field(default_factory=LatencySketch)
    rows: int = 0
    dropped: int = 0
    unfollowed: int = 0  # tensors the monitor leaves out (decided at load)
    mismatched: int = 0  # rows recorded as NaN for a tensor of an unexpected size
    labelled: int = 0
    correct: int = 0
    abs_error_sum: float = 0.0
    drift: dict[str, DriftSnapshot] = field(default_factory=dict)  # "input" / "output"
    # joined labels per delay bucket (LABEL_DELAY_BOUNDS, then beyond) and the delays' sum
    label_delay: NDArray[np.int64] = field(default_factory=lambda: label_delay_counts(_NONE))
    label_delay_sum: float = 0.0
    joint: JointSnapshot | None = None  # None: the version has no joint profile

    def sketches(self, key: Key) -> bytes:
        """The raw latency sketches as msgpack (`GET .../sketches`): merge by adding arrays."""
        doc = {
            "model": key[0],
            "version": key[1],
            "latency": {"/".join(route): s.to_bytes() for route, s in self.latency.items()},
            "queue": self.queue.to_bytes(),
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    def merge(self, other: VersionSnapshot) -> None:
        for route, sketch in other.latency.items():
            self.latency.setdefault(route, LatencySketch()).merge(sketch)
        self.queue.merge(other.queue)
        self.rows += other.rows
        self.dropped += other.dropped
        self.unfollowed = max(self.unfollowed, other.unfollowed)  # the same in every worker
        self.mismatched += other.mismatched
        self.labelled += other.labelled
        self.correct += other.correct
        self.abs_error_sum += other.abs_error_sum
        self.label_delay = self.label_delay + other.label_delay
        self.label_delay_sum += other.label_delay_sum
        for side, drift in other.drift.items():
            if side in self.drift:
                self.drift[side].merge(drift)
            else:
                self.drift[side] = dataclasses.replace(drift)
        if other.joint is not None:
            if self.joint is None:
                self.joint = dataclasses.replace(other.joint)
            else:
                self.joint.merge(other.joint)


@dataclass
class Snapshot:
    """A gateway's (or several gateways') serving and monitoring figures."""

    revision: int = 0
    requests: Counter[tuple[str, ...]] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)  # authenticated calls by API key name
    weights: dict[Route, float] = field(default_factory=dict)
    loaded: set[Key] = field(default_factory=set)
    failed: set[Key] = field(default_factory=set)
    # (endpoint, variant, model, version) whose version failed to load: others serve its share
    fallback: set[Route] = field(default_factory=set)
    batch: dict[Key, Counter[str]] = field(default_factory=dict)
    queued_rows: Counter[Key] = field(default_factory=Counter)
    shadows: dict[Key, Counter[str]] = field(default_factory=dict)  # by (endpoint, shadow)
    monitored: bool = False
    versions: dict[Key, VersionSnapshot] = field(default_factory=dict)
    feedback_unknown: int = 0
    # OS figures summed over the processes: cpu_seconds (kept for exited ones), resident and
    # virtual memory bytes, open file descriptors
    process: dict[str, float] = field(default_factory=dict)
    processes: int = 1  # running processes whose figures these are (0: counts of exited ones)
    restarts: int = 0  # worker processes restarted after a crash
    monitor_restarts: int = 0  # monitor processes started again after one died or hung

    def merge(self, other: Snapshot) -> None:
        """Add `other` into this snapshot (see the module doc for the non-additive values).
        Revision and weights come from running processes only."""
        if other.processes and (not self.processes or other.revision < self.revision):
            self.revision, self.weights = other.revision, dict(other.weights)
        self.requests.update(other.requests)
        self.clients.update(other.clients)
        self.failed |= other.failed
        self.fallback |= other.fallback
        self.loaded = (self.loaded | other.loaded) - self.failed
        for table, more in ((self.batch, other.batch), (self.shadows, other.shadows)):
            for key, counts in more.items():
                table.setdefault(key, Counter()).update(counts)
        self.queued_rows.update(other.queued_rows)
        self.monitored = self.monitored or other.monitored
        for key, vs in other.versions.items():
            self.versions.setdefault(key, VersionSnapshot()).merge(vs)
        self.feedback_unknown += other.feedback_unknown
        for name, value in other.process.items():
            self.process[name] = self.process.get(name, 0.0) + value
        self.processes += other.processes
        self.restarts += other.restarts
        self.monitor_restarts += other.monitor_restarts

    def counters(self) -> Snapshot:
        """The additive part only: what a process that has exited still contributes to the
        totals (its requests, sketches, drift histograms), without its point-in-time values."""
        out = merged([self])
        out.revision, out.weights, out.processes, out.restarts = 0, {}, 0, 0
        out.loaded, out.failed, out.fallback, out.queued_rows = set(), set(), set(), Counter()
        out.process = {k: v for k, v in self.process.items() if k == "cpu_seconds"}
        for vs in out.versions.values():
            for side, d in vs.drift.items():
                vs.drift[side] = dataclasses.replace(
                    d,
                    alert=np.zeros_like(d.alert),
                    scores=np.full_like(d.scores, np.nan),
                    share=float("nan"),
                    dataset_alert=False,
                )
            if vs.joint is not None:
                vs.joint = JointSnapshot(math.nan, math.nan, False, vs.joint.windows)
        return out

    # -- wire format (msgpack; arrays as raw little-endian bytes) --------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "format": WIRE_FORMAT,
            "revision": self.revision,
            "requests": [[*k, n] for k, n in self.requests.items()],
            "clients": dict(self.clients),
            "weights": [[*k, w] for k, w in self.weights.items()],
            "loaded": [list(k) for k in self.loaded],
            "failed": [list(k) for k in self.failed],
            "fallback": [list(k) for k in self.fallback],
            "batch": [[*k, dict(c)] for k, c in self.batch.items()],
            "queued_rows": [[*k, n] for k, n in self.queued_rows.items()],
            "shadows": [[*k, dict(c)] for k, c in self.shadows.items()],
            "monitored": self.monitored,
            "versions": [[*k, _version_doc(v)] for k, v in self.versions.items()],
            "feedback_unknown": self.feedback_unknown,
            "process": dict(self.process),
            "processes": self.processes,
            "restarts": self.restarts,
            "monitor_restarts": self.monitor_restarts,
        }
        return bytes(msgpack.packb(doc, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if doc.get("format") != WIRE_FORMAT:
            raise ValueError(f"unsupported snapshot format {doc.get('format')!r}")
        return cls(
            revision=int(doc["revision"]),
            requests=Counter({tuple(r[:-1]): int(r[-1]) for r in doc["requests"]}),
            clients=Counter({str(k): int(n) for k, n in doc.get("clients", {}).items()}),
            weights={(r[0], r[1], r[2], r[3]): float(r[4]) for r in doc["weights"]},
            loaded={(m, v) for m, v in doc["loaded"]},
            failed={(m, v) for m, v in doc["failed"]},
            fallback={(e, n, m, v) for e, n, m, v in doc["fallback"]},
            batch={(m, v): Counter(c) for m, v, c in doc["batch"]},
            queued_rows=Counter({(m, v): int(n) for m, v, n in doc["queued_rows"]}),
            shadows={(e, s): Counter(c) for e, s, c in doc["shadows"]},
            monitored=bool(doc["monitored"]),
            versions={(m, v): _version_from(d) for m, v, d in doc["versions"]},
            feedback_unknown=int(doc["feedback_unknown"]),
            process={k: float(v) for k, v in doc["process"].items()},
            processes=int(doc["processes"]),
            restarts=int(doc["restarts"]),
            monitor_restarts=int(doc.get("monitor_restarts", 0)),
        )


def merged(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The sum of `snapshots` (an empty snapshot of zero processes when there are none)."""
    total = Snapshot(processes=0)
    for snap in snapshots:
        total.merge(snap)
    return total


def _array(a: NDArray[Any]) -> list[Any]:
    return [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()]


def _from_array(doc: list[Any]) -> NDArray[Any]:
    dtype, shape, data = doc
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def _version_doc(v: VersionSnapshot) -> dict[str, Any]:
    return {
        "latency": [[e, r, _array(s.state)] for (e, r), s in v.latency.items()],
        "queue": _array(v.queue.state),
        "rows": v.rows,
        "dropped": v.dropped,
        "unfollowed": v.unfollowed,
        "mismatched": v.mismatched,
        "labelled": v.labelled,
        "correct": v.correct,
        "abs_error_sum": v.abs_error_sum,
        "label_delay": _array(v.label_delay),
        "label_delay_sum": v.label_delay_sum,
        "drift": {
            side: {
                "names": list(d.names),
                "alert": _array(d.alert),
                "scores": _array(d.scores),
                "windows": d.windows,
                "share": d.share,
                "dataset_alert": d.dataset_alert,
                "counts": _array(d.counts),
                "profile": None if d.profile is None else d.profile.to_npz_bytes(samples=False),
                "window": [d.window_rows, d.window_seconds],
                "categorical": None if d.categorical is None else _array(d.categorical),
            }
            for side, d in v.drift.items()
        },
        "joint": None
        if v.joint is None
        else [v.joint.score, v.joint.threshold, v.joint.alarm, v.joint.windows],
    }


def _version_from(doc: dict[str, Any]) -> VersionSnapshot:
    return VersionSnapshot(
        latency={(e, r): LatencySketch.from_state(_from_array(a)) for e, r, a in doc["latency"]},
        queue=LatencySketch.from_state(_from_array(doc["queue"])),
        rows=int(doc["rows"]),
        dropped=int(doc["dropped"]),
        unfollowed=int(doc.get("unfollowed", 0)),
        mismatched=int(doc.get("mismatched", 0)),
        labelled=int(doc["labelled"]),
        correct=int(doc["correct"]),
        abs_error_sum=float(doc["abs_error_sum"]),
        # optional: a snapshot from a process that predates label delays has none
        label_delay=_from_array(doc["label_delay"])
        if "label_delay" in doc
        else label_delay_counts(_NONE),
        label_delay_sum=float(doc.get("label_delay_sum", 0.0)),
        drift={
            side: DriftSnapshot(
                names=tuple(d["names"]),
                alert=_from_array(d["alert"]),
                scores=_from_array(d["scores"]),
                windows=int(d["windows"]),
                share=float(d["share"]),
                dataset_alert=bool(d["dataset_alert"]),
                counts=_from_array(d["counts"]),
                profile=None
                if d["profile"] is None
                else ReferenceProfile.from_npz_bytes(d["profile"]),
                window_rows=int(d["window"][0]),
                window_seconds=float(d["window"][1]),
                categorical=None if d.get("categorical") is None else _from_array(d["categorical"]),
            )
            for side, d in doc["drift"].items()
        },
        joint=_joint_from(doc.get("joint")),  # absent from processes that predate it
    )


def _joint_from(doc: list[Any] | None) -> JointSnapshot | None:
    if doc is None:
        return None
    score, threshold, alarm, windows = doc
    return JointSnapshot(float(score), float(threshold), bool(alarm), int(windows))
