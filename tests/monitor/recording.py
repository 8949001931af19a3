"""One small version and single-row requests recorded into its ring, as a batcher records
them: for tests that drive a Monitor directly."""

from __future__ import annotations

import numpy as np

from lockgate.monitor.drain import Monitor
from lockgate.types import ModelSpec, TensorSpec

SPEC = ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 1)),))


def record_rows(monitor: Monitor, first: int, count: int) -> None:
    """Requests `r{first}`... of one row each, `x = [i, i]` and `y = i`, in one model run."""
    recorder = monitor.versions[("m", "1")].recorder
    rows = np.arange(first, first + count, dtype=np.float32)
    recorder.record(
        {"x": np.stack([rows, rows], axis=1)},
        {"y": rows.reshape(-1, 1)},
        [recorder.meta(f"r{i}", "m", "", 0) for i in range(first, first + count)],
        [1] * count,
        [0] * count,
        0,
    )
