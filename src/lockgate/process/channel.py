"""The private channel between a worker process and its supervisor: length-prefixed msgpack
calls over a unix socket in a directory only this user can open.

A worker answers a handful of calls (its metrics snapshot, load/apply for the admin API, the
monitor's read views). Each call is one short connection: calls are rare (admin writes, scrapes)
and a fresh connection never leaves a half-read reply behind after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from lockgate.errors import ErrorKind, LockgateError

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<I")
MAX_FRAME = 256 * 2**20  # a snapshot of many versions with drift histograms stays far below
_KINDS = frozenset(kind.value for kind in ErrorKind)
Handler = Callable[..., Awaitable[Any]]


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"peer frame of {length} bytes is over the limit")
    return msgpack.unpackb(await reader.readexactly(length), raw=False, strict_map_key=False)


def _frame(doc: Any) -> bytes:
    body = bytes(msgpack.packb(doc, use_bin_type=True))
    return _LENGTH.pack(len(body)) + body


async def serve(path: str, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    """Answer calls on the unix socket `path`; an unknown call or a failing handler answers
    with an error, never takes the worker down."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, args = await _read_frame(reader)
            handler = handlers.get(method)
            if handler is None:
                reply: dict[str, Any] = {"error": ["invalid", f"unknown peer call {method!r}"]}
            else:
                try:
                    reply = {"ok": await handler(*args)}
                except LockgateError as exc:
                    reply = {"error": [exc.kind.value, exc.message]}
                except Exception as exc:
                    log.exception("peer call %s failed", method)
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


async def call(path: str, method: str, *args: Any, timeout: float = 10.0) -> Any:
    """Call `method` on the worker listening at `path`; its LockgateError comes back as one, any
    other failure of the handler (a bug: "internal") as a RuntimeError."""

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

    reply = await asyncio.wait_for(exchange(), timeout)
    if "error" in reply:
        kind, message = reply["error"]
        if kind not in _KINDS:
            raise RuntimeError(f"worker call {method!r} failed: {message}")
        raise LockgateError(ErrorKind(kind), message)
    return reply["ok"]
