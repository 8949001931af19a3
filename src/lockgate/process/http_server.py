"""uvicorn as the gateway runs it: no signal handling of its own, a linger before closing idle
connections at shutdown, and the read deadlines of the most trusted HTTP servers (nginx's
client_header_timeout, client_body_timeout and keepalive_timeout): a connection that sends
half a request, stalls an upload or idles is answered 408 or closed, never held.

The deadlines cost the request path next to nothing: each connection notes which phase of a
request it is in and since when, on a clock refreshed by uvicorn's own tick (ten times a second:
an attribute read per callback, not a call), and a once-a-second sweep on that tick closes the
connections that overstayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lockgate.config import ServeConfig

log = logging.getLogger(__name__)
HTTP_LINGER = 0.5  # seconds; see Server.shutdown

IDLE, HEADERS, BODY, ANSWERING = range(4)


@dataclass(frozen=True, slots=True)
class ReadDeadlines:
    header: float = 10.0  # from a request's first byte to the end of its headers
    body: float = 30.0  # between two reads of a body
    idle: float = 30.0  # a connection with no request in progress (before the first, too)


class Clock:
    """The event loop's time as of uvicorn's last tick (every 0.1 s): precise enough for
    deadlines of seconds that are swept once a second."""

    now = 0.0


# uvicorn's callbacks, called directly: `super()` costs more than the rest of an override
_DATA_RECEIVED = HttpToolsProtocol.data_received
_MESSAGE_BEGIN = HttpToolsProtocol.on_message_begin
_HEADERS_COMPLETE = HttpToolsProtocol.on_headers_complete
_MESSAGE_COMPLETE = HttpToolsProtocol.on_message_complete


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, noting which phase of a request it is in and since when."""

    phase = IDLE
    since = 0.0  # Clock time the phase began, or of the last read while in BODY or IDLE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.since = Clock.now = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if self.phase != HEADERS:
            self.since = Clock.now
        _DATA_RECEIVED(self, data)

    def on_message_begin(self) -> None:
        _MESSAGE_BEGIN(self)
        self.phase, self.since = HEADERS, Clock.now

    def on_headers_complete(self) -> None:
        self.phase, self.since = BODY, Clock.now
        _HEADERS_COMPLETE(self)

    def on_message_complete(self) -> None:
        self.phase = ANSWERING
        _MESSAGE_COMPLETE(self)

    def on_response_complete(self) -> None:
        """uvicorn's, without its keep-alive timer: a timer made per response and cancelled
        by the next request cost the loop about 2 us per request, and the idle deadline's
        sweep closes idle connections already."""
        self.phase, self.since = IDLE, Clock.now
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request, if the client sent one
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    def overstayed(self, now: float, deadlines: ReadDeadlines) -> bool:
        if self.phase == HEADERS:
            return now - self.since > deadlines.header
        if self.phase == BODY:
            return now - self.since > deadlines.body
        if self.phase == IDLE:
            return now - self.since > deadlines.idle
        return False  # the server is answering: its own deadline applies

    def time_out(self) -> None:
        """408 when no answer has started, then close (the handler sees a disconnect)."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        reading = self.phase in (HEADERS, BODY)
        if reading and (cycle is None or not cycle.response_started):
            body = orjson.dumps({"error": "request timeout: the request was not sent in time"})
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn without its own signal handling (the gateway owns shutdown for all listeners)
    and with read deadlines swept once a second."""

    def __init__(
        self, config: uvicorn.Config, deadlines: ReadDeadlines, linger: float = 0.0
    ) -> None:
        super().__init__(config)
        self.deadlines = deadlines
        self.linger = linger
        self.timed_out = 0  # connections closed by a read deadline

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    async def on_tick(self, counter: int) -> bool:
        Clock.now = now = asyncio.get_running_loop().time()
        if counter % 10 == 0:
            self.sweep(now)
        return bool(await super().on_tick(counter))

    def sweep(self, now: float) -> None:
        for conn in list(self.server_state.connections):
            if isinstance(conn, DeadlineProtocol) and conn.overstayed(now, self.deadlines):
                self.timed_out += 1
                conn.time_out()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, then keep serving for `linger` seconds before closing idle
        connections: a connection accepted just before the stop has usually not sent its
        request yet, and closing it as idle would reset a request the client did send."""
        for server in self.servers:
            server.close()
        if self.linger:
            await asyncio.sleep(self.linger)
        await super().shutdown(sockets)


def http_server(app: Any, config: ServeConfig, linger: float = 0.0) -> Server:
    """uvicorn serving `app` with the gateway's grace period, read deadlines and TLS."""
    deadlines = ReadDeadlines(config.header_timeout, config.body_timeout, config.idle_timeout)
    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = {
            "ssl_certfile": config.tls.cert,
            "ssl_keyfile": config.tls.key,
            "ssl_ca_certs": config.tls.client_ca,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if config.tls.client_ca else ssl.CERT_NONE,
        }
    uvicorn_config = uvicorn.Config(
        app,
        loop="none",
        http=DeadlineProtocol,
        lifespan="off",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting: not needed, and not free
        log_config=None,
        timeout_graceful_shutdown=max(1, int(config.grace_period)),
        timeout_keep_alive=max(1, int(deadlines.idle)),
        backlog=2048,
        **tls,
    )
    return Server(uvicorn_config, deadlines, linger)


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
