"""The monitor's background drain: every `drain_interval` (sooner when a ring is half full) it
takes the filled columns of every ring (on the event loop, an O(1) swap), then, on its own
thread, feeds them to the latency sketches and drift windows and appends them to the prediction
log. The request path never waits for it. Each drain costs the event loop a few GIL hand-overs
whatever its rows, so drains are few and large (docs/design/monitor-tail-cost.md).

State read by `/metrics` and the admin API is guarded by one lock, taken once per drain and once
per scrape, never per request, and never on the event loop: the drain holds it for milliseconds
while it absorbs rows, and a loop waiting for it stalls every request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.config import MonitorConfig
from lockgate.errors import not_found
from lockgate.monitor.derived import CURRENT_DERIVATION
from lockgate.monitor.drift import DriftConfig, DriftMonitor
from lockgate.monitor.joint import JointMonitor
from lockgate.monitor.kernels.timing import first_rows_by_route
from lockgate.monitor.layout import RowLayout
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.monitor.profiles import Predict, VersionProfiles, stored_or_built
from lockgate.monitor.record import VersionRecorder
from lockgate.monitor.ring import Columns, RingSlice, concat_slices, id_key
from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import Snapshot, label_delay_counts
from lockgate.types import ModelSpec

log = logging.getLogger(__name__)
Key = tuple[str, str]
Array = np.ndarray[Any, Any]
RECENT_ROWS = 1000


@dataclass
class Accuracy:
    """Online quality from labels joined to predictions by request id, and how long labels
    take to arrive (prediction -> label, fixed buckets: see snapshot.LABEL_DELAY_BOUNDS)."""

    labelled: int = 0
    correct: int = 0  # exact matches (meaningful for class labels)
    abs_error_sum: float = 0.0
    delay_counts: Array = field(default_factory=lambda: label_delay_counts(np.zeros(0)))
    delay_sum: float = 0.0

    def add(self, predictions: Array, labels: Array, delays: Array) -> None:
        """Count a batch of joined labels (whole arrays: no per-label work here)."""
        self.labelled += int(labels.shape[0])
        self.correct += int(np.count_nonzero(predictions == labels))
        self.abs_error_sum += float(np.abs(predictions - labels).sum())
        delays = np.maximum(delays, 0.0)  # clocks of two hosts: never a negative delay
        self.delay_counts = self.delay_counts + label_delay_counts(delays)
        self.delay_sum += float(delays.sum())


@dataclass
class VersionMonitor:
    key: Key
    recorder: VersionRecorder
    latency: defaultdict[int, LatencySketch] = field(
        default_factory=lambda: defaultdict(LatencySketch)
    )  # by ring route code
    queue: LatencySketch = field(default_factory=LatencySketch)
    rows: int = 0
    dropped: int = 0
    accuracy: Accuracy = field(default_factory=Accuracy)
    input_drift: DriftMonitor | None = None
    output_drift: DriftMonitor | None = None
    joint_drift: JointMonitor | None = None  # of the continuous inputs together
    recent: RingSlice | None = None  # the newest drained rows, for the admin API

    @property
    def prediction_column(self) -> int | None:
        """The output feature that labels are compared with: `label` if the model has one."""
        names = self.recorder.output_features
        if not names:
            return None
        return names.index("label") if "label" in names else 0


class RecentPredictions:
    """Request id -> (prediction, time of the prediction) for the newest ~`capacity` requests,
    per version.

    The drain adds whole arrays (no per-id work); the `bytes -> int` dicts that labels are
    looked up in (the int locates the row in the arrays added) are built from them only when
    labels arrive, so serving without feedback pays nothing for the join. Two generations: when
    the young one is full it becomes the old one and the old one is dropped. Dicts of bytes and
    ints are not tracked by the garbage collector, so a large window costs no GC pauses."""

    def __init__(self, capacity: int) -> None:
        self.half = max(1, capacity // 2)
        self.young: dict[Key, _Predictions] = {}
        self.old: dict[Key, _Predictions] = {}
        self.size = 0

    def add(self, key: Key, ids: Array, predictions: Array, ts: Array) -> None:
        self.young.setdefault(key, _Predictions()).pending.append((ids, predictions, ts))
        self.size += len(ids)
        if self.size >= self.half:
            self.old, self.young, self.size = self.young, {}, 0

    def get(self, request_id: bytes) -> tuple[Key, float, float] | None:
        """(version, prediction, unix time of the prediction) of a recent request, or None."""
        for generation in (self.young, self.old):
            for key, predictions in generation.items():
                found = predictions.find(request_id)
                if found is not None:
                    return key, *found
        return None


_ROW_BITS = 32  # a table value is chunk << 32 | row


@dataclass
class _Predictions:
    pending: list[tuple[Array, Array, Array]] = field(default_factory=list)  # (ids, pred, ts)
    chunks: list[tuple[Array, Array]] = field(default_factory=list)  # (predictions, ts) indexed
    table: dict[bytes, int] = field(default_factory=dict)

    def find(self, request_id: bytes) -> tuple[float, float] | None:
        for ids, predictions, ts in self.pending:
            base = len(self.chunks) << _ROW_BITS
            self.chunks.append((predictions, ts))
            self.table.update(zip(ids.tolist(), range(base, base + len(ids)), strict=True))
        self.pending.clear()
        where = self.table.get(request_id)
        if where is None:
            return None
        predictions, ts = self.chunks[where >> _ROW_BITS]
        row = where & ((1 << _ROW_BITS) - 1)
        return float(predictions[row]), float(ts[row])


async def drain_every(
    interval: float, due: asyncio.Event, drain: Callable[[], Awaitable[None]]
) -> None:
    """Call `drain` every `interval` seconds, sooner when `due` is set (a ring is half full),
    until cancelled; a failed drain is logged and the next one comes as usual."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(due.wait(), interval)
        due.clear()
        try:
            await drain()
        except Exception:
            log.exception("monitor drain failed; continuing")


@dataclass
class FeedbackResult:
    matched: int
    unknown: int


class Monitor:
    def __init__(self, config: MonitorConfig, home: Path, writer: str = "") -> None:
        """`writer` names this process's log segments (replica, worker) in a shared home."""
        self.config = config
        self.home = home
        self.versions: dict[Key, VersionMonitor] = {}
        self.lock = threading.Lock()
        self.feedback_unknown = 0
        self._recent = RecentPredictions(config.feedback_window)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockgate-monitor")
        self._task: asyncio.Task[None] | None = None
        self._due = asyncio.Event()  # a ring is half full: drain before the interval is up
        self.predlog: PredictionLog | None = None
        self.feedback_log: FeedbackLog | None = None
        if config.predlog:
            segment, retention = config.segment_bytes, config.retention_bytes
            sizes: dict[str, Any] = {"segment_bytes": segment, "retention_bytes": retention}
            self.predlog = PredictionLog(home / "predlog", writer=writer, **sizes)
            self.feedback_log = FeedbackLog(home / "feedback", writer=writer, **sizes)
        self._last_flush = time.monotonic()

    # -- versions -------------------------------------------------------------------------------
    def attach(
        self,
        spec: ModelSpec,
        reference: Array | Mapping[str, Array] | None = None,
        predict: Predict | None = None,
        profiles: VersionProfiles | None = None,
        layout: RowLayout | None = None,
    ) -> VersionRecorder:
        """A ring for a version being loaded (the batcher's observer), and its drift monitors:
        from the `profiles` stored at registration, or else built from its `reference` data
        (inputs directly, outputs by running the model on it). `layout`: how its tensors map
        to rows, as a run at load showed (default: as declared). Blocking (called from the
        loading thread)."""
        key = (spec.name, spec.version)
        profiles = stored_or_built(spec, profiles, reference, predict, layout)
        derivation = profiles.derivation if profiles is not None else CURRENT_DERIVATION
        recorder = VersionRecorder(spec, self.config.ring_rows, layout, derivation)
        recorder.ring.on_half_full = self._due.set
        vm = VersionMonitor(key, recorder)
        try:
            if profiles is not None:
                vm.input_drift, vm.output_drift = self._drift_monitors(recorder, profiles)
                if profiles.joint is not None:
                    vm.joint_drift = JointMonitor(profiles.joint, vm.input_drift.config)
        except Exception as exc:  # a profile that does not fit must not stop the model serving
            log.warning("no drift profile for %s v%s: %s", spec.name, spec.version, exc)
        with self.lock:
            self.versions[key] = vm
        return recorder

    def _drift_monitors(
        self, recorder: VersionRecorder, profiles: VersionProfiles
    ) -> tuple[DriftMonitor, DriftMonitor | None]:
        config = DriftConfig(
            window_rows=self.config.drift_window_rows,
            window_seconds=self.config.drift_window_seconds,
        )
        for profile, names in (
            (profiles.inputs, recorder.input_features),
            (profiles.outputs, recorder.output_features),
        ):
            if profile is not None and list(profile.names) != names:
                raise ValueError(f"the profile's features {profile.names} are not {names}")
        outputs = None if profiles.outputs is None else DriftMonitor(profiles.outputs, config)
        return DriftMonitor(profiles.inputs, config), outputs

    def detach(self, key: Key) -> None:
        """Forget a released version (its last rows were drained with everyone else's)."""
        with self.lock:
            self.versions.pop(key, None)

    # -- the drain ------------------------------------------------------------------------------
    def start(self) -> None:
        run = drain_every(self.config.drain_interval, self._due, self.drain)
        self._task = asyncio.get_running_loop().create_task(run, name="monitor-drain")

    async def drain(self) -> None:
        """Take every ring's new rows now (on the loop) and process them on the drain thread."""
        taken = []
        for vm in list(self.versions.values()):
            columns, dropped = vm.recorder.ring.swap()
            taken.append((vm, columns, dropped))
        loop = asyncio.get_running_loop()
        processing = loop.run_in_executor(self._executor, self.absorb_taken, taken)
        processing.add_done_callback(lambda done: self._release(taken, done))
        # Shielded: rows already taken from the rings must be processed even when the caller
        # is cancelled (a shutdown mid-drain), or they would be lost unseen.
        await asyncio.shield(processing)

    @staticmethod
    def _release(
        taken: list[tuple[VersionMonitor, Columns, int]], processing: asyncio.Future[None]
    ) -> None:
        """Columns go back for reuse once read; after a failure they are left to the garbage
        collector instead (the reading may not have finished)."""
        if processing.cancelled() or processing.exception() is not None:
            return
        for vm, columns, _ in taken:
            vm.recorder.ring.release(columns)

    def absorb_taken(self, taken: list[tuple[VersionMonitor, Columns, int]]) -> None:
        """Assemble and absorb the sets a drain took (with the rows each ring dropped), then
        close drift windows by time and append to the prediction log. Blocking: the drain
        thread, or the monitor process, runs it."""
        pieces = []
        for vm, columns, dropped in taken:
            if not columns.rows and not dropped:
                continue
            try:
                pieces.append((vm, vm.recorder.ring.assemble(columns, dropped)))
            except Exception:  # never lose rows silently: count them as dropped
                lost = dropped + columns.rows
                with self.lock:
                    vm.dropped += lost
                log.exception("monitor: %d rows of %s v%s could not be assembled", lost, *vm.key)
        with self.lock:
            for vm, piece in pieces:
                self._absorb(vm, piece)
            for vm in self.versions.values():  # close drift windows by time when traffic stops
                for drift in (vm.input_drift, vm.output_drift, vm.joint_drift):
                    if drift is not None:
                        drift.tick()
        if self.predlog is not None:
            for vm, piece in pieces:
                if piece.rows:
                    self._log(self.predlog, vm, piece)
            if time.monotonic() - self._last_flush >= self.config.flush_interval:
                self.predlog.flush()
                if self.feedback_log is not None:
                    self.feedback_log.flush()
                self._last_flush = time.monotonic()

    @staticmethod
    def _log(predlog: PredictionLog, vm: VersionMonitor, piece: RingSlice) -> None:
        routes = vm.recorder.ring.routes
        endpoints = np.array([e.encode() for e, _ in routes], dtype=bytes)[piece.route]
        variants = np.array([v.encode() for _, v in routes], dtype=bytes)[piece.route]
        clients = np.array([c.encode() for c in vm.recorder.ring.clients], dtype=bytes)
        predlog.append_predictions(
            vm.key[0],
            vm.key[1],
            ts=piece.ts,
            request_id=piece.request_id,
            endpoint=endpoints,
            variant=variants,
            client=clients[piece.client],
            inputs=piece.inputs,
            outputs=piece.outputs,
            latency_s=piece.latency,
            queue_s=piece.queue,
        )

    def _absorb(self, vm: VersionMonitor, piece: RingSlice) -> None:
        vm.rows += piece.rows
        vm.dropped += piece.dropped
        if not piece.rows:
            return
        if piece.rows >= RECENT_ROWS or vm.recent is None:
            vm.recent = piece.tail(RECENT_ROWS)
        else:
            vm.recent = concat_slices(vm.recent.tail(RECENT_ROWS - piece.rows), piece)
        first = piece.first  # one latency per request, not per row
        grouped, offsets, queue = first_rows_by_route(
            piece.route, first, piece.latency, piece.queue
        )
        for code in range(offsets.shape[0] - 1):
            if offsets[code + 1] > offsets[code]:
                vm.latency[code].add(grouped[offsets[code] : offsets[code + 1]])
        vm.queue.add(queue)
        for drift, values in ((vm.input_drift, piece.inputs), (vm.output_drift, piece.outputs)):
            if drift is not None:
                drift.update(values, reports=False)
        if vm.joint_drift is not None:
            vm.joint_drift.update(piece.inputs)
        column = vm.prediction_column
        if column is not None:
            # A label is for its request's first row; when every row is one (single-row
            # requests, the usual case) no row needs picking, only the ring's column a copy.
            ids, predictions, ts = piece.request_id, piece.outputs[:, column], piece.ts
            if np.count_nonzero(first) == piece.rows:
                predictions = predictions.copy()
            else:
                ids, predictions, ts = ids[first], predictions[first], ts[first]
            self._recent.add(vm.key, ids, predictions, ts)

    # -- feedback -------------------------------------------------------------------------------
    async def submit_feedback(
        self, labels: list[tuple[str, float]], source: str = ""
    ) -> FeedbackResult:
        """Log labels with their `source` (the sender's API key name) and join them to recent
        predictions (drained first, so a label sent right after its prediction still finds it).
        The join runs on the drain's thread, which builds the id index when labels first need
        it."""
        await self.drain()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.feedback_and_log, labels, source)

    def feedback_and_log(self, labels: list[tuple[str, float]], source: str) -> FeedbackResult:
        """`feedback`, then the labels appended to the feedback log (blocking)."""
        result = self.feedback(labels)
        if self.feedback_log is not None and labels:
            ids = np.array([id_key(request_id) for request_id, _ in labels], dtype="S32")
            values = np.array([label for _, label in labels], dtype=np.float64)
            self.feedback_log.append_labels(time.time(), ids, values, source)
        return result

    def feedback(self, labels: list[tuple[str, float]], now: float | None = None) -> FeedbackResult:
        """Join labels to recent predictions by request id (unknown ids are counted). The
        lookups are one dict probe per label; the counting (accuracy, label delay from the
        prediction's time to `now`, the labels' arrival) is done on whole arrays per version."""
        arrived = time.time() if now is None else now
        matched = 0
        joined: defaultdict[Key, list[tuple[float, float, float]]] = defaultdict(list)
        with self.lock:
            for request_id, label in labels:
                found = self._recent.get(id_key(request_id))
                if found is None or found[0] not in self.versions:
                    continue
                joined[found[0]].append((found[1], label, found[2]))
            for key, rows in joined.items():
                table = np.array(rows, dtype=np.float64)  # [labels, (prediction, label, ts)]
                self.versions[key].accuracy.add(table[:, 0], table[:, 1], arrived - table[:, 2])
                matched += len(rows)
            self.feedback_unknown += len(labels) - matched
        return FeedbackResult(matched, len(labels) - matched)

    def capture(self, snap: Snapshot) -> None:
        """Add the monitor's figures to `snap` (takes the lock: call it off the event loop)."""
        from lockgate.monitor.capture import capture_monitor  # capture reads a Monitor

        capture_monitor(snap, self)

    # -- read views for the admin API -------------------------------------------------------------
    def _version(self, model: str, version: str) -> VersionMonitor:
        vm = self.versions.get((model, version))
        if vm is None:
            raise not_found(f"{model} v{version} is not loaded (nothing is monitored for it)")
        return vm

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.drift_report_now, model, version)

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.recent_rows_now, model, version, limit)

    def drift_report_now(self, model: str, version: str) -> dict[str, Any]:
        """`drift_report`, blocking (takes the lock)."""
        with self.lock:
            vm = self._version(model, version)
            report = {
                side: drift.report() if drift is not None else None
                for side, drift in (("inputs", vm.input_drift), ("outputs", vm.output_drift))
            }
            report["joint"] = vm.joint_drift.report() if vm.joint_drift is not None else None
            return report

    def recent_rows_now(self, model: str, version: str, limit: int) -> dict[str, Any]:
        """The newest drained predictions (up to RECENT_ROWS, at most one drain old)."""
        with self.lock:
            vm = self._version(model, version)
            piece = vm.recent.tail(limit) if vm.recent is not None else None
        routes = vm.recorder.ring.routes
        if piece is None:
            return {
                "input_features": vm.recorder.input_features,
                "output_features": vm.recorder.output_features,
                "rows": [],
            }
        return {
            "input_features": vm.recorder.input_features,
            "output_features": vm.recorder.output_features,
            "rows": [
                {
                    "ts": float(piece.ts[i]),
                    "id": piece.request_id[i].decode(errors="replace"),
                    "endpoint": routes[piece.route[i]][0],
                    "variant": routes[piece.route[i]][1],
                    "inputs": piece.inputs[i].tolist(),
                    "outputs": piece.outputs[i].tolist(),
                    "latency_s": float(piece.latency[i]),
                }
                for i in range(piece.rows)
            ],
        }

    async def close(self) -> None:
        """Drain what is left and close the logs."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drain()
        for segment_log in (self.predlog, self.feedback_log):
            if segment_log is not None:
                segment_log.close()
        self._executor.shutdown(wait=True)
