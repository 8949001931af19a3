"""Load generator drivers for the serving benchmark: wrk (HTTP) and h2load (gRPC), both compiled,
plus a python grpc.aio fallback for machines where h2load cannot drive gRPC. Each returns one
`Result`: successful responses per second, p50/p99 latency in microseconds, counts.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GRPC_CONNS, GRPC_STREAMS = 8, 8  # 64 requests in flight
INFER = "/inference.GRPCInferenceService/ModelInfer"
LUA = """wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{body}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"p50":%.0f,"p99":%.0f,' ..
    '"status":%d,"socket":%d}}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(slots=True)
class Result:
    rps: float  # successful responses per second
    p50_us: float
    p99_us: float
    ok: int
    errors: int


def framed(payload: bytes) -> bytes:
    """The gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def run_tool(cmd: list[str], timeout: float) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def wrk(tmp: Path, url: str, body: bytes | None, conns: int, duration: float) -> Result:
    """One wrk run; the Lua `done` hook prints the figures as JSON (latencies in us)."""
    lua = tmp / "wrk.lua"
    text = f"wrk.body = [==[{body.decode()}]==]" if body else ""
    lua.write_text(LUA.format(method="POST" if body else "GET", body=text))
    cmd = f"wrk -t1 -c{conns} -d{max(1, round(duration))}s --timeout 10s --latency".split()
    out = run_tool([*cmd, "-s", str(lua), url], timeout=duration + 30)
    match = re.search(r"WRKJSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    d = json.loads(match.group(1))
    ok = d["requests"] - d["status"]
    return Result(ok / (d["duration_us"] / 1e6), d["p50"], d["p99"], ok, d["status"] + d["socket"])


def h2load(tmp: Path, port: int, payload: bytes, duration: float, warm: float) -> Result:
    """h2load sees HTTP status only. A gRPC error is a trailers-only response (no DATA), so a
    run whose DATA volume is too small for its answers counts every request as failed."""
    body, log = tmp / "grpc.bin", tmp / "h2load.log"
    body.write_bytes(framed(payload))
    cmd = f"h2load -c{GRPC_CONNS} -m{GRPC_STREAMS} -D {round(duration)} --warm-up-time {warm:g}"
    cmd = [*cmd.split(), "-d", str(body), "--log-file", str(log)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = run_tool([*cmd, f"http://127.0.0.1:{port}{INFER}"], timeout=duration + warm + 30)
    reqs = re.search(r"requests: (\d+) total.*?(\d+) succeeded", out)
    data = re.search(r"\((\d+)\) data", out)
    if not reqs or not data:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    total, ok = int(reqs.group(1)), int(reqs.group(2))
    if ok and int(data.group(1)) / ok < 10:  # every answer carries > 10 bytes of DATA
        ok = 0
    lat = np.loadtxt(log, usecols=2, ndmin=1) if log.stat().st_size else np.zeros(1)
    p50, p99 = np.percentile(lat, [50, 99])
    return Result(ok / duration, p50, p99, ok, total - ok)


def check_grpc(port: int, payload: bytes, tmp: Path, with_nghttp: bool) -> str | None:
    """One ModelInfer with the python grpc client (the body must be valid), then, for h2load,
    one with nghttp2's own client: None when it gets grpc-status 0, else why not."""
    import grpc

    from lockgate._proto import grpc_service_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)
        if not call(payload, timeout=10).raw_output_contents:
            raise RuntimeError(f"gRPC port {port} answered without raw_output_contents")
    if not with_nghttp:
        return None
    if not shutil.which("nghttp"):
        return "nghttp is missing, so grpc-status cannot be checked"
    (tmp / "check.bin").write_bytes(framed(payload))
    cmd = ["nghttp", "-v", "-H", ":method: POST", "-H", "content-type: application/grpc"]
    cmd += ["-H", "te: trailers", "-d", str(tmp / "check.bin"), f"http://127.0.0.1:{port}{INFER}"]
    out = subprocess.run(cmd, capture_output=True, timeout=20).stdout.decode(errors="replace")
    return None if "grpc-status: 0" in out else "nghttp2 did not get grpc-status 0"


def grpc_python(port: int, payload: bytes, duration: float) -> Result:
    """Fallback load: two python processes with 32 grpc calls in flight each."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_grpc_worker, [(port, payload, duration)] * 2))
    lat = np.concatenate([p[0] for p in parts])
    p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (0.0, 0.0)
    return Result(lat.size / duration, p50, p99, lat.size, sum(p[1] for p in parts))


def _grpc_worker(job: tuple[int, bytes, float]) -> tuple[Any, int]:
    import asyncio

    import grpc

    port, payload, duration = job
    lat: list[float] = []
    errors = 0

    async def loop(call: Any, end: float) -> None:
        nonlocal errors
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                await call(payload, timeout=10)
                lat.append((time.perf_counter() - start) * 1e6)
            except grpc.RpcError:
                errors += 1

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call, end = channel.unary_unary(INFER), time.monotonic() + duration
            await asyncio.gather(*(loop(call, end) for _ in range(32)))

    asyncio.run(main())
    return np.array(lat), errors
