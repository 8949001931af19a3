"""WorkerPool without spawning processes: two workers answering over real unix sockets, each a
RecordingWorker (tests/process/test_channel.py). A change reaches every worker, failures are
named by worker, and /metrics figures are the sum of the workers'."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.process import channel
from lockgate.process.gateway import WorkerRole
from lockgate.process.pool import Slot, Worker, WorkerPool
from tests.process.test_channel import STATE, RecordingWorker


async def test_the_pool_speaks_to_every_worker(tmp_path: Path) -> None:
    workers = [RecordingWorker(), RecordingWorker()]
    servers, slots = [], []
    for i, worker in enumerate(workers):
        path = str(tmp_path / f"w{i}.sock")
        servers.append(await channel.serve(path, worker))
        role = WorkerRole(i, socket.socket(), path, str(tmp_path / f"w{i}.final"))
        # the process is never started or asked about here: the pool reaches workers by path
        process = multiprocessing.current_process()
        slots.append(Slot(i, role.http_socket, current=Worker(process, role, 0.0)))
    pool = WorkerPool(slots)
    try:
        assert await pool.apply(STATE) == {}
        assert all(w.applied == [STATE] for w in workers)  # the state given, to each worker
        failures = await pool.ensure_loaded({("m", "2")})
        assert failures == {("m", "2"): "worker 1: checksum mismatch"}  # the last answer names it
        snap = await pool.snapshot()
        assert snap.requests[("e", "a", "m", "1", "http", "ok")] == 10 and snap.processes == 2
        status = await pool.serving_status()
        assert [w["index"] for w in status["workers"]] == [3, 3] and status["revision"] == 7
        await pool.refresh_registry()
        assert pool.registered_versions() == {"m": frozenset({"1", "2"})}
        with pytest.raises(LockgateError) as missing:
            await pool.drift_report("m", "1")
        assert missing.value.kind is ErrorKind.NOT_FOUND
    finally:
        for server in servers:
            server.close()
        for slot in slots:
            slot.sock.close()
