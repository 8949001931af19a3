"""Goodput under overload: what is left of the gateway's peak rate of 200s when far more clients
than its queue holds hammer it, and how fast latency recovers once they stop.

One gateway on loopback serves the demo's heavy `mlp` (32 -> 1536 x3 -> 1, about 7 ms per 64-row
batch on one core) with a queue sized for 16 connections of 8-row requests (`--max-queue-rows
128`). wrk (compiled, one thread, keep-alive) posts 8-row JSON requests; its clients send the
next request as soon as an answer arrives, a 503 included: the harshest overload. In one run:

1. low load (2 connections): p50 / p99 before any overload;
2. peak goodput: 200s per second at 8, 16 and 32 connections, the best of them;
3. overload: 512 connections (32x the queue's 16): 200s per second, answers per second, and
   what the gateway spent (CPU of its event loop and of its other threads, mean batch compute);
4. recovery: the same low load again at once: p50 / p99 against phase 1.

Only ratios from the same run mean anything on a shared machine. The table is printed and, with
`--out`, appended to that file as a dated section with the command.

    .venv/bin/python benchmarks/overload.py [--seconds 5] [--out benchmarks/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, wrk
from serve_bench import Bench, code_version, free_port

from lockgate.control.registry import Registry
from lockgate.demo import MLP_FEATURES, ensure_demo_models

ROWS = 8  # rows per request
QUEUE_FOR = 16  # connections the queue is sized for
PEAK_CONNS = (8, 16, 32)
OVERLOAD_CONNS = 512
LOW_CONNS = 2
TIME_LIMIT = 170  # seconds: the whole run, startup included


@dataclass(slots=True)
class Spent:
    """What the gateway did during one phase: CPU seconds per thread kind, model batches."""

    seconds: float
    loop_cpu: float  # the main thread: the event loop
    other_cpu: float  # every other thread: the model's executor, gRPC, the monitor's drain
    batches: float
    batch_rows: float
    compute: float  # seconds in the model, summed over batches
    latency: dict[float, float]  # the 200s' server latency: bucket bound -> requests within

    def line(self) -> str:
        mean = self.compute / self.batches * 1000 if self.batches else 0.0
        rows = self.batch_rows / self.batches if self.batches else 0.0
        return (
            f"event loop {self.loop_cpu / self.seconds:.0%} of a core, other threads "
            f"{self.other_cpu / self.seconds:.0%}; {self.batches / self.seconds:,.0f} batches/s "
            f"of {rows:.1f} rows, {mean:.1f} ms each; 200s' server latency p50 <= "
            f"{self.quantile(0.5) * 1000:g} ms, p99 <= {self.quantile(0.99) * 1000:g} ms"
        )

    def quantile(self, q: float) -> float:
        """The smallest histogram bound holding a share `q` of the 200s (an upper bound)."""
        total = self.latency.get(float("inf"), 0.0)
        for bound, count in sorted(self.latency.items()):
            if total and count >= q * total:
                return bound
        return float("nan")


class Probe:
    """Samples the gateway's thread CPU times and batch counters around a phase."""

    def __init__(self, pid: int, admin: int) -> None:
        self.proc = psutil.Process(pid)
        self.url = f"http://127.0.0.1:{admin}/metrics"

    def sample(self) -> tuple[float, float, float, dict[str, float]]:
        loop = other = 0.0
        for t in self.proc.threads():
            if t.id == self.proc.pid:
                loop += t.user_time + t.system_time
            else:
                other += t.user_time + t.system_time
        return time.monotonic(), loop, other, self.counters()

    def counters(self) -> dict[str, float]:
        """The mlp's batch counters, and its latency buckets as `le=<bound>`."""
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            text = answer.read().decode()
        wanted = {"lockgate_batches_total", "lockgate_batch_rows_total"}
        wanted.add("lockgate_compute_seconds_total")
        out = dict.fromkeys(wanted, 0.0)
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if 'model="mlp"' not in rest:
                continue
            if name in wanted:
                out[name] += float(line.rsplit(" ", 1)[1])
            elif name == "lockgate_request_latency_seconds_bucket":
                bound = rest.split('le="', 1)[1].split('"', 1)[0]
                key = f"le={float(bound)}"
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    @staticmethod
    def spent(a: tuple[float, float, float, dict[str, float]], b: Any) -> Spent:
        ca, cb = a[3], b[3]
        return Spent(
            b[0] - a[0],
            b[1] - a[1],
            b[2] - a[2],
            cb["lockgate_batches_total"] - ca["lockgate_batches_total"],
            cb["lockgate_batch_rows_total"] - ca["lockgate_batch_rows_total"],
            cb["lockgate_compute_seconds_total"] - ca["lockgate_compute_seconds_total"],
            {float(k[3:]): cb[k] - ca.get(k, 0.0) for k in cb if k.startswith("le=")},
        )


def body() -> bytes:
    data = np.random.default_rng(7).standard_normal((ROWS, MLP_FEATURES)).astype(np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": [ROWS, MLP_FEATURES]}
    doc = {"inputs": [{**tensor, "data": data.ravel().tolist()}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def start(bench: Bench, extra: list[str]) -> dict[str, int]:
    home = bench.tmp / "home"
    ensure_demo_models(Registry(home))
    ports = {k: free_port() for k in ("http", "grpc", "admin")}
    cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home)]
    cmd += [f"--{k}=127.0.0.1:{p}" for k, p in ports.items()]
    cmd += ["--max-queue-rows", str(QUEUE_FOR * ROWS), "--grace", "2", "--log-level", "warning"]
    bench.start("lockgate", [*cmd, *extra])
    bench.wait_http("lockgate", f"http://127.0.0.1:{ports['http']}/v2/health/ready")
    return ports


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def run(bench: Bench, seconds: float, extra: list[str]) -> list[str]:
    ports = start(bench, extra)
    url = f"http://127.0.0.1:{ports['http']}/v2/models/mlp/infer"
    payload = body()
    probe = Probe(bench.procs["lockgate"].pid, ports["admin"])
    wrk(bench.tmp, url, payload, 16, 2)  # warm-up
    before = wrk(bench.tmp, url, payload, LOW_CONNS, seconds)
    peaks: list[tuple[int, Result, Spent]] = []
    for conns in PEAK_CONNS:
        start_sample = probe.sample()
        result = wrk(bench.tmp, url, payload, conns, seconds)
        peaks.append((conns, result, probe.spent(start_sample, probe.sample())))
        print(f"c={conns}: {result.rps:,.0f} 200s/s", flush=True)
    peak_conns, peak, at_peak = max(peaks, key=lambda cr: cr[1].rps)
    start_sample = probe.sample()
    over = wrk(bench.tmp, url, payload, OVERLOAD_CONNS, 2 * seconds)
    spent = probe.spent(start_sample, probe.sample())
    after = wrk(bench.tmp, url, payload, LOW_CONNS, seconds)
    print(f"c={OVERLOAD_CONNS}: {over.rps:,.0f} 200s/s", flush=True)
    answers = (over.ok + over.errors) / (2 * seconds)
    lines = [
        "| phase | connections | 200s/s | other answers/s | p50 / p99 (ms) | ratio |",
        "|---|---:|---:|---:|---:|---:|",
        f"| low load, before | {LOW_CONNS} | {before.rps:,.0f} | {before.errors / seconds:,.0f} "
        f"| {ms(before.p50_us)} / {ms(before.p99_us)} | |",
    ]
    for conns, r, _ in peaks:
        mark = " (peak)" if conns == peak_conns else ""
        lines.append(
            f"| load{mark} | {conns} | {r.rps:,.0f} | {r.errors / seconds:,.0f} "
            f"| {ms(r.p50_us)} / {ms(r.p99_us)} | |"
        )
    lines += [
        f"| overload | {OVERLOAD_CONNS} | {over.rps:,.0f} | {answers - over.rps:,.0f} "
        f"| {ms(over.p50_us)} / {ms(over.p99_us)} (all answers) "
        f"| goodput {over.rps / peak.rps:.2f}x the peak |",
        f"| low load, right after | {LOW_CONNS} | {after.rps:,.0f} "
        f"| {after.errors / seconds:,.0f} | {ms(after.p50_us)} / {ms(after.p99_us)} "
        f"| p50 {after.p50_us / before.p50_us:.2f}x, p99 {after.p99_us / before.p99_us:.2f}x "
        "before |",
        "",
        f"At the peak: {at_peak.line()}.  ",
        f"During the overload: {spent.line()}.",
    ]
    return lines


def header(args: argparse.Namespace) -> list[str]:
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    return [
        f"## Overload: goodput at {OVERLOAD_CONNS} connections and recovery",
        "",
        f"Command: `{shlex.join([python, *sys.argv])}`  ",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Code: {code_version()}  ",
        f"Machine: {os.cpu_count()} cores, shared with the load generator.  ",
        f"Load: wrk -t1, {ROWS}-row JSON requests to the demo `mlp`, queue sized for "
        f"{QUEUE_FOR} connections (--max-queue-rows {QUEUE_FOR * ROWS}); {args.seconds:g} s "
        f"per phase ({2 * args.seconds:g} s for the overload); a 503 is retried at once.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per phase (<= 10)")
    parser.add_argument("--out", type=Path, help="append the dated result to this file")
    parser.add_argument(
        "serve_args", nargs="*", help="extra `lockgate serve` flags (after --)", default=[]
    )
    args = parser.parse_args()
    args.seconds = min(max(args.seconds, 1.0), 10.0)
    if not shutil.which("wrk"):
        print("missing wrk; install it with: sudo apt-get install -y wrk", file=sys.stderr)
        return 2

    def abort(signum: int, frame: Any) -> None:
        raise SystemExit(f"overload: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, abort)
    signal.signal(signal.SIGALRM, abort)
    signal.alarm(TIME_LIMIT)
    bench = Bench(argparse.Namespace())
    try:
        lines = header(args) + run(bench, args.seconds, args.serve_args)
    finally:
        signal.alarm(0)
        bench.close()
    print("\n".join(lines))
    if args.out is not None:
        with args.out.open("a") as out:
            out.write("\n" + "\n".join(lines) + "\n")
        print(f"\nappended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
