"""The private channel between a worker process and its supervisor: typed calls, carried as
length-prefixed msgpack over a unix socket in a directory only this user can open.

A worker answers the calls of :class:`WorkerService` (its metrics snapshot, load/apply for the
admin API, the monitor's read views); the supervisor makes them through :class:`WorkerChannel`,
which has the same methods and types. How each call's arguments and answer travel is written
once, here, next to both ends. Each call is one short connection: calls are rare (admin writes,
scrapes) and a fresh connection never leaves a half-read reply behind after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np

from lockgate.control.state import State
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.snapshot import Snapshot
from lockgate.specs import EndpointSpec, VersionKey

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<I")
MAX_FRAME = 256 * 2**20  # a snapshot of many versions with drift histograms stays far below
Key = tuple[str, str]
Failures = dict[Key, str]  # versions that failed to load, with the reason


@dataclass(frozen=True, slots=True)
class Hello:
    index: int
    pid: int
    ready: bool


class WorkerService(Protocol):
    """What a worker answers its supervisor."""

    async def hello(self) -> Hello: ...
    async def snapshot(self) -> Snapshot: ...
    async def status(self) -> dict[str, Any]: ...
    async def registered(self) -> dict[str, frozenset[str]]: ...
    async def ensure_loaded(self, keys: set[Key]) -> Failures: ...
    async def apply(self, state: State) -> Failures: ...
    async def drift_report(self, model: str, version: str) -> dict[str, Any]: ...
    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]: ...


# -- the wire form of each call's arguments and answer ----------------------------------------
def _state_out(state: State) -> list[Any]:
    endpoints = {name: spec.to_doc() for name, spec in state.endpoints.items()}
    return [state.revision, endpoints, [list(pin) for pin in sorted(state.pins)]]


def _state_in(doc: list[Any]) -> State:
    revision, endpoints, pins = doc
    specs = {name: EndpointSpec.from_doc(spec) for name, spec in endpoints.items()}
    return State(int(revision), specs, frozenset(VersionKey(m, v) for m, v in pins))


def _failures_out(failures: Failures) -> list[list[str]]:
    return [[m, v, why] for (m, v), why in sorted(failures.items())]


def _failures_in(doc: list[list[str]]) -> Failures:
    return {(m, v): why for m, v, why in doc}


Handler = Callable[..., Awaitable[Any]]


def _handlers(worker: WorkerService) -> dict[str, Handler]:
    """Each call's server side: wire arguments in, the worker's answer out in wire form."""

    async def hello() -> dict[str, Any]:
        return dataclasses.asdict(await worker.hello())

    async def snapshot() -> bytes:
        return (await worker.snapshot()).to_bytes()

    async def registered() -> dict[str, list[str]]:
        return {m: sorted(v) for m, v in (await worker.registered()).items()}

    async def ensure_loaded(keys: list[list[str]]) -> list[list[str]]:
        return _failures_out(await worker.ensure_loaded({(m, v) for m, v in keys}))

    async def apply(state: list[Any]) -> list[list[str]]:
        return _failures_out(await worker.apply(_state_in(state)))

    calls = (hello, snapshot, registered, ensure_loaded, apply)
    handlers: dict[str, Handler] = {f.__name__: f for f in calls}
    handlers |= {
        "status": worker.status,
        "drift_report": worker.drift_report,
        "recent": worker.recent,
    }
    return handlers


class WorkerChannel:
    """The supervisor's end of one worker's channel: the calls of WorkerService, typed. A
    LockgateError the worker raised comes back as one; OSError or TimeoutError when the worker
    does not answer."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    async def hello(self, timeout: float | None = None) -> Hello:
        return Hello(**await self._call("hello", timeout=timeout))

    async def snapshot(self) -> Snapshot:
        return Snapshot.from_bytes(await self._call("snapshot"))

    async def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("status")
        return doc

    async def registered(self) -> dict[str, frozenset[str]]:
        return {m: frozenset(v) for m, v in (await self._call("registered")).items()}

    async def ensure_loaded(self, keys: set[Key]) -> Failures:
        return _failures_in(await self._call("ensure_loaded", [list(k) for k in sorted(keys)]))

    async def apply(self, state: State) -> Failures:
        return _failures_in(await self._call("apply", _state_out(state)))

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("drift_report", model, version)
        return doc

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("recent", model, version, limit)
        return doc

    async def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        return await call(self.path, method, *args, timeout=timeout or self.timeout)


async def call(path: str, method: str, *args: Any, timeout: float) -> Any:
    """One call to a `serve_calls` server: its answer, a LockgateError it raised, or OSError
    or TimeoutError when it does not answer."""

    async def exchange() -> Any:
        reader, writer = await asyncio.open_unix_connection(path, limit=2**20)
        try:
            writer.write(_frame([method, list(args)]))
            await writer.drain()
            return await _read_frame(reader)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return _answer(await asyncio.wait_for(exchange(), timeout))


def call_blocking(path: str, method: str, *args: Any, timeout: float) -> Any:
    """`call` from a thread without an event loop (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(_frame([method, list(args)]))
        stream = sock.makefile("rb")
        (length,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes is over the limit")
        doc = msgpack.unpackb(_read_exactly(stream, length), raw=False, strict_map_key=False)
    return _answer(doc)


def _read_exactly(stream: Any, size: int) -> bytes:
    data: bytes = stream.read(size)
    if len(data) != size:
        raise ConnectionError("the connection closed before the answer")
    return data


def _answer(reply: dict[str, Any]) -> Any:
    if "error" in reply:
        kind, message = reply["error"]
        known = kind in ErrorKind._value2member_map_
        raise LockgateError(ErrorKind(kind) if known else ErrorKind.UNAVAILABLE, message)
    return reply["ok"]


async def serve(path: str, worker: WorkerService) -> asyncio.AbstractServer:
    """Answer the supervisor's calls on the unix socket `path`; an unknown call or a failing
    handler answers with an error, never takes the worker down."""
    return await serve_calls(path, _handlers(worker))


async def serve_calls(path: str, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    """Answer calls `[method, args]` on the unix socket `path` with `{"ok": answer}` or
    `{"error": [kind, message]}`, one call per connection."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, args = await _read_frame(reader)
            handler = handlers.get(method)
            if handler is None:
                reply: dict[str, Any] = {"error": ["invalid", f"unknown call {method!r}"]}
            else:
                try:
                    reply = {"ok": await handler(*args)}
                except LockgateError as exc:
                    reply = {"error": [exc.kind.value, exc.message]}
                except Exception as exc:
                    log.exception("call %s failed", method)
                    reply = {"error": ["internal", f"{type(exc).__name__}: {exc}"]}
            writer.write(_frame(reply))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the caller gave up (timeout) or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_unix_server(on_connect, path=path)


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the limit")
    return msgpack.unpackb(await reader.readexactly(length), raw=False, strict_map_key=False)


def _frame(doc: Any) -> bytes:
    body = bytes(msgpack.packb(doc, use_bin_type=True, default=_plain))
    return _LENGTH.pack(len(body)) + body


def _plain(value: Any) -> Any:
    """numpy values in read views (drift reports) as plain Python for msgpack."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__}")
