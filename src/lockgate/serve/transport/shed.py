"""HTTP answers to requests refused at admission, and a brake on connections that hammer.

A refused infer request is answered before its body is read or decoded, with the headers it
needs and nothing else. Under overload most answers are such 503s, and most clients send again
the moment they get one (Retry-After is rarely honoured): at 512 connections against a queue
for 16, the event loop answered about 22,000 503s a second, the load generator spent a core
sending them, and the model thread, starved, ran a tenth of its peak. So a connection refused
for overload again within the Retry-After it was given (it came straight back) is not read again
for a while. The pause is the shorter of two: one that keeps the gateway answering at most about
`HAMMER_RATE` such 503s a second however many connections hammer it (it grows with the number of
connections paused), and one that starts at `FIRST_PAUSE` and doubles with each time this
connection comes straight back (so a client that met a full queue once, say the tail of an
overload, is not held for long); never longer than `LONGEST_PAUSE`. A client's first refusal is
never braked, nor is a client that honours Retry-After (at least a second). Nothing is dropped:
the next request waits in the socket, unless the client has closed the connection meanwhile (it
gave up, or the load generator stopped): then the connection is closed instead of being read, so
that a request nobody will receive is not decoded and run when the overload ends (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lockgate.errors import LockgateError
from lockgate.web import error_body, error_headers

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HAMMER_RATE = 1000.0  # 503s per second to connections that come straight back
FIRST_PAUSE = 0.01  # seconds, for the first time a connection comes straight back
LONGEST_PAUSE = 1.0  # seconds: the shortest Retry-After a 503 gives


class ConnectionBrake:
    """Pauses reading on connections that come straight back after a 503 for overload."""

    def __init__(
        self,
        rate: float = HAMMER_RATE,
        longest: float = LONGEST_PAUSE,
        clock: Callable[[], float] = time.monotonic,
        first: float = FIRST_PAUSE,
    ) -> None:
        self.rate = rate
        self.longest = longest  # also how soon a refused connection counts as coming back
        self.first = first
        self.clock = clock
        self.paused = 0  # connections whose reading is paused now
        # per connection: when it was last refused, and how many times in a row it came back
        self._refused: weakref.WeakKeyDictionary[Any, tuple[float, int]] = (
            weakref.WeakKeyDictionary()
        )

    def refused(self, send: Send) -> float:
        """A 503 for overload was just sent through `send`: pause its connection if it was
        refused less than `longest` ago too; return for how long (0: not paused). The transport
        comes from uvicorn's cycle (`send` is its bound method); a server that does not expose
        it gets no brake."""
        transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
        if not hasattr(transport, "pause_reading") or transport.is_closing():
            return 0.0
        now = self.clock()
        previous, comebacks = self._refused.get(transport, (float("-inf"), 0))
        if now - previous > self.longest:
            self._refused[transport] = (now, 0)
            return 0.0
        self._refused[transport] = (now, comebacks + 1)
        self.paused += 1
        own = self.first * 2.0 ** min(comebacks, 30)
        delay = min(self.longest, self.paused / self.rate, own)
        transport.pause_reading()
        asyncio.get_running_loop().call_later(delay, self._resume, transport)
        return delay

    def _resume(self, transport: Any) -> None:
        self.paused -= 1
        if transport.is_closing():
            return
        if _peer_closed(transport.get_extra_info("socket")):
            transport.close()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            transport.resume_reading()


def _peer_closed(sock: Any) -> bool:
    """Whether the peer has closed its side (its FIN is queued, maybe behind unread data)."""
    hangup = getattr(select, "POLLRDHUP", 0)
    if sock is None or not hangup:
        return False
    poll = select.poll()
    poll.register(sock.fileno(), hangup)
    return bool(poll.poll(0))


async def answer_refusal(
    send: Send,
    status: int,
    exc: LockgateError,
    *,
    msgpack: bool,
    extra: tuple[bytes, bytes] | None = None,
) -> None:
    """The whole answer to a request refused before its body was read; `extra`: one more
    header (an authentication challenge)."""
    body, media = error_body(exc.message, msgpack_body=msgpack)
    headers = [(b"content-type", media.encode()), (b"content-length", b"%d" % len(body))]
    headers += [(k.encode(), v.encode()) for k, v in error_headers(exc).items()]
    if extra is not None:
        headers.append(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
