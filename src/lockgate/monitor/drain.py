"""The monitor's background drain: every `drain_interval` it takes the new rows of every ring
(on the event loop, a bulk copy), then, on its own thread, feeds them to the latency sketches
and drift windows and appends them to the prediction log. The request path never waits for it.

State read by `/metrics` and the admin API is guarded by one lock, taken once per drain and once
per scrape, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.config import MonitorConfig
from lockgate.monitor.record import VersionRecorder
from lockgate.monitor.ring import RingSlice, id_key
from lockgate.monitor.sketch import LatencySketch
from lockgate.types import ModelSpec

log = logging.getLogger(__name__)
Key = tuple[str, str]
Array = np.ndarray[Any, Any]


@dataclass
class Accuracy:
    """Online quality from labels joined to predictions by request id."""

    labelled: int = 0
    correct: int = 0  # exact matches (meaningful for class labels)
    abs_error_sum: float = 0.0


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
    input_drift: Any = None
    output_drift: Any = None

    @property
    def prediction_column(self) -> int | None:
        """The output feature that labels are compared with: `label` if the model has one."""
        names = self.recorder.output_features
        if not names:
            return None
        return names.index("label") if "label" in names else 0


@dataclass
class FeedbackResult:
    matched: int
    unknown: int


class Monitor:
    def __init__(self, config: MonitorConfig, home: Path) -> None:
        self.config = config
        self.home = home
        self.versions: dict[Key, VersionMonitor] = {}
        self.lock = threading.Lock()
        self.feedback_unknown = 0
        self.feedback_total = 0
        self._recent: dict[bytes, tuple[Key, float]] = {}  # request id -> (version, prediction)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockgate-monitor")
        self._task: asyncio.Task[None] | None = None
        self.predlog: Any = None
        self.feedback_log: Any = None
        self._last_flush = time.monotonic()

    # -- versions -------------------------------------------------------------------------------
    def attach(self, spec: ModelSpec) -> VersionRecorder:
        """A ring for a version being loaded (the batcher's observer)."""
        key = (spec.name, spec.version)
        recorder = VersionRecorder(spec, self.config.ring_rows)
        with self.lock:
            self.versions[key] = VersionMonitor(key, recorder)
        return recorder

    def detach(self, key: Key) -> None:
        """Forget a released version (its last rows were drained with everyone else's)."""
        with self.lock:
            self.versions.pop(key, None)

    # -- the drain ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="monitor-drain")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.drain_interval)
            try:
                await self.drain()
            except Exception:
                log.exception("monitor drain failed; continuing")

    async def drain(self) -> None:
        """Take every ring's new rows now (on the loop) and process them on the drain thread."""
        pieces = []
        for vm in list(self.versions.values()):
            ring = vm.recorder.ring
            if ring.written != ring.read_upto:
                pieces.append((vm, ring.take()))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._process, pieces)

    def _process(self, pieces: list[tuple[VersionMonitor, RingSlice]]) -> None:
        with self.lock:
            for vm, piece in pieces:
                self._absorb(vm, piece)
        if self.predlog is not None:
            for vm, piece in pieces:
                self.predlog.append_slice(vm.key, vm.recorder, piece)
            if time.monotonic() - self._last_flush >= self.config.flush_interval:
                self.predlog.flush()
                self._last_flush = time.monotonic()

    def _absorb(self, vm: VersionMonitor, piece: RingSlice) -> None:
        vm.rows += piece.rows
        vm.dropped += piece.dropped
        if not piece.rows:
            return
        first = piece.first  # one latency per request, not per row
        route, latency, queue = piece.route[first], piece.latency[first], piece.queue[first]
        for code in np.unique(route):
            vm.latency[int(code)].add(latency[route == code].astype(np.float64))
        vm.queue.add(queue.astype(np.float64))
        if vm.input_drift is not None:
            vm.input_drift.update(piece.inputs)
        if vm.output_drift is not None:
            vm.output_drift.update(piece.outputs)
        column = vm.prediction_column
        if column is not None:
            predictions = piece.outputs[:, column].tolist()
            self._recent.update(
                zip(piece.request_id.tolist(), ((vm.key, p) for p in predictions), strict=True)
            )
            excess = len(self._recent) - self.config.feedback_window
            if excess > 0:
                for stale in list(self._recent)[:excess]:
                    del self._recent[stale]

    # -- feedback -------------------------------------------------------------------------------
    def feedback(self, labels: list[tuple[str, float]]) -> FeedbackResult:
        """Join labels to recent predictions by request id (unknown ids are counted)."""
        matched = 0
        with self.lock:
            for request_id, label in labels:
                found = self._recent.get(id_key(request_id))
                vm = self.versions.get(found[0]) if found is not None else None
                if found is None or vm is None:
                    continue
                matched += 1
                prediction = found[1]
                vm.accuracy.labelled += 1
                vm.accuracy.correct += prediction == label
                vm.accuracy.abs_error_sum += abs(prediction - label)
            self.feedback_total += len(labels)
            self.feedback_unknown += len(labels) - matched
        return FeedbackResult(matched, len(labels) - matched)

    async def close(self) -> None:
        """Drain what is left and close the logs."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drain()
        if self.predlog is not None:
            self.predlog.close()
        self._executor.shutdown(wait=True)
