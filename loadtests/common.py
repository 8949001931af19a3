"""Shared pieces of the load tests: a loopback-only target, a small keep-alive HTTP/1.1 client,
closed- or open-loop load, and latency/status statistics.

The client is a few lines of asyncio streams rather than a full library so that the generator
spends its (shared) CPU on requests, not on client machinery; it speaks exactly what a gateway
answers: status line, headers, Content-Length or chunked body.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import socket
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

import numpy as np
import orjson


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int


def fail(message: str) -> NoReturn:
    """A usage or setup problem: say what, exit 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


def loopback_target(url: str) -> Target:
    """http://HOST:PORT where HOST resolves only to loopback; anything else exits with 2."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        fail(f"expected http://HOST:PORT, got {url!r}")
    port = parts.port or 80
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        fail(f"cannot resolve {parts.hostname!r}: {exc}")
    addresses = {info[4][0] for info in infos}
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        fail(f"refusing {url}: load tests only target loopback addresses, not {addresses}")
    return Target(parts.hostname, port)


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects lazily after an error or a close."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.target.host, self.target.port
            )
        reader, writer = self._reader, self._writer
        assert reader is not None
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{self.target.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        status = int(line.split()[1])
        headers: dict[bytes, bytes] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            data = await self._chunked(reader)
        else:
            data = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            self.close()
        return status, data

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        return b"".join(parts)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass(slots=True)
class Stats:
    """Latencies (seconds) of successes and of 503s, and counts per status or error kind."""

    ok: array[float] = field(default_factory=lambda: array("d"))
    shed: array[float] = field(default_factory=lambda: array("d"))
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)

    def add(self, outcome: str, seconds: float) -> None:
        self.counts[outcome] += 1
        if outcome == "200":
            self.ok.append(seconds)
        elif outcome == "503":
            self.shed.append(seconds)

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counts.items()) if k != "200"}

    def rps(self, elapsed: float | None = None) -> float:
        return len(self.ok) / max(elapsed or (time.monotonic() - self.started), 1e-9)

    @staticmethod
    def pct(values: array[float], q: float) -> float:
        return float(np.percentile(np.frombuffer(values, dtype=np.float64), q)) if values else 0.0

    def latency_text(self) -> str:
        return f"p50 {ms(self.pct(self.ok, 50))}, p99 {ms(self.pct(self.ok, 99))}"

    def errors_text(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.errors.items()) or "none"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def infer_body(model: str, meta: dict[str, Any], rows: int) -> bytes:
    """A valid JSON infer body built from the model's metadata: `rows` rows of random data."""
    rng = np.random.default_rng(0)
    inputs = []
    for t in meta["inputs"]:
        shape = [rows if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(t["shape"])]
        count = int(np.prod(shape))
        if t["datatype"] == "BYTES":
            data: list[Any] = ["x"] * count
        elif t["datatype"] == "BOOL":
            data = [bool(x) for x in rng.integers(0, 2, count)]
        elif t["datatype"].startswith(("INT", "UINT")):
            data = rng.integers(0, 100, count).tolist()
        else:
            data = rng.standard_normal(count).astype(np.float32).tolist()
        inputs.append({"name": t["name"], "datatype": t["datatype"], "shape": shape, "data": data})
    return orjson.dumps({"inputs": inputs})


async def prepare(target: Target, model: str, rows: int) -> tuple[str, bytes]:
    """The infer path and body for `model`; exits with the gateway's answer if it refuses."""
    conn = Connection(target)
    try:
        status, data = await conn.request("GET", f"/v2/models/{model}")
        if status != 200:
            fail(f"GET /v2/models/{model}: {status} {data[:300].decode(errors='replace')}")
        path, body = f"/v2/models/{model}/infer", infer_body(model, orjson.loads(data), rows)
        status, data = await conn.request("POST", path, body)
        if status != 200:
            fail(f"POST {path}: {status} {data[:300].decode(errors='replace')}")
    except OSError as exc:
        fail(f"cannot reach the gateway at {target.host}:{target.port}: {exc}")
    finally:
        conn.close()
    return path, body


class Load:
    """Sends `body` to `path` until `end`: closed loop (each of `concurrency` connections sends
    back to back) or open loop (`rate` per second, latency counted from the scheduled send time,
    so a slow server cannot hide queueing by slowing the generator). `stats` may be swapped."""

    def __init__(
        self, target: Target, path: str, body: bytes, timeout: float, backoff: float = 0.0
    ) -> None:
        self.target, self.path, self.body, self.timeout = target, path, body, timeout
        self.backoff = backoff  # pause after a 503, as a client with a retry delay would
        self.stats = Stats()

    async def one(self, conn: Connection, scheduled: float) -> None:
        try:
            status, _ = await asyncio.wait_for(
                conn.request("POST", self.path, self.body), self.timeout
            )
            outcome = str(status)
        except TimeoutError:
            outcome = "timeout"
            conn.close()
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            outcome = "conn-error"
            conn.close()
        self.stats.add(outcome, time.perf_counter() - scheduled)
        if outcome == "503" and self.backoff:
            await asyncio.sleep(self.backoff)

    async def run(self, duration: float, concurrency: int, rate: float | None = None) -> None:
        end = time.monotonic() + duration
        ticks: asyncio.Queue[float] | None = asyncio.Queue() if rate else None

        async def worker() -> None:
            conn = Connection(self.target)
            try:
                while time.monotonic() < end:
                    if ticks is None:
                        await self.one(conn, time.perf_counter())
                        continue
                    try:
                        scheduled = await asyncio.wait_for(ticks.get(), end - time.monotonic())
                    except TimeoutError:
                        return
                    await self.one(conn, scheduled)
            finally:
                conn.close()

        async def schedule(rate: float) -> None:
            assert ticks is not None
            start, sent = time.perf_counter(), 0
            while time.monotonic() < end:
                due = int((time.perf_counter() - start) * rate) + 1
                for i in range(sent, due):
                    ticks.put_nowait(start + i / rate)
                sent = due
                await asyncio.sleep(min(0.001, 1 / rate))

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        if rate:
            tasks.append(asyncio.create_task(schedule(rate)))
        await asyncio.gather(*tasks)
        if ticks is not None and ticks.qsize():
            self.stats.counts["not-sent"] += ticks.qsize()


def base_parser(description: str, *, model: str, duration: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway (loopback only)")
    parser.add_argument("--model", default=model, help="model name (its metadata shapes the body)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--duration", type=float, default=duration, help="seconds")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    return parser


def run(main: Any) -> None:
    """Run a coroutine on uvloop when available (a faster generator), plain asyncio otherwise."""
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)
