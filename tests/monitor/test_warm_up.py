"""The monitor's kernels are compiled before a gateway reports ready: started on an empty Numba
cache, a real gateway has compiled every kernel the drain and the request path call, and serving
and draining traffic (windows closed by rows and by time, a string input, wide FP32, FP64 and
UINT8 inputs sent as JSON and as binary data) compiles nothing more. A second start on the same
cache reads every kernel from it and compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto

from lockgate.control.registry import Registry
from tests import onnx_models
from tests.monitor.kernel_probe import PIXELS, WIDE64
from tests.monitor.test_gateway_wide import SHAPE, WORDS, images, multi_rows

ROOT = Path(__file__).resolve().parents[2]
# What the drain and the request path call from Python (the kernels they call compile with them)
ENTRY_POINTS = {
    "timing.request_rows",  # assembling a drained ring
    "timing.first_rows_by_route",
    "ddsketch.sketch_add",  # latency sketches
    "window.fold_rows",  # drift windows closed by rows
    "divergence.drift_scores",  # ... and by time
    "exact.exact_scores",
    "rule.window_rule",
    "rule.hysteresis_step",
    "rff.rff_update",  # joint drift: the profile at load
    "rff.rff_fold",  # ... the windows closed by rows
    "rff.rff_score",  # ... and by time
    "rff.rff_threshold",
    "summary.fnv1a_buckets",  # string inputs, on the request path
    "summary.wide_summary",  # wide inputs, in the model thread
}


def probe(home: Path, cache: Path) -> dict[str, Any]:
    """Run tests/monitor/kernel_probe.py in a fresh process on the Numba cache `cache`."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.monitor.kernel_probe", str(home)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def total(reading: dict[str, Any], field: str) -> int:
    return sum(kernel[field] for kernel in reading.values())


def test_kernels_are_compiled_before_ready_and_read_from_the_cache_later(tmp_path: Path) -> None:
    home, cache = tmp_path / "home", tmp_path / "numba-cache"
    registry = Registry(home)
    rng = np.random.default_rng(4)
    scale = onnx_models.scale_model(tmp_path / "scale.onnx")
    registry.register(scale, "scale", reference=rng.normal(size=(600, 4)))
    multi = onnx_models.multi_io_model(tmp_path / "multi.onnx")
    registry.register(multi, "multi", reference=multi_rows(rng, 600, WORDS))
    image = onnx_models.image_model(tmp_path / "image.onnx", SHAPE)
    registry.register(image, "image", reference=images(rng, 100).reshape(100, -1))
    wide64 = onnx_models.scale_model(tmp_path / "wide64.onnx", WIDE64, TensorProto.DOUBLE)
    registry.register(wide64, "wide64", reference=rng.normal(size=(100, WIDE64)))
    pixels = onnx_models.pixel_model(tmp_path / "pixels.onnx", PIXELS)
    registry.register(pixels, "pixels", reference=rng.integers(0, 256, size=(100, PIXELS)))
    assert not cache.exists()

    cold = probe(home, cache)
    assert total(cold["before"], "compiled") == 0  # nothing ran before the gateway started
    compiled = {name for name, k in cold["ready"].items() if k["signatures"]}
    assert ENTRY_POINTS - compiled == set()
    assert total(cold["ready"], "cached") == 0 and total(cold["ready"], "compiled") > 0
    assert cold["after"] == cold["ready"]  # serving and draining compiled nothing more
    assert any(cache.rglob("*.nbi"))  # the compiled code went to the cache

    warm = probe(home, cache)
    assert total(warm["ready"], "compiled") == 0  # every kernel read from the cache
    assert total(warm["ready"], "cached") > 0
    assert {name for name, k in warm["after"].items() if k["compiled"]} == set()
