"""Real `lockgate serve` processes on free loopback ports, and a lean HTTP/1.1 client for tests
that need thousands of requests (httpx costs more per request than the gateway does)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    http: str
    grpc: str
    admin: str
    log: Path  # stdout and stderr (a file, not a pipe: a full pipe would block the gateway)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def base(self) -> str:
        return f"http://{self.http}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_gateway(
    home: Path, *extra: str, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> GatewayProcess:
    """Start `lockgate serve` on `home` and wait until it is ready (or fail with its output).
    Its log goes to `log_dir`, by default the home (which must then exist already). A port
    taken by another process between `free_port` and the gateway's bind is not the test's
    failure: the gateway is started again on other ports."""
    for _ in range(3):
        http, grpc, admin = (f"127.0.0.1:{free_port()}" for _ in range(3))
        cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home)]
        cmd += ["--http", http, "--grpc", grpc, "--admin", admin, *extra]
        log = (log_dir or home) / f"gateway-{http.rsplit(':', 1)[1]}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        gw = GatewayProcess(proc, http, grpc, admin, log)
        if _ready(gw):
            return gw
    raise AssertionError(f"gateway found its ports taken three times:\n{gw.output()}")


def _ready(gw: GatewayProcess) -> bool:
    """True once the gateway answers ready; False if it exited because a port was taken."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            if "cannot listen on" in gw.output():
                return False
            raise AssertionError(f"gateway exited:\n{gw.output()}")
        try:
            if httpx.get(f"{gw.base}/v2/health/ready", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    gw.proc.kill()
    raise AssertionError("gateway did not become ready")


class RawHTTP:
    """One keep-alive HTTP/1.1 connection; enough protocol for a gateway that always sends a
    Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, address: str) -> RawHTTP:
        host, port = address.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"POST {path} HTTP/1.1", "host: gateway", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            if line:
                key, _, value = line.partition(":")
                parsed[key.strip().lower()] = value.strip()
        content = await self.reader.readexactly(int(parsed.get("content-length", "0")))
        return int(status_line.split()[1]), parsed, content

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
