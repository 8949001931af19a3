"""Monitoring's cost taken apart: gateways side by side, each running the working tree's code with
the monitor cut short after one stage (a patched copy of src/), loaded in rotating rounds of wrk
at 16 connections on the classifier (HTTP JSON, one row a request). Per variant: the medians of
each round's throughput and p99 ratios to the unmonitored gateway of the same round, the
gateway's CPU per answered request (its threads, not a monitor process's; and the event loop's
alone) and the requests per model run (`grpc_paired.measured`).

    .venv/bin/python benchmarks/monitor_stages.py [--rounds 30] [--duration 3]
        [--variants idle,recorded,copied,on] [--against SRC] [--out FILE]

The stages, each with everything above it (docs/design/monitor-tail-cost.md):

- idle: monitoring on (rings attached, kernels compiled, the drain running), nothing recorded;
- recorded: the request's record made, the batcher's lists built, `record` returning at once;
- copied: the whole recording (the ring's writer); the drain takes the rows and processes nothing;
- on: monitoring as shipped; process: the same with `--monitor-process`; drain1, drain2: the
  same draining every 1 or 2 seconds (`--drain-interval`) instead of every 0.5;
- against: monitoring on, running the code of another checkout's src/ (`--against`).

The same code's ratios differ from one run of 30 rounds to the next by up to 0.02 on a quiet
fast host, and by up to 0.04 in throughput and 0.10 in p99 on a slower, noisier one (a nested
virtual machine): read smaller differences as noise. The table goes to stdout and, dated with
the command, to `--out` (benchmarks/results.md by default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from grpc_paired import measured, start
from loadgen import Result
from serve_bench import FEATURES, HERE, Bench, code_version, json_body, median_interval, record

CONNS = 16
SRC = HERE.parent / "src" / "lockgate"

# (file under src/lockgate, text, replacement): each must match exactly once, so a change of the
# code these cut into stops the run instead of measuring something else.
Patch = tuple[str, str, str]
NOTHING_RECORDED: list[Patch] = [
    ("serve/batch.py", "        self.observer = observer\n", "        self.observer = None\n"),
    (
        "serve/dataplane.py",
        "        if loaded.recorder is not None:\n            meta = loaded.recorder.meta(",
        "        if False:\n            meta = loaded.recorder.meta(",
    ),
]
RECORD_RETURNS: Patch = (
    "monitor/record.py",
    '        None to derive it here (a run made on the loop)."""\n',
    '        None to derive it here (a run made on the loop)."""\n        return\n',
)
DRAIN_IDLE: Patch = (
    "monitor/drain.py",
    '        thread, or the monitor process, runs it."""\n',
    '        thread, or the monitor process, runs it."""\n        return\n',
)
VARIANTS: dict[str, tuple[list[Patch], list[str]]] = {
    "idle": (NOTHING_RECORDED, []),
    "recorded": ([RECORD_RETURNS], []),
    "copied": ([DRAIN_IDLE], []),
    "on": ([], []),
    "process": ([], ["--monitor-process"]),
    "drain1": ([], ["--drain-interval", "1"]),
    "drain2": ([], ["--drain-interval", "2"]),
    "against": ([], []),  # another checkout's src/, see --against
}


def patched(into: Path, patches: list[Patch]) -> Path:
    """A copy of src/ with `patches` applied (the working tree itself when there are none)."""
    if not patches:
        return SRC.parent
    shutil.copytree(SRC.parent, into / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name, text, replacement in patches:
        path = into / "src" / "lockgate" / name
        code = path.read_text()
        if code.count(text) != 1:
            raise SystemExit(f"{name} changed: the patch for this variant no longer applies")
        path.write_text(code.replace(text, replacement))
    return into / "src"


# Per run: wrk's figures, CPU us per request (process, event loop), requests per model run.
Run = tuple[Result, float, float, float]


def measure(
    bench: Bench, labels: list[str], rounds: int, duration: float, against: Path | None = None
) -> dict[str, list[Run]]:
    """`rounds` rounds of one wrk run per gateway, the order rotating (and reversed every other
    round) so that a machine getting busier or quieter weighs on every side alike."""
    ports = {}
    for label in labels:
        patches, flags = VARIANTS.get(label, ([], ["--no-monitor"]))
        src = against if label == "against" and against else patched(bench.tmp / label, patches)
        ports[label] = start(bench, label, src, 1, *flags)
    body = json_body(FEATURES["classifier"])
    for label in labels:  # warm
        measured(bench, label, ports[label], "classifier", body, 2.0, True, CONNS)
    runs: dict[str, list[Run]] = {label: [] for label in labels}
    for i in range(rounds):
        order = labels[i % len(labels) :] + labels[: i % len(labels)]
        for label in order if i % 2 == 0 else order[::-1]:
            run = measured(bench, label, ports[label], "classifier", body, duration, True, CONNS)
            runs[label].append(run)
        print(f"round {i + 1}/{rounds}", flush=True)
    return runs


def table(runs: dict[str, list[Run]], args: argparse.Namespace) -> list[str]:
    base = runs["off"]
    out = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — monitoring's cost by stage",
        "",
        f"`benchmarks/monitor_stages.py --rounds {args.rounds} --duration {args.duration:g} "
        f"--variants {','.join(args.variants)}`; code {code_version()}"
        f"{f', against {args.against}' if args.against else ''}; wrk, {CONNS} connections, "
        "classifier, HTTP JSON; medians of the per-round ratios to monitoring off; load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end.",
        "",
        "| variant | req/s | throughput / off (95% interval) | p99 / off (95% interval) "
        "| CPU us/req (loop) | requests/run "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, results in runs.items():
        pairs = [(r[0], b[0]) for r, b in zip(results, base, strict=True)]
        cpu, loop, per_run = (statistics.median(r[i] for r in results) for i in (1, 2, 3))
        rps = np.array([r.rps / b.rps for r, b in pairs])
        p99 = np.array([r.p99_us / b.p99_us for r, b in pairs])
        out.append(
            f"| {label} | {statistics.median(r.rps for r, _ in pairs):,.0f} "
            f"| {_with_interval(rps)} | {_with_interval(p99)} "
            f"| {cpu:.1f} ({loop:.1f}) | {per_run:.1f} | {sum(r.errors for r, _ in pairs)} |"
        )
    return out


def _with_interval(ratios: np.ndarray) -> str:
    low, high = median_interval(ratios)
    return f"{np.median(ratios):.3f} ({low:.3f}-{high:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument(
        "--variants",
        type=lambda s: s.split(","),
        default=["idle", "recorded", "copied", "on"],
        help=f"comma-separated, of: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--against", type=Path, help="another checkout's src/, measured as variant `against`"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    if args.against and "against" not in args.variants:
        args.variants.append("against")
    if "against" in args.variants and not (args.against and (args.against / "lockgate").is_dir()):
        sys.exit("--against needs a src/ directory holding lockgate")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or not shutil.which("wrk"):
        sys.exit(f"unknown variants {sorted(unknown)}" if unknown else "wrk is not installed")
    bench = Bench(argparse.Namespace(intra_op_threads=1))
    try:
        runs = measure(bench, ["off", *args.variants], args.rounds, args.duration, args.against)
    finally:
        bench.close()
    lines = table(runs, args)
    print("\n".join(lines))
    record(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
