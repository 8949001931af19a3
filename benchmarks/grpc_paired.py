"""gRPC (or, with --http, HTTP JSON) throughput of two versions of lockgate, paired: the working
tree (or `--head REV`) against an earlier revision (exported with `git archive`), both gateways
up at once on the same demo models, measured in alternating h2load runs (64 streams: 8
connections x 8; HTTP: wrk at `--conns`, 16 by default) so that whatever else the shared
machine does falls on both sides alike.
Besides requests per second, each run measures the gateway process's CPU time per answered
request, which other load on the machine disturbs far less. Prints each pair and the medians of
the ratios.

    .venv/bin/python benchmarks/grpc_paired.py --base REV [--head REV] [--rounds 8]
        [--duration 5] [--no-monitor] [--models classifier mlp] [--http [--conns 16]]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from io import BytesIO
from pathlib import Path

import psutil
from loadgen import Result, check_grpc, h2load, wrk
from serve_bench import FEATURES, Bench, free_port, grpc_payload, json_body

from lockgate.config import default_intra_op_threads

HERE = Path(__file__).resolve().parent
HTTP_CONNS = 16
REGISTER = """
import sys
from lockgate.control.registry import Registry
from lockgate.demo import build_demo_models
from pathlib import Path
home, models = Path(sys.argv[1]), Path(sys.argv[2])
registry = Registry(home)
for versions in build_demo_models(models):
    for d in versions:
        registry.register(d.file, d.name, metadata=d.metadata, reference=d.reference)
import lockgate; print(lockgate.__file__)
"""


def export(rev: str, into: Path) -> Path:
    """The revision's tree (src/ is what matters) unpacked into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def start(bench: Bench, label: str, src: Path, threads: int, *flags: str) -> dict[str, int]:
    """Register the demo models with this side's own code, then serve them; its ports."""
    env = dict(os.environ, PYTHONPATH=str(src))
    home, models = bench.tmp / f"{label}-home", bench.tmp / f"{label}-models"
    where = subprocess.run(
        [sys.executable, "-c", REGISTER, str(home), str(models)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(src)), f"{label} imported lockgate from {where}"
    ports = {k: free_port() for k in ("http", "grpc", "admin")}
    cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home)]
    cmd += [f"--{k}=127.0.0.1:{p}" for k, p in ports.items()]
    cmd += ["--intra-op-threads", str(threads), "--grace", "2", *flags]
    with open(bench.tmp / f"{label}.log", "wb") as log:
        bench.procs[label] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    bench.wait_http(label, f"http://127.0.0.1:{ports['http']}/v2/health/ready")
    return ports


def measured(
    bench: Bench,
    label: str,
    ports: dict[str, int],
    model: str,
    payload: bytes,
    dur: float,
    http: bool = False,
    conns: int = HTTP_CONNS,
) -> tuple[Result, float, float, float]:
    """One h2load run (wrk with `http`); the server's CPU microseconds per answered request
    during it (the whole process, and its main thread: the event loop, where requests are
    decoded, batched and answered); and the requests per model run (its batcher's counters)."""
    proc = psutil.Process(bench.procs[label].pid)
    before, loop_before = sum(proc.cpu_times()[:2]), _loop_cpu(proc)
    counted = _batch_counters(ports["admin"], model)
    if http:
        url = f"http://127.0.0.1:{ports['http']}/v2/models/{model}/infer"
        result = wrk(bench.tmp, url, payload, conns, dur)
    else:
        result = h2load(bench.tmp, ports["grpc"], payload, dur, 1.0)
    cpu, loop = sum(proc.cpu_times()[:2]) - before, _loop_cpu(proc) - loop_before
    now = _batch_counters(ports["admin"], model)
    requests, batches = now[0] - counted[0], now[1] - counted[1]
    n = max(result.ok, 1)  # h2load's warm-up second is not counted, its CPU is: a small bias
    return result, cpu * 1e6 / n, loop * 1e6 / n, requests / max(batches, 1)


def _batch_counters(admin: int, model: str) -> tuple[float, float]:
    """The model's requests run and model runs so far, from the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found = {}
    for name in ("batch_requests", "batches"):
        pattern = rf'^lockgate_{name}_total{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+]+)$'
        found[name] = sum(float(v) for v in re.findall(pattern, text, re.M))
    return found["batch_requests"], found["batches"]


def _loop_cpu(proc: psutil.Process) -> float:
    (main,) = [t for t in proc.threads() if t.id == proc.pid]
    return float(main.user_time + main.system_time)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the earlier revision (git rev)")
    parser.add_argument("--head", help="a later revision instead of the working tree (bisecting)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--no-monitor", action="store_true", help="both gateways without it")
    parser.add_argument("--models", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    parser.add_argument("--http", action="store_true", help="HTTP JSON over wrk instead of gRPC")
    parser.add_argument("--conns", type=int, default=HTTP_CONNS, help="--http: wrk connections")
    parser.add_argument("--intra-op-threads", type=int, default=default_intra_op_threads())
    args = parser.parse_args()
    bench = Bench(argparse.Namespace(intra_op_threads=args.intra_op_threads))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # close the servers on the way out
    try:
        base_src = export(args.base, Path(tempfile.mkdtemp(dir=bench.tmp)))
        flags = ["--no-monitor"] if args.no_monitor else []
        head_src = HERE.parent / "src"
        if args.head:
            head_src = export(args.head, Path(tempfile.mkdtemp(dir=bench.tmp)))
        sides = {
            args.base: start(bench, "base", base_src, args.intra_op_threads, *flags),
            "working tree": start(bench, "head", head_src, args.intra_op_threads, *flags),
        }
        names = {args.base: "base", "working tree": "head"}
        for model in args.models:
            if args.http:
                payload = json_body(FEATURES[model])
                for ports in sides.values():  # warm
                    url = f"http://127.0.0.1:{ports['http']}/v2/models/{model}/infer"
                    wrk(bench.tmp, url, payload, args.conns, 2.0)
            else:
                payload = grpc_payload(model, FEATURES[model])
                for ports in sides.values():
                    check_grpc(ports["grpc"], payload, bench.tmp, False)
                    h2load(bench.tmp, ports["grpc"], payload, 2.0, 1.0)  # warm
            ratios: dict[str, list[float]] = {
                "rps": [],
                "p50": [],
                "CPU": [],
                "loop CPU": [],
                "batch": [],
            }
            for i in range(args.rounds):
                order = list(sides.items())[:: 1 if i % 2 == 0 else -1]  # ABBA...
                got = {
                    label: measured(
                        bench,
                        names[label],
                        ports,
                        model,
                        payload,
                        args.duration,
                        args.http,
                        args.conns,
                    )
                    for label, ports in order
                }
                for label, (result, *_) in got.items():
                    assert result.errors == 0, f"{label}: {result.errors} errors"
                (head, head_cpu, head_loop, head_batch) = got["working tree"]
                (base, base_cpu, base_loop, base_batch) = got[args.base]
                ratios["rps"].append(head.rps / base.rps)
                ratios["p50"].append(head.p50_us / base.p50_us)
                ratios["CPU"].append(head_cpu / base_cpu)
                ratios["loop CPU"].append(head_loop / base_loop)
                ratios["batch"].append(head_batch / base_batch)
                line = (
                    f"rps {head.rps:,.0f} / {base.rps:,.0f}; p50 {head.p50_us:.0f} / "
                    f"{base.p50_us:.0f} us; CPU us/request {head_cpu:.0f} / "
                    f"{base_cpu:.0f}, of which the event loop {head_loop:.0f} / {base_loop:.0f}; "
                    f"requests per run {head_batch:.1f} / {base_batch:.1f}"
                )
                print(f"{model} round {i + 1} (head / base): {line}", flush=True)
            for what, values in ratios.items():
                print(f"{model}: {what} head / base, median {spread(values)}", flush=True)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
