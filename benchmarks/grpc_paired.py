"""gRPC throughput of two versions of lockgate, paired: the working tree against an earlier
revision (exported with `git archive`), both gateways up at once on the same demo models,
measured in alternating h2load runs (64 streams: 8 connections x 8) so that whatever else the
shared machine does falls on both sides alike. Prints each pair and the median of the ratios.

    .venv/bin/python benchmarks/grpc_paired.py --base REV [--rounds 8] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from loadgen import check_grpc, h2load
from serve_bench import FEATURES, Bench, free_port, grpc_payload

from lockgate.config import default_intra_op_threads

HERE = Path(__file__).resolve().parent
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


def start(bench: Bench, label: str, src: Path, threads: int) -> int:
    """Register the demo models with this side's own code, then serve them; its gRPC port."""
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
    cmd += ["--intra-op-threads", str(threads), "--grace", "2"]
    with open(bench.tmp / f"{label}.log", "wb") as log:
        bench.procs[label] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    bench.wait_http(label, f"http://127.0.0.1:{ports['http']}/v2/health/ready")
    return ports["grpc"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the earlier revision (git rev)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--intra-op-threads", type=int, default=default_intra_op_threads())
    args = parser.parse_args()
    bench = Bench(argparse.Namespace(intra_op_threads=args.intra_op_threads))
    try:
        base_src = export(args.base, Path(tempfile.mkdtemp(dir=bench.tmp)))
        sides = {
            args.base: start(bench, "base", base_src, args.intra_op_threads),
            "working tree": start(bench, "head", HERE.parent / "src", args.intra_op_threads),
        }
        for model, features in FEATURES.items():
            payload = grpc_payload(model, features)
            for port in sides.values():
                check_grpc(port, payload, bench.tmp, False)
                h2load(bench.tmp, port, payload, 2.0, 1.0)  # warm
            ratios, rps = [], {label: [] for label in sides}
            for i in range(args.rounds):
                order = list(sides.items())[:: 1 if i % 2 == 0 else -1]  # ABBA...
                got = {
                    label: h2load(bench.tmp, port, payload, args.duration, 1.0)
                    for label, port in order
                }
                for label, result in got.items():
                    assert result.errors == 0, f"{label}: {result.errors} errors"
                    rps[label].append(result.rps)
                head, base = got["working tree"].rps, got[args.base].rps
                ratios.append(head / base)
                line = f"head {head:,.0f} base {base:,.0f} rps -> {head / base:.3f}"
                print(f"{model} round {i + 1}: {line}", flush=True)
            print(
                f"{model}: median rps head {statistics.median(rps['working tree']):,.0f}, "
                f"base {statistics.median(rps[args.base]):,.0f}; median ratio "
                f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})",
                flush=True,
            )
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
