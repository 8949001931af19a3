"""The worker channel over a real unix socket: every call's arguments and answer keep their
types across the wire, and a worker's errors come back as errors, never as crashes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lockgate.control.state import State
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.snapshot import Snapshot
from lockgate.process import channel
from lockgate.process.channel import Hello, WorkerChannel
from lockgate.specs import EndpointSpec, VersionKey

Key = tuple[str, str]
STATE = State(
    7,
    {
        "fraud": EndpointSpec.from_doc(
            {"variants": [{"name": "a", "model": "m", "version": "1", "weight": 100.0}]}
        )
    },
    frozenset({VersionKey("m", "2")}),
)


class RecordingWorker:
    """A WorkerService that answers from fixed figures and remembers what it was given."""

    def __init__(self) -> None:
        self.applied: list[State] = []
        self.ensured: list[set[Key]] = []

    async def hello(self) -> Hello:
        return Hello(3, 1234, True)

    async def snapshot(self) -> Snapshot:
        return Snapshot(revision=7, requests=Counter({("e", "a", "m", "1", "http", "ok"): 5}))

    async def status(self) -> dict[str, Any]:
        return {"index": 3, "revision": 7}

    async def registered(self) -> dict[str, frozenset[str]]:
        return {"m": frozenset({"1", "2"})}

    async def ensure_loaded(self, keys: set[Key]) -> dict[Key, str]:
        self.ensured.append(keys)
        return {("m", "2"): "checksum mismatch"}

    async def apply(self, state: State) -> dict[Key, str]:
        self.applied.append(state)
        return {}

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        raise LockgateError(ErrorKind.NOT_FOUND, f"no monitor for {model} v{version}")

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        raise RuntimeError("disk on fire")


async def test_calls_round_trip_with_their_types(tmp_path: Path) -> None:
    worker = RecordingWorker()
    path = str(tmp_path / "w.sock")
    server = await channel.serve(path, worker)
    try:
        ch = WorkerChannel(path)
        assert await ch.hello() == Hello(3, 1234, True)
        snap = await ch.snapshot()
        assert snap.revision == 7 and snap.requests[("e", "a", "m", "1", "http", "ok")] == 5
        assert await ch.status() == {"index": 3, "revision": 7}
        assert await ch.registered() == {"m": frozenset({"1", "2"})}
        keys = {("m", "1"), ("m", "2")}
        assert await ch.ensure_loaded(keys) == {("m", "2"): "checksum mismatch"}
        assert worker.ensured == [keys]
        assert await ch.apply(STATE) == {}
        assert worker.applied == [STATE]
    finally:
        server.close()


async def test_errors_come_back_as_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")
    server = await channel.serve(path, RecordingWorker())
    try:
        ch = WorkerChannel(path)
        with pytest.raises(LockgateError) as expected:
            await ch.drift_report("m", "1")
        assert expected.value.kind is ErrorKind.NOT_FOUND and "m v1" in expected.value.message
        with pytest.raises(LockgateError) as unexpected:  # the worker logs it and lives on
            await ch.recent("m", "1", 10)
        assert unexpected.value.kind is ErrorKind.UNAVAILABLE
        assert "disk on fire" in unexpected.value.message
        assert (await ch.hello()).ready
    finally:
        server.close()


async def test_a_missing_worker_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await WorkerChannel(str(tmp_path / "nobody.sock")).hello(timeout=1.0)
