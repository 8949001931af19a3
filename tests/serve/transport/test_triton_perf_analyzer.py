"""Triton's perf_analyzer (the binary shipped in the tritonclient wheel) against a real gateway,
over HTTP and gRPC, unchanged: it reads the model's metadata and configuration, sends load, and
reads the server-side statistics of every measurement window.

perf_analyzer links the CUDA runtime even against a CPU server: the library comes from the
`nvidia-cuda-runtime-cu12` wheel (dev extra), put on LD_LIBRARY_PATH for the call only; its
libb64 from Debian's libb64-0d (tools/ensure-perf-analyzer.sh, run by `make test`)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningGateway

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"
# Bounded: windows end after a count of requests (never on the clock), 3 of them; and the
# machine's speed must not matter, so any three windows count as "stable" (perf_analyzer gives
# up otherwise): their max / min within 1000x.
BOUNDS = [
    "--measurement-mode",
    "count_windows",
    "--measurement-request-count",
    "200",
    "--max-trials",
    "3",
    "--stability-percentage",
    "100000",
]


def cuda_runtime_lib() -> str:
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    assert spec is not None and spec.submodule_search_locations, "nvidia-cuda-runtime-cu12"
    return str(Path(next(iter(spec.submodule_search_locations))) / "lib")


def perf_analyzer(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (cuda_runtime_lib(), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return subprocess.run(
        [str(PERF_ANALYZER), *args], env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_lockgate(gateway: RunningGateway, protocol: str) -> None:
    url = gateway.http if protocol == "http" else gateway.grpc
    before = gateway.dataplane.batch_stats("mlp", "1").requests
    result = perf_analyzer(
        "-m", "mlp", "-u", url, "-i", protocol, "-b", "4", "--concurrency-range", "2", *BOUNDS
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    assert throughput is not None and float(throughput.group(1)) > 0, output
    # The server-side figures come from the statistics extension: perf_analyzer prints them
    # only when it could read them for every window.
    assert re.search(r"Server:\s+Inference count: \d+", output), output
    assert gateway.dataplane.batch_stats("mlp", "1").requests - before >= 200
