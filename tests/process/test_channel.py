"""The worker <-> supervisor channel: a real unix socket server and client in one process."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.process import channel


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A channel server with a few handlers; yields its path and what the handlers saw."""
    path = str(tmp_path / "w.sock")
    seen: dict[str, Any] = {"calls": 0}
    release = asyncio.Event()

    async def echo(*args: Any) -> Any:
        seen["calls"] += 1
        return list(args)

    async def snapshot() -> bytes:
        return bytes(range(256)) * 4096  # 1 MiB of binary: a frame bigger than one read

    async def refuse(model: str) -> None:
        raise LockgateError(ErrorKind.NOT_FOUND, f"unknown model {model!r}")

    async def crash() -> None:
        raise RuntimeError("a bug in the worker")

    async def stall() -> None:
        await release.wait()

    seen["release"] = release
    handlers = {f.__name__: f for f in (echo, snapshot, refuse, crash, stall)}
    server = await channel.serve(path, handlers)
    yield path, seen
    release.set()
    server.close()
    await server.wait_closed()


async def test_a_call_returns_the_handlers_answer(worker: tuple[str, dict[str, Any]]) -> None:
    path, seen = worker
    args = (1, "two", [3.5, None], {"k": b"\x00v"}, {(1, 2): 3}.get((1, 2)))
    assert await channel.call(path, "echo", *args) == list(args)
    assert await channel.call(path, "echo") == []
    assert await channel.call(path, "snapshot") == bytes(range(256)) * 4096
    assert seen["calls"] == 2


async def test_many_calls_at_once_each_get_their_own_answer(
    worker: tuple[str, dict[str, Any]],
) -> None:
    path, _ = worker
    answers = await asyncio.gather(*(channel.call(path, "echo", i) for i in range(50)))
    assert answers == [[i] for i in range(50)]


async def test_errors_come_back_as_lockgate_errors(worker: tuple[str, dict[str, Any]]) -> None:
    path, _ = worker
    with pytest.raises(LockgateError, match="unknown model 'm'") as refused:
        await channel.call(path, "refuse", "m")
    assert refused.value.kind is ErrorKind.NOT_FOUND
    # the handler's bug stays an unexpected error for the caller, with what the worker saw
    with pytest.raises(RuntimeError, match="'crash' failed: RuntimeError: a bug in the worker"):
        await channel.call(path, "crash")
    with pytest.raises(LockgateError, match="unknown peer call 'nope'") as unknown:
        await channel.call(path, "nope")
    assert unknown.value.kind is ErrorKind.INVALID
    assert await channel.call(path, "echo", "still serving") == ["still serving"]


async def test_a_caller_gives_up_after_its_timeout(worker: tuple[str, dict[str, Any]]) -> None:
    path, seen = worker
    with pytest.raises(TimeoutError):
        await channel.call(path, "stall", timeout=0.05)
    seen["release"].set()  # the handler finishes and writes to a closed connection
    assert await channel.call(path, "echo", 1) == [1]  # the server is unharmed


async def test_garbage_and_oversized_frames_are_dropped(
    worker: tuple[str, dict[str, Any]],
) -> None:
    path, _ = worker
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
    assert await channel.call(path, "echo", "after") == ["after"]


async def test_the_wire_format_is_a_length_prefixed_msgpack_array(
    worker: tuple[str, dict[str, Any]],
) -> None:
    """A call is [method, [args]] after a 4-byte little-endian length; the answer {"ok": ...}."""
    path, _ = worker
    reader, writer = await asyncio.open_unix_connection(path)
    body = msgpack.packb(["echo", [7, "x"]], use_bin_type=True)
    writer.write(struct.pack("<I", len(body)) + body)
    await writer.drain()
    (length,) = struct.unpack("<I", await reader.readexactly(4))
    assert msgpack.unpackb(await reader.readexactly(length), raw=False) == {"ok": [7, "x"]}
    assert await reader.read() == b""  # one call per connection
    writer.close()
    await writer.wait_closed()


async def test_calling_a_worker_that_is_not_there_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await channel.call(str(tmp_path / "gone.sock"), "echo")
