"""The worker channel over a real unix socket: every call's arguments and answer keep their
types across the wire, and a worker's errors come back as errors, never as crashes."""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
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


class EchoWorker(RecordingWorker):
    """Answers the monitor's read calls with what it was asked; `status` waits until released
    and then answers with a payload larger than one socket read."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def status(self) -> dict[str, Any]:
        await self.release.wait()
        return {"blob": bytes(range(256)) * 4096}  # 1 MiB of binary

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        return {"model": model, "version": version, "limit": limit}


@pytest.fixture
async def echo(tmp_path: Path) -> AsyncIterator[tuple[str, EchoWorker]]:
    worker = EchoWorker()
    path = str(tmp_path / "w.sock")
    server = await channel.serve(path, worker)
    yield path, worker
    worker.release.set()
    server.close()
    await server.wait_closed()


async def test_many_calls_at_once_each_get_their_own_answer(
    echo: tuple[str, EchoWorker],
) -> None:
    ch = WorkerChannel(echo[0])
    answers = await asyncio.gather(*(ch.recent("m", str(i), i) for i in range(50)))
    assert answers == [{"model": "m", "version": str(i), "limit": i} for i in range(50)]


async def test_a_caller_gives_up_after_its_timeout(echo: tuple[str, EchoWorker]) -> None:
    """The handler never answers before it is released, so the timeout fires on any machine."""
    path, worker = echo
    with pytest.raises(TimeoutError):
        await WorkerChannel(path, timeout=0.05).status()
    worker.release.set()  # the handler finishes and writes to a closed connection
    ch = WorkerChannel(path)
    assert await ch.status() == {"blob": bytes(range(256)) * 4096}  # a frame over one read
    assert (await ch.hello()).ready  # the server is unharmed


async def test_an_unknown_call_is_invalid(echo: tuple[str, EchoWorker]) -> None:
    with pytest.raises(LockgateError, match="unknown call 'nope'") as unknown:
        await WorkerChannel(echo[0])._call("nope")
    assert unknown.value.kind is ErrorKind.INVALID


async def test_garbage_and_oversized_frames_are_dropped(echo: tuple[str, EchoWorker]) -> None:
    path, _ = echo
    for frame in (
        struct.pack("<I", channel.MAX_FRAME + 1),  # a length over the limit
        struct.pack("<I", 10) + b"abc",  # a frame cut short
        b"\x01",  # not even a length
    ):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(frame)
        await writer.drain()
        writer.write_eof()
        assert await reader.read() == b""  # closed without an answer
        writer.close()
        await writer.wait_closed()
    assert (await WorkerChannel(path).hello()).ready


async def test_the_wire_format_is_a_length_prefixed_msgpack_array(
    echo: tuple[str, EchoWorker],
) -> None:
    """A call is [method, [args]] after a 4-byte little-endian length; the answer {"ok": ...}."""
    reader, writer = await asyncio.open_unix_connection(echo[0])
    body = msgpack.packb(["recent", ["m", "1", 7]], use_bin_type=True)
    writer.write(struct.pack("<I", len(body)) + body)
    await writer.drain()
    (length,) = struct.unpack("<I", await reader.readexactly(4))
    answer = msgpack.unpackb(await reader.readexactly(length), raw=False)
    assert answer == {"ok": {"model": "m", "version": "1", "limit": 7}}
    assert await reader.read() == b""  # one call per connection
    writer.close()
    await writer.wait_closed()
