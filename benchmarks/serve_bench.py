"""Serving benchmark: lockgate against the thinnest possible servers for the same ONNX models,
side by side in one run, with load from compiled generators (wrk for HTTP, h2load for gRPC).

Only ratios measured in the same run mean anything on a shared, noisy machine. The table goes to
stdout and, with the command and the date, to the top of the runs in benchmarks/results.md (the
earlier runs stay).

    .venv/bin/python benchmarks/serve_bench.py [--duration 8] [--quick] [--only http|grpc]
    .venv/bin/python benchmarks/serve_bench.py --only monitor [--rounds 8] [--duration 8]

`--only monitor` measures what monitoring costs the tail: lockgate with the monitor on against
lockgate with it off at 16 connections, in rounds of one run each (the order alternating), and
reports the on/off ratios of p99 and throughput per round, their median with a 95% bootstrap
interval, and their spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from loadgen import (
    GRPC_CONNS,
    GRPC_STREAMS,
    Result,
    check_grpc,
    grpc_python,
    h2load,
    run_tool,
    wrk,
)

from lockgate.config import default_intra_op_threads

HERE = Path(__file__).resolve().parent
FEATURES = {"classifier": 16, "mlp": 32}
HTTP_CONCURRENCY = (1, 16, 64)
FEATURE_ROUNDS = 5  # alternating runs per side when lockgate is compared with itself
MONITOR_CONNS = 16  # the monitoring-cost pairs: where the p99 is set by the event loop alone
MONITOR_P99, MONITOR_RPS = 1.10, 0.95  # targets: on/off p99 at most, on/off rps at least


@dataclass(slots=True)
class Row:
    scenario: str
    conc: int
    lg: Result | None  # None: a baseline-only row
    base: Result
    note: str = ""


class Bench:
    """Owns the temp dir and every subprocess; `close` kills them all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.notes: list[str] = []

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, name: str, cmd: list[str]) -> None:
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait_http(self, name: str, url: str, timeout: float = 90.0) -> None:
        """Poll until `url` answers 200; fail with the server's log when it dies or stalls."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.procs[name].poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not become ready at {url}:\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_row(features: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(7).standard_normal((1, features)).astype(np.float32)


def json_body(features: int) -> bytes:
    data = request_row(features).ravel().tolist()
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, features], "data": data}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def grpc_payload(model: str, features: int) -> bytes:
    from lockgate._proto import grpc_service_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32")
    tensor.shape.extend([1, features])
    raw = [request_row(features).tobytes()]
    msg = pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=raw)
    return bytes(msg.SerializeToString())


def rss_mb(pid: int) -> float:
    """Resident memory of a server and its child processes (a monitor process counts)."""
    proc = psutil.Process(pid)
    tree = [proc, *proc.children(recursive=True)]
    return sum(float(p.memory_info().rss) for p in tree) / 2**20


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def table(rows: list[Row]) -> list[str]:
    out = [
        "| scenario | concurrency | rps lockgate | rps baseline | ratio "
        "| p50 / p99 lockgate (ms) | p50 / p99 baseline (ms) | errors L / B |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b, cols = r.base, ["—", "—", "—", "—"]
        if r.lg is not None:
            lg, ratio = r.lg, f"{r.lg.rps / b.rps:.2f}" if b.rps else "—"
            cols = [f"{lg.rps:,.0f}", ratio, f"{ms(lg.p50_us)} / {ms(lg.p99_us)}", str(lg.errors)]
        out.append(
            f"| {r.scenario} | {r.conc}{r.note} | {cols[0]} | {b.rps:,.0f} | {cols[1]} "
            f"| {cols[2]} | {ms(b.p50_us)} / {ms(b.p99_us)} | {cols[3]} / {b.errors} |"
        )
    return out


def targets(rows: list[Row], rss_end: float) -> list[str]:
    """The acceptance targets, each with the figures that decide it (errors fail a target)."""
    res = {(r.scenario, r.conc): (r.lg, r.base) for r in rows if r.lg is not None}
    out = []

    def line(text: str, ok: bool, *runs: Result) -> None:
        good = ok and all(run.errors == 0 for run in runs)
        out.append(f"- {text} -> **{'PASS' if good else 'FAIL'}**")

    if ("HTTP JSON classifier", 64) in res and ("HTTP JSON classifier", 1) in res:
        lg, b = res[("HTTP JSON classifier", 64)]
        lg1, b1 = res[("HTTP JSON classifier", 1)]
        ratio, p99x, over = lg.rps / b.rps, lg.p99_us / b.p99_us, lg1.p50_us - b1.p50_us
        text = (
            f"(a) classifier HTTP: c=64 rps ratio {ratio:.2f} (>= 0.8), p99 {p99x:.2f}x the "
            f"baseline's (<= 1.5x); c=1 p50 overhead {over:.0f} us (<= 150 us)"
        )
        line(text, ratio >= 0.8 and p99x <= 1.5 and over <= 150, lg, lg1)
    if ("HTTP JSON mlp", 64) in res:
        lg, b = res[("HTTP JSON mlp", 64)]
        text = (
            f"(b) mlp HTTP c=64: rps {lg.rps / b.rps:.2f}x the baseline's (>= 3x), p99 "
            f"{ms(lg.p99_us)} ms vs {ms(b.p99_us)} ms (no worse)"
        )
        line(text, lg.rps >= 3 * b.rps and lg.p99_us <= b.p99_us, lg)
    for model in FEATURES:
        if (f"gRPC raw {model}", 64) in res:
            lg, b = res[(f"gRPC raw {model}", 64)]
            ratio = lg.rps / b.rps if b.rps else 0.0
            line(
                f"(c) {model} gRPC c=64: rps {ratio:.2f}x the thin server's (>= 0.8x)",
                ratio >= 0.8,
                lg,
            )
    line(f"(d) lockgate RSS after the run {rss_end:.0f} MB (<= 300 MB)", rss_end <= 300)
    key = ("lockgate classifier: split 50/50 vs one version", 64)
    if key in res:
        split, single = res[key]
        ratio = split.rps / single.rps
        line(
            f"(e) 50/50 split: {ratio:.2f}x the single-version rps (>= 0.95)", ratio >= 0.95, split
        )
    for model in FEATURES:
        key = (f"lockgate {model}: monitor on vs off", 64)
        if key in res:
            on, off = res[key]
            ratio = on.rps / off.rps
            line(f"(f) {model} monitor on: {ratio:.2f}x the rps off (>= 0.9)", ratio >= 0.9, on)
    return out


def start_servers(bench: Bench, thin: bool = True) -> dict[str, int]:
    """lockgate with every demo model (monitor on, and a second one with it off), and unless
    `thin` is False one thin HTTP + one thin gRPC server per model."""
    from lockgate.control.registry import Registry
    from lockgate.demo import build_demo_models

    home, files, threads = bench.tmp / "home", {}, str(bench.args.intra_op_threads)
    registry = Registry(home)
    for versions in build_demo_models(bench.tmp / "models"):
        for d in versions:
            registry.register(d.file, d.name, metadata=d.metadata, reference=d.reference)
        files[versions[-1].name] = versions[-1].file  # lockgate serves the latest version
    ports = {k: free_port() for k in ("http", "grpc", "admin")}
    cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home)]
    # The split scenario puts 50% on a version without gate results: a cost measurement, not a
    # promotion, so the gate policy is off here.
    cmd += [f"--{k}=127.0.0.1:{p}" for k, p in ports.items()] + ["--ungated-max-percent", "100"]
    bench.start("lockgate", [*cmd, "--intra-op-threads", threads, "--grace", "2"])
    # The same build with the monitor off, for the monitoring-cost comparison.
    plain = {k: free_port() for k in ("http", "grpc", "admin")}
    ports.update({f"{k} plain": p for k, p in plain.items()})
    cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home), "--no-monitor"]
    cmd += [f"--{k}=127.0.0.1:{p}" for k, p in plain.items()]
    bench.start("lockgate plain", [*cmd, "--intra-op-threads", threads, "--grace", "2"])
    for model in FEATURES if thin else ():
        for kind in ("http", "grpc"):
            port = ports[f"{kind} {model}"] = free_port()
            script = [sys.executable, str(HERE / f"thin_{kind}.py"), "--model", str(files[model])]
            opts = ["--port", str(port), "--intra-op-threads", threads]
            bench.start(f"thin {kind} {model}", [*script, *opts])
    bench.wait_http("lockgate", f"http://127.0.0.1:{ports['http']}/v2/health/ready")
    bench.wait_http("lockgate plain", f"http://127.0.0.1:{ports['http plain']}/v2/health/ready")
    for model in FEATURES if thin else ():
        port = ports[f"http {model}"]
        bench.wait_http(f"thin http {model}", f"http://127.0.0.1:{port}/ceiling")
    return ports


def measure_http(bench: Bench, ports: dict[str, int], dur: float, warm: float) -> list[Row]:
    rows: list[Row] = []
    for model, features in FEATURES.items():
        body, path = json_body(features), f"/v2/models/{model}/infer"
        urls = [f"http://127.0.0.1:{ports[k]}{path}" for k in ("http", f"http {model}")]
        for url in urls:
            wrk(bench.tmp, url, body, 16, warm)
        for conns in HTTP_CONCURRENCY:
            lg, base = (wrk(bench.tmp, url, body, conns, dur) for url in urls)
            rows.append(Row(f"HTTP JSON {model}", conns, lg, base))
            print(f"http {model} c={conns}: {lg.rps:.0f} vs {base.rps:.0f} rps", flush=True)
    ceiling = f"http://127.0.0.1:{ports['http classifier']}/ceiling"
    for conns in HTTP_CONCURRENCY:
        rows.append(
            Row("HTTP GET /ceiling (thin)", conns, None, wrk(bench.tmp, ceiling, None, conns, dur))
        )
    return rows


def measure_features(bench: Bench, ports: dict[str, int], dur: float, warm: float) -> list[Row]:
    """What routing and monitoring cost, lockgate against itself at 64 connections: an endpoint
    split 50/50 between two versions vs one version; the monitor on vs off."""
    split = {
        "variants": [
            {"name": "a", "model": "classifier", "version": "1", "weight": 50},
            {"name": "b", "model": "classifier", "version": "2", "weight": 50},
        ]
    }
    admin = f"http://127.0.0.1:{ports['admin']}/v1/endpoints/split"
    request = urllib.request.Request(admin, json.dumps(split).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()
    base = f"http://127.0.0.1:{ports['http']}/v2/models"
    plain = f"http://127.0.0.1:{ports['http plain']}/v2/models"
    rows = []
    body = json_body(FEATURES["classifier"])
    for url in (f"{base}/split/infer", f"{base}/classifier/infer"):
        wrk(bench.tmp, url, body, 16, warm)
    split_run, single = paired(bench, f"{base}/split/infer", f"{base}/classifier/infer", body, dur)
    rows.append(Row("lockgate classifier: split 50/50 vs one version", 64, split_run, single))
    for model, features in FEATURES.items():
        body = json_body(features)
        urls = [f"{u}/{model}/infer" for u in (base, plain)]
        for url in urls:
            wrk(bench.tmp, url, body, 16, warm)
        monitored, unmonitored = paired(bench, urls[0], urls[1], body, dur)
        rows.append(Row(f"lockgate {model}: monitor on vs off", 64, monitored, unmonitored))
        print(f"{model} monitor on/off: {monitored.rps:.0f} / {unmonitored.rps:.0f}", flush=True)
    return rows


def paired(bench: Bench, a: str, b: str, body: bytes, dur: float) -> tuple[Result, Result]:
    """lockgate against itself: alternating runs at 64 connections, each side's median run by
    rps (one run each is at the mercy of whatever else the shared machine does meanwhile)."""
    runs: tuple[list[Result], list[Result]] = ([], [])
    for _ in range(FEATURE_ROUNDS):
        for url, results in zip((a, b), runs, strict=True):
            results.append(wrk(bench.tmp, url, body, 64, dur))
    first, second = (sorted(r, key=lambda x: x.rps)[len(r) // 2] for r in runs)
    return first, second


@dataclass(slots=True)
class Pair:
    round: int
    on: Result
    off: Result

    @property
    def p99(self) -> float:
        return self.on.p99_us / self.off.p99_us

    @property
    def rps(self) -> float:
        return self.on.rps / self.off.rps


def measure_monitor(
    bench: Bench, ports: dict[str, int], dur: float, warm: float, rounds: int
) -> list[Pair]:
    """Monitor on against off on the classifier at 16 connections: `rounds` pairs of runs,
    on-off then off-on in turn, so that a machine getting busier or quieter during the run
    weighs on both sides alike. Each pair's ratios are taken within seconds of each other."""
    body = json_body(FEATURES["classifier"])
    urls = [
        f"http://127.0.0.1:{ports[k]}/v2/models/classifier/infer" for k in ("http", "http plain")
    ]
    for url in urls:
        wrk(bench.tmp, url, body, MONITOR_CONNS, warm)
    pairs = []
    for i in range(rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        runs = {side: wrk(bench.tmp, urls[side], body, MONITOR_CONNS, dur) for side in order}
        pair = Pair(i + 1, runs[0], runs[1])
        pairs.append(pair)
        print(
            f"round {pair.round}: p99 {ms(pair.on.p99_us)} / {ms(pair.off.p99_us)} ms "
            f"({pair.p99:.2f}x), rps {pair.on.rps:.0f} / {pair.off.rps:.0f} ({pair.rps:.2f}x)",
            flush=True,
        )
    return pairs


def monitor_table(pairs: list[Pair]) -> list[str]:
    """Each round's pair, then the medians and spread of the ratios, and the targets."""
    out = [
        f"Monitor on vs off, classifier, HTTP JSON, {MONITOR_CONNS} connections, "
        f"{len(pairs)} rounds (order alternating):",
        "",
        "| round | rps on | rps off | rps on/off | p99 on (ms) | p99 off (ms) | p99 on/off "
        "| errors on / off |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in pairs:
        out.append(
            f"| {p.round} | {p.on.rps:,.0f} | {p.off.rps:,.0f} | {p.rps:.3f} | {ms(p.on.p99_us)} "
            f"| {ms(p.off.p99_us)} | {p.p99:.3f} | {p.on.errors} / {p.off.errors} |"
        )
    p99s, rpss = np.array([p.p99 for p in pairs]), np.array([p.rps for p in pairs])
    q = (25, 50, 75)
    (p99_lo, p99_med, p99_hi), (rps_lo, rps_med, rps_hi) = (
        np.percentile(x, q) for x in (p99s, rpss)
    )
    (p99_cl, p99_ch), (rps_cl, rps_ch) = (median_interval(x) for x in (p99s, rpss))
    errors = sum(p.on.errors + p.off.errors for p in pairs)
    p99_ok, rps_ok = p99_med <= MONITOR_P99 and not errors, rps_med >= MONITOR_RPS and not errors
    out += [
        "",
        f"- (g) p99 on/off: median {p99_med:.3f} (95% interval {p99_cl:.3f}-{p99_ch:.3f}; "
        f"quartiles {p99_lo:.3f}-{p99_hi:.3f}, range {p99s.min():.3f}-{p99s.max():.3f}) "
        f"(<= {MONITOR_P99:.2f}) -> **{'PASS' if p99_ok else 'FAIL'}**",
        f"- (g) rps on/off: median {rps_med:.3f} (95% interval {rps_cl:.3f}-{rps_ch:.3f}; "
        f"quartiles {rps_lo:.3f}-{rps_hi:.3f}, range {rpss.min():.3f}-{rpss.max():.3f}) "
        f"(>= {MONITOR_RPS:.2f}) -> **{'PASS' if rps_ok else 'FAIL'}**",
    ]
    return out


def median_interval(x: np.ndarray) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of `x` (see `bootstrap_interval`)."""
    return bootstrap_interval(len(x), lambda picks: np.median(x[picks], axis=1))


def bootstrap_interval(
    rounds: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 10_000
) -> tuple[float, float]:
    """A 95% bootstrap interval (seeded) of a statistic of a run's rounds: how far a run of as
    many rounds on the same machine could put it, i.e. whether its verdict is decided.
    `statistic` maps a [resamples, rounds] matrix of round indices to one value per row."""
    picks = np.random.default_rng(0).integers(0, rounds, (resamples, rounds))
    low, high = np.percentile(statistic(picks), (2.5, 97.5))
    return float(low), float(high)


def measure_grpc(bench: Bench, ports: dict[str, int], dur: float, warm: float) -> list[Row]:
    """Check the body with a python grpc client (and nghttp2 for h2load), then load both."""
    rows: list[Row] = []
    method = "python" if bench.args.python_grpc else "h2load"
    for model, features in FEATURES.items():
        payload = grpc_payload(model, features)
        pair = (ports["grpc"], ports[f"grpc {model}"])
        for port in pair:
            why = check_grpc(port, payload, bench.tmp, method == "h2load")
            if why:
                method = "python"
                bench.notes.append(f"h2load cannot drive gRPC here: {why}")
        if method == "h2load":
            lg, base = (h2load(bench.tmp, p, payload, dur, warm) for p in pair)
            note = f" ({GRPC_CONNS} conn x {GRPC_STREAMS} streams)"
        else:
            lg, base = (grpc_python(p, payload, dur) for p in pair)
            note = " (2 python procs x 32)"
        for port in pair:  # still answering properly after the load
            check_grpc(port, payload, bench.tmp, False)
        rows.append(Row(f"gRPC raw {model}", 64, lg, base, note))
        print(f"grpc {model}: {lg.rps:.0f} vs {base.rps:.0f} rps", flush=True)
    bench.notes.append(f"gRPC load generator: {method}")
    return rows


def run(bench: Bench) -> list[str]:
    args = bench.args
    dur, warm = (2.0, 1.0) if args.quick else (args.duration, 2.0)
    if args.only == "monitor":
        ports = start_servers(bench, thin=False)
        pid = bench.procs["lockgate"].pid
        pairs = measure_monitor(bench, ports, dur, warm, args.rounds)
        lines = monitor_table(pairs)
        rss, load = rss_mb(pid), os.getloadavg()[0]
        return [*lines, "", f"lockgate RSS after the run: {rss:.0f} MB; machine load {load:.1f}."]
    ports = start_servers(bench)
    pid = bench.procs["lockgate"].pid
    rss_loaded, thin_rss = rss_mb(pid), rss_mb(bench.procs["thin http mlp"].pid)
    rows: list[Row] = []
    if args.only in (None, "http"):
        rows += measure_http(bench, ports, dur, warm)
    if args.only in (None, "grpc"):
        rows += measure_grpc(bench, ports, dur, warm)
    if args.only in (None, "http"):
        rows += measure_features(bench, ports, dur, warm)
    rss_end = rss_mb(pid)
    served = sum(r.lg.ok for r in rows if r.lg is not None)
    lines = [*table(rows), "", *targets(rows, rss_end), ""]
    lines.append(
        f"lockgate RSS: {rss_loaded:.0f} MB after loading, {rss_end:.0f} MB after the run "
        f"(thin HTTP mlp server: {thin_rss:.0f} MB); lockgate answered {served:,} measured "
        "requests."
    )
    return lines + [f"{note}." for note in bench.notes]


def code_version() -> str:
    """The commit measured, marked when the working tree differs from it."""
    git = ["git", "-C", str(HERE.parent)]
    try:
        head = run_tool([*git, "rev-parse", "--short", "HEAD"], 10).strip()
        dirty = run_tool([*git, "status", "--porcelain", "--", "src"], 10).strip()
    except (OSError, RuntimeError):
        return "unknown (not a git checkout)"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


def header(args: argparse.Namespace) -> list[str]:
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    now = datetime.now(UTC)
    title = "Monitoring's cost to the tail" if args.only == "monitor" else "Serving benchmark"
    return [
        f"## {title}, {now.strftime('%Y-%m-%d')}",
        "",
        f"Command: `{shlex.join([python, *sys.argv])}`  ",
        f"Date: {now.strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Code: {code_version()}  ",
        f"Machine: {os.cpu_count()} cores ({cpu.group(1) if cpu else platform.machine()}), "
        f"Python {platform.python_version()}; onnxruntime intra-op threads "
        f"{args.intra_op_threads} in every server.  ",
        "Load: wrk -t1 (HTTP, one row of JSON per request), h2load (gRPC, raw_input_contents); "
        "the generator and the servers share the same cores. Ratio = lockgate / baseline.  ",
        f"Machine load at the start (1-minute average): {os.getloadavg()[0]:.1f}.",
        "",
    ]


RUNS_MARKER = "<!-- runs, newest first: serve_bench.py adds its run below this line -->"


def record(out: Path, lines: list[str]) -> None:
    """Add this run to `out` below its marker, before the earlier runs (kept as they are)."""
    run = "\n".join(lines).rstrip() + "\n"
    text = out.read_text() if out.exists() else ""
    head, marker, rest = text.partition(RUNS_MARKER)
    if not marker:  # a file of another shape: this run goes first, the rest is kept below it
        head, marker, rest = "# Benchmark results\n\n", RUNS_MARKER, text
    earlier = rest.strip("\n")
    out.write_text(f"{head}{marker}\n\n{run}" + (f"\n{earlier}\n" if earlier else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--quick", action="store_true", help="2-second runs: a smoke test")
    parser.add_argument(
        "--only", choices=("http", "grpc", "monitor"), help="one transport, or the monitor's cost"
    )
    parser.add_argument("--rounds", type=int, default=8, help="--only monitor: pairs of runs")
    parser.add_argument("--python-grpc", action="store_true", help="python gRPC clients")
    parser.add_argument("--intra-op-threads", type=int, default=default_intra_op_threads())
    parser.add_argument("--time-limit", type=float, default=1200, help="abort after seconds")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    need = {"wrk": args.only != "grpc", "h2load": args.only is None and not args.python_grpc}
    need["h2load"] |= args.only == "grpc" and not args.python_grpc
    missing = [tool for tool, needed in need.items() if needed and not shutil.which(tool)]
    if missing:
        print(
            f"missing load generator(s): {', '.join(missing)}. Install them with:\n"
            "  sudo apt-get install -y wrk nghttp2-client",
            file=sys.stderr,
        )
        return 2

    def abort(signum: int, frame: Any) -> None:
        raise SystemExit(f"serve_bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, abort)
    signal.signal(signal.SIGALRM, abort)
    signal.alarm(int(args.time_limit))
    bench = Bench(args)
    try:
        lines = header(args) + run(bench)
    finally:
        signal.alarm(0)
        bench.close()
    print("\n".join(lines))
    record(args.out, lines)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
