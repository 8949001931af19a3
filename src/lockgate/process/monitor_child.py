"""The monitor process (`--monitor-process`): all of the monitor's state and work, away from the
gateway's GIL.

The gateway (:mod:`lockgate.process.monitor_remote`) records rows into ring sets whose matrices
live in memory files this process maps (:mod:`lockgate.monitor.shm`); at each drain it sends one
message naming the filled sets and carrying their per-request values, and this process assembles
and absorbs them with the same engine an in-process monitor uses
(:class:`lockgate.monitor.drain.Monitor`): sketches, drift windows, joint drift, the recent rows,
the label join, the prediction and feedback logs. Its answers carry the gateway's read views and
its part of the metrics snapshot. Calls are the worker channel's framing
(:func:`lockgate.process.channel.serve_calls`), handled one at a time.

It exits when asked (`close`: the logs are closed after the last drain) or when its gateway is
gone (its stdin, a pipe from the gateway, closes), after closing the logs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

from lockgate.config import MonitorConfig
from lockgate.monitor.capture import capture_monitor, capture_process
from lockgate.monitor.drain import Monitor, VersionMonitor
from lockgate.monitor.profiles import VersionProfiles
from lockgate.monitor.ring import Array, Columns
from lockgate.monitor.shm import SharedHandle, map_matrices
from lockgate.monitor.snapshot import Snapshot
from lockgate.monitor.warmup import warm_up
from lockgate.process.channel import Handler, serve_calls

log = logging.getLogger("lockgate.monitor.process")
Key = tuple[str, str]
READY = b"ready\n"


class MonitorService:
    """The calls the gateway makes (see monitor_remote.py for their arguments)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.mapped: dict[Key, dict[int, tuple[Array, Array]]] = {}  # by set serial
        self.closed = asyncio.Event()

    def handlers(self) -> dict[str, Handler]:
        calls = (
            self.attach, self.detach, self.drain, self.feedback, self.snapshot,
            self.drift_report, self.recent, self.close,
        )  # fmt: skip
        return {f.__name__: f for f in calls}

    async def attach(self, blob: bytes) -> None:
        spec, layout, npz = pickle.loads(blob)  # our own gateway, over a 0700 socket
        profiles = VersionProfiles.from_npz_bytes(npz) if npz is not None else None
        self.monitor.attach(spec, profiles=profiles, layout=layout)
        self.mapped.pop((spec.name, spec.version), None)

    async def detach(self, model: str, version: str) -> None:
        self.monitor.detach((model, version))
        self.mapped.pop((model, version), None)

    async def drain(self, entries: list[list[Any]]) -> None:
        """Assemble and absorb the sets of one gateway drain (then close windows by time)."""
        taken: list[tuple[VersionMonitor, Columns, int]] = []
        for model, version, handle, wire, dropped, routes, clients in entries:
            vm = self.monitor.versions.get((model, version))
            if vm is None:  # detached meanwhile
                continue
            ring = vm.recorder.ring
            ring.routes[:] = [(e, v) for e, v in routes]
            ring.clients[:] = clients
            matrices = self._matrices(vm, SharedHandle(*handle), ring.widths)
            taken.append((vm, Columns.received(matrices, wire), int(dropped)))
        self.monitor.absorb_taken(taken)

    def _matrices(
        self, vm: VersionMonitor, handle: SharedHandle, widths: tuple[int, int]
    ) -> tuple[Array, Array]:
        sets = self.mapped.setdefault(vm.key, {})
        found = sets.get(handle.serial)
        if found is None:
            if len(sets) >= 4:  # sets the gateway replaced (after a failed drain) are gone
                sets.clear()
            found = sets[handle.serial] = map_matrices(handle, widths)
        return found

    async def feedback(self, labels: list[list[Any]], source: str) -> list[int]:
        pairs = [(str(request_id), float(label)) for request_id, label in labels]
        result = self.monitor.feedback_and_log(pairs, source)
        return [result.matched, result.unknown]

    async def snapshot(self) -> bytes:
        """This process's part of the metrics: the monitor's figures and its OS figures."""
        snap = Snapshot()
        capture_process(snap)
        capture_monitor(snap, self.monitor)
        return snap.to_bytes()

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        return self.monitor.drift_report_now(model, version)

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        return self.monitor.recent_rows_now(model, version, limit)

    async def close(self) -> None:
        self.closed.set()


async def serve(path: str, monitor: Monitor) -> None:
    service = MonitorService(monitor)
    server = await serve_calls(path, service.handlers())
    loop = asyncio.get_running_loop()

    def watch_gateway() -> None:  # stdin is a pipe from the gateway: EOF when it is gone
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(service.closed.set)

    threading.Thread(target=watch_gateway, daemon=True, name="gateway-watch").start()
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    await service.closed.wait()
    server.close()
    with contextlib.suppress(OSError):  # a gateway that crashed cannot remove them
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    for segment_log in (monitor.predlog, monitor.feedback_log):
        if segment_log is not None:
            segment_log.close()


def setup_arg(config: MonitorConfig, home: Path, writer: str, nice: int) -> str:
    """The child's second argument: how its gateway's monitor is configured."""
    return base64.b64encode(pickle.dumps((config, home, writer, nice))).decode()


def main(argv: list[str]) -> None:
    path, setup = argv
    config, home, writer, nice = pickle.loads(base64.b64decode(setup))  # from our own gateway
    logging.basicConfig(level=logging.INFO, format="%(levelname)s monitor process: %(message)s")
    if nice:
        os.nice(nice)
    warm_up()  # compile (or read) the kernels before the first drain
    asyncio.run(serve(path, Monitor(config, home, writer)))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the thread watching stdin is blocked in a read: do not wait for it


if __name__ == "__main__":
    main(sys.argv[1:])
