"""HTTP answers to requests refused at admission, and a brake on connections that hammer.

A refused infer request is answered before its body is read or decoded, with the headers it
needs and nothing else. Under overload most answers are such 503s, and most clients send again
the moment they get one (Retry-After is rarely honoured): at 512 connections against a queue
for 16, the event loop answered about 22,000 503s per second, the load generator spent a core
sending them, and the model thread, starved, ran a tenth of its peak. So after a 503 for
overload the connection's next request is not read for a while: long enough that the gateway
answers at most about `HAMMER_RATE` such 503s a second however many connections hammer it (the
pause grows with the number of connections paused), and never longer than `LONGEST_PAUSE`. A
client that honours Retry-After (at least a second) never meets the pause: it is over before the
client sends again. Nothing is dropped; the next request waits in the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lockgate.errors import LockgateError
from lockgate.web import error_body, error_headers

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HAMMER_RATE = 1000.0  # 503s per second to connections that come straight back
LONGEST_PAUSE = 1.0  # seconds: the shortest Retry-After a 503 gives


class ConnectionBrake:
    """Pauses reading on connections just answered 503 for overload (see the module doc)."""

    def __init__(self, rate: float = HAMMER_RATE, longest: float = LONGEST_PAUSE) -> None:
        self.rate = rate
        self.longest = longest
        self.paused = 0  # connections whose reading is paused now

    def pause(self, send: Send) -> float:
        """Pause the connection `send` answers on; return for how long (0: not paused). The
        transport comes from uvicorn's cycle (`send` is its bound method); a server that does
        not expose it gets no pause."""
        transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
        if not hasattr(transport, "pause_reading") or transport.is_closing():
            return 0.0
        self.paused += 1
        delay = min(self.longest, self.paused / self.rate)
        transport.pause_reading()
        asyncio.get_running_loop().call_later(delay, self._resume, transport)
        return delay

    def _resume(self, transport: Any) -> None:
        self.paused -= 1
        if not transport.is_closing():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                transport.resume_reading()


async def answer_refusal(send: Send, status: int, exc: LockgateError, *, msgpack: bool) -> None:
    """The whole answer to a request refused before its body was read."""
    body, media = error_body(exc.message, msgpack_body=msgpack)
    headers = [(b"content-type", media.encode()), (b"content-length", b"%d" % len(body))]
    headers += [(k.encode(), v.encode()) for k, v in error_headers(exc).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
