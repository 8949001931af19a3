"""Compile the monitor's Numba kernels at start, before the gateway reports ready.

A kernel compiles on its first call with each new argument type signature, holding the GIL (and,
from the drain, the monitor's lock) for seconds: left to the first drain, that stalls every
request in flight and the `/metrics` scrapes waiting for the lock. The on-disk cache
(:mod:`lockgate.monitor.kernels.cache`, shared safely by the gateway's processes) saves the
compiling on later starts, but a new container or a fresh install starts with an empty cache.

So start-up runs the real code paths once on a throwaway monitor: two synthetic versions (a numeric
one with an output profile and joint drift, and one with summarised inputs: a string, and wide
FP32, FP64 and UINT8 ones, recorded both writeable and read-only as binary requests decode them)
are attached with reference data, a few hundred rows are recorded through their rings and
drained, and their windows are closed by rows (in the drain's compiled fold) and by time (scored
from Python). The kernels are called by the very code the drain and the request path run, so
they see the same argument types (array dtypes, layouts, read-only profile arrays) and nothing
compiles later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from lockgate.config import MonitorConfig
from lockgate.monitor import drain
from lockgate.monitor.kernels import (
    ddsketch,
    divergence,
    exact,
    histogram,
    rff,
    rule,
    summary,
    timing,
    window,
)
from lockgate.types import ModelSpec, TensorSpec

log = logging.getLogger(__name__)
Array = np.ndarray[Any, Any]

KERNEL_MODULES = (ddsketch, divergence, exact, histogram, rff, rule, summary, timing, window)
REFERENCE_ROWS = 400
WIDE = 300  # values per row of the wide inputs: more than the monitor follows one by one
# A window of WINDOW_ROWS closes in the compiled fold and MIN_ROWS more stay open, to be closed
# (and scored) by time; the drift configuration's default min_rows is 100.
WINDOW_ROWS = 200
MIN_ROWS = 100
_NUMERIC = ModelSpec(
    "lockgate-warm-up",
    "1",
    (TensorSpec("x", "FP32", (-1, 4)),),
    (TensorSpec("y", "FP32", (-1, 2)),),
)
_SUMMARISED = ModelSpec(
    "lockgate-warm-up-summarised",
    "1",
    (
        TensorSpec("s", "BYTES", (-1, 1)),
        TensorSpec("x", "FP32", (-1, 2)),
        TensorSpec("image", "FP32", (-1, WIDE)),
        TensorSpec("embedding", "FP64", (-1, WIDE)),
        TensorSpec("pixels", "UINT8", (-1, WIDE)),
    ),
    (TensorSpec("y", "FP32", (-1, 1)),),
)


@dataclass(frozen=True)
class Warmed:
    """What the warm-up did: its duration, and how many kernel signatures were compiled or read
    from Numba's on-disk cache meanwhile (a version loading at the same time counts too; both
    are zero when an earlier call already had them)."""

    seconds: float
    compiled: int
    cached: int


def kernels() -> dict[str, Any]:
    """Every Numba dispatcher of the monitor's kernels, by qualified name."""
    return {
        f"{module.__name__.rsplit('.', 1)[1]}.{name}": value
        for module in KERNEL_MODULES
        for name, value in vars(module).items()
        if isinstance(value, numba.core.registry.CPUDispatcher)
        and value.py_func.__module__ == module.__name__
    }


_warmed = False  # this process has run the warm-up: its dispatchers keep what they compiled


def warm_up() -> Warmed:
    """Run every kernel the drain and the request path use once (blocking: call it off the
    event loop). Once per process: a later gateway in the same process finds them compiled."""
    global _warmed
    if _warmed:
        return Warmed(0.0, 0, 0)
    start = time.perf_counter()
    before = _cache_counts()
    asyncio.run(_exercise())
    compiled, cached = (after - was for after, was in zip(_cache_counts(), before, strict=True))
    _warmed = True
    return Warmed(time.perf_counter() - start, compiled, cached)


def _cache_counts() -> tuple[int, int]:
    """(signatures compiled, signatures loaded from the on-disk cache) over every kernel."""
    stats = [dispatcher.stats for dispatcher in kernels().values()]
    return (
        sum(sum(s.cache_misses.values()) for s in stats),
        sum(sum(s.cache_hits.values()) for s in stats),
    )


async def _exercise() -> None:
    config = MonitorConfig(
        ring_rows=2 * WINDOW_ROWS,
        predlog=False,
        drift_window_rows=WINDOW_ROWS,
        feedback_window=2 * WINDOW_ROWS,
    )
    monitor = drain.Monitor(config, Path("."))  # no prediction log: nothing is written
    rng = np.random.default_rng(0)
    try:
        numeric = monitor.attach(_NUMERIC, rng.normal(size=(REFERENCE_ROWS, 4)), _predict)
        summarised = monitor.attach(_SUMMARISED, _summarised_rows(rng, REFERENCE_ROWS))
        rows = WINDOW_ROWS + MIN_ROWS
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        _record(numeric, {"x": x}, _predict({"x": x}), rows)
        feeds = _summarised_rows(rng, rows)
        feeds["x"] = feeds["x"].astype(np.float32)
        feeds["image"] = feeds["image"].astype(np.float32)
        half = rows // 2
        for part, decoded in ((slice(0, half), False), (slice(half, rows), True)):
            run = {k: _read_only(v[part]) if decoded else v[part] for k, v in feeds.items()}
            _record(summarised, run, {"y": feeds["x"][part, :1]}, len(run["x"]))
        await monitor.drain()
        whole = monitor.versions[(_NUMERIC.name, _NUMERIC.version)]
        if whole.input_drift is None or whole.output_drift is None or whole.joint_drift is None:
            raise RuntimeError("the warm-up version lacks a drift monitor (its profile failed)")
        for vm in monitor.versions.values():  # close the open windows by time, as ticks do
            for drift in (vm.input_drift, vm.output_drift, vm.joint_drift):
                if drift is not None:
                    drift.tick(math.inf)
    finally:
        await monitor.close()


def _predict(feeds: dict[str, Array]) -> dict[str, Array]:
    return {"y": (feeds["x"][:, :2] * 2.0).astype(np.float32)}


def _summarised_rows(rng: np.random.Generator, rows: int) -> dict[str, Array]:
    words = np.array([f"w{i}" for i in range(20)], dtype=object)
    return {
        "s": rng.choice(words, size=(rows, 1)),
        "x": rng.normal(size=(rows, 2)),
        "image": rng.uniform(0, 1, size=(rows, WIDE)),
        "embedding": rng.normal(size=(rows, WIDE)),
        "pixels": rng.integers(0, 256, size=(rows, WIDE), dtype=np.uint8),
    }


def _read_only(values: Array) -> Array:
    """A numeric array as a binary request's decoding gives it: read-only, over bytes (Numba
    compiles a kernel apart for read-only arrays)."""
    if values.dtype.kind == "O":
        return values
    return np.frombuffer(values.tobytes(), values.dtype).reshape(values.shape)


def _record(recorder: Any, feeds: dict[str, Array], outputs: dict[str, Array], rows: int) -> None:
    """`rows` single-row requests in one model run, as a batcher records them."""
    now = time.perf_counter_ns()
    metas = [recorder.meta(f"warm-up-{i}", "warm-up", "a", now) for i in range(rows)]
    recorder.record(feeds, outputs, metas, [1] * rows, [now] * rows, now)
