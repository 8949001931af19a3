"""Handing a worker's gRPC clients over to the other workers without failing a call (Linux).

grpc.aio offers one way to stop: `server.stop(grace)`, and gRPC core then cancels every call that
has reached the server but not yet its handler (grpc/grpc#41785): under load, a few calls fail
at each worker replaced. So a worker handed over by a rolling restart stops in three steps:

1. its gRPC listening socket leaves the port's SO_REUSEPORT group (`shutdown` on the listener;
   grpc does not expose it, so it is found among the process's descriptors): new connections
   go to the other workers;
2. its open connections end by themselves: the server runs with `grpc.max_connection_age_ms`,
   so gRPC core sends each one a graceful GOAWAY within that age, and clients carry on over a
   new connection (calls refused by a GOAWAY are retried by the client's channel);
3. once no connection is left (or the age and the grace period have passed), `server.stop`
   has nothing pending to cancel.

gRPC core logs the closed listener once ("Closing acceptor. Failed accept4: Invalid argument").
Without /proc (not Linux) nothing is found, and the worker stops as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

_LISTEN, _CLOSE = "0A", "07"  # /proc/net/tcp states


def _socket_inodes() -> dict[int, int]:
    """{socket inode: fd} of this process."""
    found: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{name}")
                if target.startswith("socket:["):
                    found[int(target[8:-1])] = int(name)
    return found


def _tcp_sockets(port: int) -> list[tuple[int, str]]:
    """(fd, state) of every TCP socket of this process with local port `port`."""
    ours = _socket_inodes()
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, fd = fields[1], fields[3], ours.get(int(fields[9]))
                if fd is not None and int(local.rsplit(":", 1)[1], 16) == port:
                    found.append((fd, state))
    return found


def close_listeners(port: int) -> int:
    """Take this process's listening sockets on `port` out of the accept path (the kernel
    then hands new connections to the other sockets sharing the port); returns how many."""
    closed = 0
    for fd, state in _tcp_sockets(port):
        if state != _LISTEN:
            continue
        with contextlib.suppress(OSError):
            # A duplicate descriptor: shutting it down stops the shared socket listening,
            # while grpc keeps (and later closes) its own descriptor.
            listener = socket.socket(fileno=os.dup(fd))
            try:
                if listener.getsockname()[1] == port:  # not a descriptor reused since
                    listener.shutdown(socket.SHUT_RD)
                    closed += 1
            finally:
                listener.close()
    return closed


def open_connections(port: int) -> int:
    """This process's TCP connections on local port `port` that are not yet closed."""
    return sum(state not in (_LISTEN, _CLOSE) for _, state in _tcp_sockets(port))


async def hand_over(port: int, timeout: float, poll: float = 0.1) -> bool:
    """Steps 1 and 2 of the module doc; True if every connection ended within `timeout`."""
    closed = await asyncio.to_thread(close_listeners, port)
    deadline = time.monotonic() + timeout
    while (left := await asyncio.to_thread(open_connections, port)) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(poll)
    log.info(
        "gRPC handover: %d listener(s) closed, %s",
        closed,
        f"{left} connection(s) still open after {timeout:.0f}s" if left else "no connection left",
    )
    return not left
