"""The drain runs every `drain_interval`, or as soon as a ring's filling set passes half its
rows: a burst never waits for the interval to overflow the ring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import Monitor
from lockgate.types import ModelSpec, TensorSpec
from tests.waiting import until

SPEC = ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 1)),))


def _record(monitor: Monitor, first: int, count: int) -> None:
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


def test_a_half_full_ring_is_drained_before_the_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = MonitorConfig(predlog=False, ring_rows=8, drain_interval=3600)
        monitor = Monitor(config, tmp_path)
        monitor.attach(SPEC)
        monitor.start()
        version = monitor.versions[("m", "1")]
        ring = version.recorder.ring
        _record(monitor, 0, 4)  # half: not past it
        for _ in range(20):  # loop turns: a drain that was due would have taken the rows
            await asyncio.sleep(0)
        assert ring.pending_rows == 4
        _record(monitor, 4, 1)  # past half: drained now, not in an hour
        await until(lambda: version.rows == 5, "the half-full ring drained")
        _record(monitor, 5, 3)  # a fresh set: below half again, waits for the interval
        for _ in range(20):
            await asyncio.sleep(0)
        assert ring.pending_rows == 3 and version.rows == 5
        await monitor.close()
        assert version.rows == 8 and version.dropped == 0

    asyncio.run(scenario())
