"""A drain cancelled while its thread is still reading a ring's columns (the gateway shutting
down mid-drain) must not hand those columns back for reuse: every recorded row is still
counted exactly once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import Monitor
from lockgate.types import ModelSpec, TensorSpec

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


def test_a_cancelled_drain_loses_no_rows(tmp_path: Path) -> None:
    async def scenario() -> None:
        monitor = Monitor(MonitorConfig(predlog=False), tmp_path)
        monitor.attach(SPEC)
        busy = threading.Event()
        blocker = monitor._executor.submit(busy.wait)  # the drain thread is still on older work
        _record(monitor, 0, 3)
        first = asyncio.create_task(monitor.drain())
        await asyncio.sleep(0)  # one loop turn: the drain has taken the rows and waits
        assert monitor.versions[("m", "1")].recorder.ring.swap()[0].rows == 0
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        _record(monitor, 3, 2)
        busy.set()
        blocker.result()
        await monitor.drain()  # queued behind the cancelled drain's processing
        version = monitor.versions[("m", "1")]
        assert version.rows == 5 and version.dropped == 0
        assert version.recent is not None
        assert version.recent.request_id.tolist() == [f"r{i}".encode() for i in range(5)]
        await monitor.close()

    asyncio.run(scenario())
