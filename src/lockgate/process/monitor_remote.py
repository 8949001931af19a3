"""The gateway's side of the monitor process (`--monitor-process`): the same interface as the
in-process :class:`~lockgate.monitor.drain.Monitor`, with every statistic kept in a child
process (:mod:`lockgate.process.monitor_child`), so that no gateway thread but the event loop
runs monitor code and the loop never hands the GIL to a drain (docs/design/monitor-tail-cost.md).

The request path records rows exactly as before, into ring sets whose matrices are memory files
the child maps. Every `drain_interval` (sooner when a ring is half full) the drain task swaps
every ring on the loop and sends the child one message: the sets' handles and their per-request
values as bytes. The sets go back to the rings when the child answers.

Failures: a drain, attach or read that the child does not answer within its timeout ends that
child (killed if it hangs). The rows it could not take, and the rows it had taken since the last
snapshot of its figures (which died with it), are counted as dropped; its figures of that
snapshot are kept, so counts never go back. A new child is started at the next drain (at most
once per RESTART_BACKOFF) and every version is attached to it again. A stop drains the rings
into the child and waits for it to close its logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate.config import MonitorConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.derived import CURRENT_DERIVATION
from lockgate.monitor.drain import FeedbackResult, drain_every
from lockgate.monitor.layout import RowLayout
from lockgate.monitor.profiles import Predict, VersionProfiles, stored_or_built
from lockgate.monitor.record import VersionRecorder
from lockgate.monitor.ring import Array, Columns, PredictionRing
from lockgate.monitor.snapshot import Snapshot, VersionSnapshot
from lockgate.process import monitor_child
from lockgate.process.channel import call, call_blocking
from lockgate.types import ModelSpec

log = logging.getLogger(__name__)
Key = tuple[str, str]
START_TIMEOUT = 60.0  # the child compiles or reads the monitor's kernels before it is ready
CALL_TIMEOUT = 10.0  # a drain of a full ring takes tens of milliseconds
RESTART_BACKOFF = 5.0  # seconds between attempts to start a child after a failed start
NICE = 5  # the child's priority below the gateway's: serving comes first on a busy host
_FAILURES = (OSError, TimeoutError, EOFError, ValueError)  # the child did not answer


@dataclass
class _Attached:
    recorder: VersionRecorder
    blob: bytes  # the attach call's argument, sent again to a new child


@dataclass
class _Figures:
    """Counts kept in the gateway across children (guarded by MonitorProcess._figures_lock)."""

    generation: int = 0  # children started so far
    base: Snapshot = field(default_factory=Snapshot)  # additive figures of the children gone
    seen: Snapshot | None = None  # the current child's figures at the last snapshot
    handed: Counter[Key] = field(default_factory=Counter)  # rows + ring drops the child took
    lost: Counter[Key] = field(default_factory=Counter)  # rows no child's figures count


class MonitorProcess:
    """The monitor, run in a child process. Attach/detach/capture are blocking (called from
    threads); drain, feedback and the read views are coroutines on the event loop."""

    def __init__(
        self, config: MonitorConfig, home: Path, writer: str = "", nice: int = NICE
    ) -> None:
        self.config = config
        self.home = home
        self.versions: dict[Key, _Attached] = {}
        self._setup = monitor_child.setup_arg(config, home, writer, nice)
        self._dir = tempfile.mkdtemp(prefix="lockgate-monitor-")  # 0700: ours alone
        self._path = str(Path(self._dir) / "monitor.sock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._ended = False  # the current child's figures were kept after it ended
        self._spawn_lock = threading.RLock()  # one start or end at a time (loaders, the drain)
        self._next_start = 0.0
        self._figures = _Figures()
        self._figures_lock = threading.Lock()  # held for microseconds, never around a call
        self._drain_lock: asyncio.Lock | None = None
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0

    # -- the child ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _ensure_child(self) -> bool:
        """Start a child (and attach every version to it) unless one runs; False when it
        could not be started now. Blocking."""
        with self._spawn_lock:
            if self._proc is not None and self._proc.poll() is None:
                return True
            if self._proc is not None and not self._ended:  # died between two calls
                code = self._proc.poll()
                log.error("the monitor process exited (code %s); starting a new one", code)
                self._end_locked()
            if time.monotonic() < self._next_start:
                return False
            try:
                self._start_child()
                for attached in list(self.versions.values()):
                    call_blocking(self._path, "attach", attached.blob, timeout=CALL_TIMEOUT)
                return True
            except (*_FAILURES, LockgateError) as exc:
                log.error("the monitor process could not be started: %s", exc)
                self._end_child()
                self._next_start = time.monotonic() + RESTART_BACKOFF
                return False

    def _start_child(self) -> None:
        if self._proc is not None:
            self.restarts += 1
        with contextlib.suppress(FileNotFoundError):
            Path(self._path).unlink()
        command = [sys.executable, "-m", monitor_child.__name__, self._path, self._setup]
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        self._proc, self._ended = proc, False
        with self._figures_lock:
            self._figures.generation += 1
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        if line != monitor_child.READY:
            raise TimeoutError(f"no answer from the monitor process (exit code {proc.poll()})")
        log.info("monitor process %d started", proc.pid)

    def _end_child(self) -> None:
        """Stop the current child for good (killed: it failed) and keep its figures."""
        with self._spawn_lock:
            self._end_locked()

    def _end_locked(self) -> None:
        proc, self._ended = self._proc, True
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        with self._figures_lock:
            f = self._figures
            for key, handed in f.handed.items():
                vs = f.seen.versions.get(key) if f.seen is not None else None
                f.lost[key] += handed - (vs.rows + vs.dropped if vs is not None else 0)
            if f.seen is not None:
                f.base.merge(f.seen.counters())
            f.seen, f.handed = None, Counter()

    def _failed(self, what: str, exc: BaseException, unsent: Mapping[Key, int]) -> None:
        proc = self._proc
        code = proc.poll() if proc is not None else None
        rows = sum(unsent.values())
        log.error(
            "the monitor process failed (%s: %s; exit code %s): %d rows not monitored; "
            "a new one starts at the next drain",
            what,
            str(exc) or type(exc).__name__,
            code,
            rows,
        )
        self._end_child()
        with self._figures_lock:
            self._figures.lost.update(unsent)

    # -- versions -------------------------------------------------------------------------------
    def attach(
        self,
        spec: ModelSpec,
        reference: Array | Mapping[str, Array] | None = None,
        predict: Predict | None = None,
        profiles: VersionProfiles | None = None,
        layout: RowLayout | None = None,
    ) -> VersionRecorder:
        """As Monitor.attach: profiles built here when needed (they may run the model), the
        drift monitors in the child. Blocking (called from the loading thread)."""
        profiles = stored_or_built(spec, profiles, reference, predict, layout)
        derivation = profiles.derivation if profiles is not None else CURRENT_DERIVATION
        recorder = VersionRecorder(spec, self.config.ring_rows, layout, derivation, shared=True)
        recorder.ring.on_half_full = self._due.set
        npz = profiles.to_npz_bytes() if profiles is not None else None
        attached = _Attached(recorder, pickle.dumps((spec, recorder.layout, npz)))
        key = (spec.name, spec.version)
        if self._ensure_child():  # else attached by the next child with every version
            try:
                call_blocking(self._path, "attach", attached.blob, timeout=CALL_TIMEOUT)
            except _FAILURES as exc:
                self._failed("attach", exc, {})
        self.versions[key] = attached
        return recorder

    def detach(self, key: Key) -> None:
        """Forget a released version (blocking)."""
        self.versions.pop(key, None)
        with contextlib.suppress(*_FAILURES, LockgateError):
            call_blocking(self._path, "detach", *key, timeout=CALL_TIMEOUT)

    # -- the drain ------------------------------------------------------------------------------
    def start(self) -> None:
        run = drain_every(self.config.drain_interval, self._due, self.drain)
        self._task = asyncio.get_running_loop().create_task(run, name="monitor-drain")

    async def drain(self) -> None:
        """Hand every ring's new rows to the child (swapped on the loop, one message)."""
        if self._drain_lock is None:
            self._drain_lock = asyncio.Lock()
        async with self._drain_lock:
            if self.pid is None and not await asyncio.to_thread(self._ensure_child):
                self._drop_pending()
                return
            taken: list[tuple[PredictionRing, Columns]] = []
            entries, counts = [], Counter[Key]()
            for key, attached in list(self.versions.items()):
                ring = attached.recorder.ring
                columns, dropped = ring.swap()
                taken.append((ring, columns))
                if columns.rows or dropped:
                    entries.append(_entry(key, ring, columns, dropped))
                    counts[key] = columns.rows + dropped
            try:
                await call(self._path, "drain", entries, timeout=CALL_TIMEOUT)
            except _FAILURES as exc:
                await asyncio.to_thread(self._failed, "drain", exc, counts)
            except LockgateError as exc:  # it answered: a failure of these rows, not of it
                log.error("monitor drain failed: %s (%d rows)", exc.message, sum(counts.values()))
                with self._figures_lock:
                    self._figures.lost.update(counts)
            else:
                with self._figures_lock:
                    self._figures.handed.update(counts)
            finally:  # the child is done with them, or dead
                for ring, columns in taken:
                    ring.release(columns)

    def _drop_pending(self) -> None:
        """No child to take the rows: count them as dropped and reuse the sets."""
        lost = Counter[Key]()
        for key, attached in list(self.versions.items()):
            ring = attached.recorder.ring
            columns, dropped = ring.swap()
            lost[key] = columns.rows + dropped
            ring.release(columns)
        with self._figures_lock:
            self._figures.lost.update(lost)

    # -- feedback and read views ----------------------------------------------------------------
    async def submit_feedback(
        self, labels: list[tuple[str, float]], source: str = ""
    ) -> FeedbackResult:
        """As Monitor.submit_feedback: drained first, then joined and logged by the child."""
        await self.drain()
        pairs = [[request_id, label] for request_id, label in labels]
        matched, unknown = await self._call("feedback", pairs, source)
        return FeedbackResult(int(matched), int(unknown))

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("drift_report", model, version)
        return doc

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("recent", model, version, limit)
        return doc

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await call(self._path, method, *args, timeout=CALL_TIMEOUT)
        except _FAILURES as exc:
            raise LockgateError(
                ErrorKind.UNAVAILABLE, f"the monitor process is not answering ({exc!r}); retry"
            ) from exc

    def capture(self, snap: Snapshot) -> None:
        """Add the monitor's figures to `snap`: the child's, those of children gone, and the
        rows no child counts (blocking: call it off the event loop)."""
        with self._figures_lock:
            generation = self._figures.generation
        part = Snapshot()
        with contextlib.suppress(*_FAILURES, LockgateError):
            part = Snapshot.from_bytes(call_blocking(self._path, "snapshot", timeout=CALL_TIMEOUT))
        with self._figures_lock:
            f = self._figures
            if f.generation == generation and part.processes:
                f.seen = part
            snap.feedback_unknown += part.feedback_unknown + f.base.feedback_unknown
            snap.monitor_restarts += self.restarts
            for name, value in part.process.items():  # the child's CPU and memory count too
                snap.process[name] = snap.process.get(name, 0.0) + value
            for key, attached in list(self.versions.items()):
                vs = snap.versions[key] = VersionSnapshot()
                for source in (part, f.base):
                    if key in source.versions:
                        vs.merge(source.versions[key])
                vs.dropped += f.lost[key]
                vs.mismatched += attached.recorder.ring.mismatched
                vs.unfollowed = len(attached.recorder.unfollowed)

    async def close(self) -> None:
        """Drain what is left into the child, let it close its logs, and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drain()
        await asyncio.to_thread(self.capture, Snapshot())  # its final figures, kept after it
        with contextlib.suppress(*_FAILURES, LockgateError):
            await call(self._path, "close", timeout=CALL_TIMEOUT)
        proc = self._proc
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, CALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("the monitor process did not stop in time: killed")
            await asyncio.to_thread(self._end_child)
        shutil.rmtree(self._dir, ignore_errors=True)


def _entry(key: Key, ring: PredictionRing, columns: Columns, dropped: int) -> list[Any]:
    """One ring's part of a drain message."""
    handle = columns.handle
    assert handle is not None  # the rings of a MonitorProcess are shared
    where = [handle.pid, handle.fd, handle.nbytes, handle.serial, handle.capacity]
    routes = [list(route) for route in ring.routes]
    return [key[0], key[1], where, columns.wire(), dropped, routes, list(ring.clients)]
