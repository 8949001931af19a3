"""Serving throughput with `--workers 2` against `--workers 1`, side by side in one run, and the
memory each worker costs.

Both gateways serve the demo's tiny classifier from one home; wrk (one thread, 64 keep-alive
connections, one JSON row per request) loads each in turn, alternating, `--rounds` times, and the
table reports medians. The load generator runs on the same machine, so on 2 cores the second
worker competes with wrk for CPU: the measured gain is a floor for hosts with a core per worker.

    .venv/bin/python benchmarks/workers_bench.py [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import wrk

from lockgate.control.registry import Registry
from lockgate.demo import ensure_demo_models

BODY = (
    b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":'
    + str([0.5] * 16).replace(" ", "").encode()
    + b"}]}"
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(home: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    http, grpc, admin = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home)]
    cmd += ["--http", f"127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc}"]
    cmd += ["--admin", f"127.0.0.1:{admin}", "--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).is_success:
                time.sleep(1.0 if workers == 1 else 3.0)  # every worker up, not just the first
                return proc, http
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("gateway did not start")


def tree_rss_mb(pid: int) -> tuple[float, list[float]]:
    """Total RSS of the process tree, and each child's."""
    root = psutil.Process(pid)
    children = [
        c for c in root.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())
    ]
    rss = [c.memory_info().rss / 2**20 for c in children]
    return root.memory_info().rss / 2**20 + sum(rss), rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        home = tmp / "home"
        ensure_demo_models(Registry(home))
        gateways = {n: start(home, n) for n in (1, 2)}
        try:
            url = {
                n: f"http://127.0.0.1:{port}/v2/models/classifier/infer"
                for n, (_, port) in gateways.items()
            }
            for n in (1, 2):
                wrk(tmp, url[n], BODY, 64, 2.0)  # warm-up
            rps: dict[int, list[float]] = {1: [], 2: []}
            p99: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for n in (1, 2):
                    result = wrk(tmp, url[n], BODY, 64, args.seconds)
                    if result.errors:
                        raise RuntimeError(f"{result.errors} failed requests with --workers {n}")
                    rps[n].append(result.rps)
                    p99[n].append(result.p99_us)
            memory = {n: tree_rss_mb(proc.pid) for n, (proc, _) in gateways.items()}
        finally:
            for proc, _ in gateways.values():
                proc.terminate()
                proc.wait(60)
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    print(
        "tiny classifier, HTTP JSON, wrk -t1 -c64, "
        f"{args.seconds:g} s x {args.rounds} rounds (medians)"
    )
    print("| gateway | rps | p99 | RSS total | RSS per worker |")
    print("|---|---:|---:|---:|---:|")
    for n, label in ((1, "--workers 1"), (2, "--workers 2")):
        total, per = memory[n]
        per_text = ", ".join(f"{m:.0f} MB" for m in per) if per else "-"
        print(
            f"| {label} | {statistics.median(rps[n]):,.0f} | "
            f"{statistics.median(p99[n]) / 1000:.2f} ms | {total:.0f} MB | {per_text} |"
        )
    print(f"\nsecond worker adds {100 * (two / one - 1):+.0f}% rps (target >= +40%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
