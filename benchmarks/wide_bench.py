"""Monitoring cost on wide inputs: one image model (FP32 [N, 3, 224, 224], a 1x1 convolution and
a global average pool, built with onnx.helper) served by two lockgate gateways side by side in
one run, the monitor on (its image summarised per row: mean, std, L2 norm, 8 projections) and
off (`--no-monitor`), loaded in alternating wrk runs with binary-extension requests of one image.
The ratio of the medians is the figure; it goes, dated with the command, to results.md.

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
import onnx
from loadgen import LUA, Result, run_tool
from onnx import TensorProto, helper, numpy_helper
from serve_bench import HERE, Bench, code_version, free_port, record

SHAPE = (3, 224, 224)


def image_model(path: Path) -> Path:
    """y[N, 1] = mean over pixels of a 1x1 convolution of the three channels."""
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


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
    Registry(home).register(image_model(bench.tmp / "image.onnx"), "image", reference=reference)
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
    for _ in range(args.rounds):
        for side, url in urls.items():
            res = wrk_binary(
                bench.tmp, url, bench.tmp / "body.bin", header, args.conns, args.duration
            )
            runs[side].append(res)
            print(
                f"monitor {side}: {res.rps:.0f} req/s (p50 {res.p50_us / 1e3:.2f} ms)", flush=True
            )
    on, off = (sorted(r, key=lambda x: x.rps)[len(r) // 2] for r in (runs["on"], runs["off"]))
    load = os.getloadavg()[0]  # other work on the host: the ratio is only as good as this
    paired = sorted(a.rps / b.rps for a, b in zip(runs["on"], runs["off"], strict=True))
    cost = record_cost()
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
        f"Throughput with monitoring on / off: **{on.rps / off.rps:.3f}** (ratio of the "
        f"medians; median of the {len(paired)} paired rounds' ratios "
        f"{paired[len(paired) // 2]:.3f}, range {paired[0]:.3f}-{paired[-1]:.3f}; target "
        ">= 0.95).",
        "",
        f"In-process, recording one image (copy to the ring with its 11 derived features) costs "
        f"{cost:.0f} us on the event loop: {cost * off.rps / 1e4:.1f} % of one core at the "
        "unmonitored throughput.",
        "",
    ]


def record_cost(reps: int = 300) -> float:
    """Microseconds of `VersionRecorder.record` for a batch of one image (median of runs)."""
    import time

    from lockgate.monitor.record import VersionRecorder
    from lockgate.types import ModelSpec, TensorSpec

    spec = ModelSpec(
        "image", "1", (TensorSpec("x", "FP32", (-1, *SHAPE)),), (TensorSpec("y", "FP32", (-1, 1)),)
    )
    recorder = VersionRecorder(spec, reps + 1)
    feeds = {"x": np.random.default_rng(1).uniform(0, 1, (1, *SHAPE)).astype(np.float32)}
    outputs = {"y": np.zeros((1, 1), np.float32)}
    meta = recorder.meta("id", "image", "1", 0)
    times = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        recorder.record(feeds, outputs, [meta], [1], [0], 0)
        times.append(time.perf_counter_ns() - start)
    return sorted(times)[reps // 2] / 1e3


if __name__ == "__main__":
    sys.exit(main())
