"""Monitoring cost on wide inputs: one image model (FP32 [N, 3, 224, 224], a 1x1 convolution and
a global average pool: `image_model` of tests/onnx_models.py) served by two lockgate gateways
side by side in one run, the monitor on (its image summarised per row: mean, std, L2 norm, 8
projections) and off (`--no-monitor`), loaded in alternating wrk runs with binary-extension
requests of one image. The ratio of the medians is the figure, with its 95% bootstrap interval,
the median of the paired rounds' ratios and the gateways' CPU time per answered request; it
goes, dated with the command, to results.md.

    .venv/bin/python benchmarks/wide_bench.py [--duration 4] [--rounds 11] [--conns 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
from loadgen import LUA, Result, run_tool
from serve_bench import HERE, Bench, bootstrap_interval, code_version, free_port, record

sys.path.insert(0, str(HERE.parent))  # the repository: the image model is the tests' own
from tests.onnx_models import image_model

SHAPE = (3, 224, 224)


def binary_body(image: np.ndarray) -> tuple[bytes, int]:  # type: ignore[type-arg]
    """An infer request with the binary extension: the JSON header, then the raw image."""
    raw = image.astype(np.float32).tobytes()
    head = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, *SHAPE],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    header = json.dumps(head).encode()
    return header + raw, len(header)


def wrk_binary(tmp: Path, url: str, body: Path, header: int, conns: int, dur: float) -> Result:
    lua = tmp / "wide.lua"
    text = (
        f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        f'wrk.headers["Inference-Header-Content-Length"] = "{header}"'
    )
    lua.write_text(LUA.format(method="POST", body=text).replace("application/json", "x"))
    cmd = f"wrk -t1 -c{conns} -d{max(1, round(dur))}s --timeout 10s --latency".split()
    out = run_tool([*cmd, "-s", str(lua), url], timeout=dur + 30)
    match = re.search(r"WRKJSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    d = json.loads(match.group(1))
    ok = d["requests"] - d["status"]
    return Result(ok / (d["duration_us"] / 1e6), d["p50"], d["p99"], ok, d["status"] + d["socket"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=11, help="alternating runs per side")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        lines = run(bench, args)
    finally:
        bench.close()
    print("\n".join(lines))
    record(args.out, lines)
    return 0


def run(bench: Bench, args: argparse.Namespace) -> list[str]:
    from lockgate.control.registry import Registry

    rng = np.random.default_rng(0)
    home = bench.tmp / "home"
    reference = rng.uniform(0, 1, size=(32, int(np.prod(SHAPE))))  # raw pixels, one row each
    image = image_model(bench.tmp / "image.onnx", SHAPE)
    Registry(home).register(image, "image", reference=reference)
    body, header = binary_body(rng.uniform(0, 1, size=(1, *SHAPE)))
    (bench.tmp / "body.bin").write_bytes(body)
    urls = {}
    for side, extra in (("on", []), ("off", ["--no-monitor"])):
        ports = {k: free_port() for k in ("http", "grpc", "admin")}
        cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home), *extra]
        bench.start(side, [*cmd, *(f"--{k}=127.0.0.1:{p}" for k, p in ports.items())])
        bench.wait_http(side, f"http://127.0.0.1:{ports['http']}/v2/health/ready")
        urls[side] = f"http://127.0.0.1:{ports['http']}/v2/models/image/infer"
    for url in urls.values():  # warm both
        wrk_binary(bench.tmp, url, bench.tmp / "body.bin", header, args.conns, 2)
    runs: dict[str, list[Result]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}  # gateway CPU us per answered request
    for i in range(args.rounds):
        for side, url in list(urls.items())[:: 1 if i % 2 == 0 else -1]:
            proc = psutil.Process(bench.procs[side].pid)
            before = sum(proc.cpu_times()[:2])
            res = wrk_binary(
                bench.tmp, url, bench.tmp / "body.bin", header, args.conns, args.duration
            )
            cpu[side].append((sum(proc.cpu_times()[:2]) - before) * 1e6 / max(res.ok, 1))
            runs[side].append(res)
            print(
                f"monitor {side}: {res.rps:.0f} req/s (p50 {res.p50_us / 1e3:.2f} ms), "
                f"{cpu[side][-1]:.0f} us of CPU per request",
                flush=True,
            )
    on, off = (sorted(r, key=lambda x: x.rps)[len(r) // 2] for r in (runs["on"], runs["off"]))
    load = os.getloadavg()[0]  # other work on the host: the ratio is only as good as this
    paired = sorted(a.rps / b.rps for a, b in zip(runs["on"], runs["off"], strict=True))
    cpu_paired = sorted(a / b for a, b in zip(cpu["on"], cpu["off"], strict=True))
    rps_on, rps_off = (np.array([r.rps for r in runs[side]]) for side in ("on", "off"))
    figure = float(np.median(rps_on) / np.median(rps_off))  # as the interval computes it
    low, high = bootstrap_interval(  # of the figure: the ratio of the medians
        len(rps_on), lambda p: np.median(rps_on[p], axis=1) / np.median(rps_off[p], axis=1)
    )
    cost, derive, cold = record_cost()
    errors = sum(r.errors for side in runs.values() for r in side)
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"## {date} — wide inputs: monitoring on/off, FP32 [1, 3, 224, 224] ({code_version()})",
        "",
        f"`{' '.join(['benchmarks/wide_bench.py', *sys.argv[1:]])}`; wrk, {args.conns} "
        f"connections, binary-extension requests, {args.rounds} alternating runs of "
        f"{args.duration:g} s per side, medians; {errors} errors; load average "
        f"{load:.1f} on {os.cpu_count()} cores at the end.",
        "",
        "| monitor | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| on | {on.rps:.0f} | {on.p50_us / 1e3:.2f} | {on.p99_us / 1e3:.2f} |",
        f"| off | {off.rps:.0f} | {off.p50_us / 1e3:.2f} | {off.p99_us / 1e3:.2f} |",
        "",
        f"Throughput with monitoring on / off: **{figure:.3f}** (ratio of the "
        f"medians, its 95% bootstrap interval {low:.3f}-{high:.3f}; median of the "
        f"{len(paired)} paired rounds' ratios {paired[len(paired) // 2]:.3f}, range "
        f"{paired[0]:.3f}-{paired[-1]:.3f}; target >= 0.95).",
        "",
        f"The gateway's CPU time per answered request (all its threads), on / off: median of "
        f"the paired rounds' ratios **{cpu_paired[len(cpu_paired) // 2]:.3f}** (range "
        f"{cpu_paired[0]:.3f}-{cpu_paired[-1]:.3f}; on {sorted(cpu['on'])[len(cpu['on']) // 2]:.0f}"
        f" us, off {sorted(cpu['off'])[len(cpu['off']) // 2]:.0f} us).",
        "",
        f"In-process, deriving one image's 11 features costs {derive:.0f} us in the model "
        f"thread when the image is in the cache and {cold:.0f} us when it is not (a new image "
        f"each time, as under load: the summary reads its sample of each); recording it (the "
        f"copy to the ring) {cost:.0f} us on the event loop: {cost * off.rps / 1e4:.1f} % of "
        "one core at the unmonitored throughput.",
        "",
    ]


def record_cost(reps: int = 300, images: int = 128) -> tuple[float, float, float]:
    """Microseconds of `VersionRecorder.record` (on the event loop) and of `derive` (in the
    model thread) for a batch of one image (medians of runs): `derive` of one image again and
    again (from the cache), and of `images` images in turn (from memory, as under load)."""
    import time

    from lockgate.monitor.record import VersionRecorder
    from lockgate.types import ModelSpec, TensorSpec

    spec = ModelSpec(
        "image", "1", (TensorSpec("x", "FP32", (-1, *SHAPE)),), (TensorSpec("y", "FP32", (-1, 1)),)
    )
    recorder = VersionRecorder(spec, reps + 1)
    rng = np.random.default_rng(1)
    batches = [{"x": rng.uniform(0, 1, (1, *SHAPE)).astype(np.float32)} for _ in range(images)]
    outputs = {"y": np.zeros((1, 1), np.float32)}
    meta = recorder.meta("id", "image", "1", 0)
    times, cached, cold = [], [], []
    for _ in range(reps):
        start = time.perf_counter_ns()
        derived = recorder.derive(batches[0], [1])
        middle = time.perf_counter_ns()
        recorder.record(batches[0], outputs, [meta], [1], [0], 0, derived)
        times.append(time.perf_counter_ns() - middle)
        cached.append(middle - start)
    for i in range(reps):
        start = time.perf_counter_ns()
        recorder.derive(batches[i % images], [1])
        cold.append(time.perf_counter_ns() - start)
    return _median_us(times), _median_us(cached), _median_us(cold)


def _median_us(ns: list[int]) -> float:
    return sorted(ns)[len(ns) // 2] / 1e3


if __name__ == "__main__":
    sys.exit(main())
