"""A drain cancelled while its thread is still reading a ring's columns (the gateway shutting
down mid-drain) must not hand those columns back for reuse: every recorded row is still
counted exactly once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import Monitor
from tests.monitor.recording import SPEC, record_rows


def test_a_cancelled_drain_loses_no_rows(tmp_path: Path) -> None:
    async def scenario() -> None:
        monitor = Monitor(MonitorConfig(predlog=False), tmp_path)
        monitor.attach(SPEC)
        busy = threading.Event()
        blocker = monitor._executor.submit(busy.wait)  # the drain thread is still on older work
        record_rows(monitor, 0, 3)
        first = asyncio.create_task(monitor.drain())
        await asyncio.sleep(0)  # one loop turn: the drain has taken the rows and waits
        assert monitor.versions[("m", "1")].recorder.ring.swap()[0].rows == 0
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        record_rows(monitor, 3, 2)
        busy.set()
        blocker.result()
        await monitor.drain()  # queued behind the cancelled drain's processing
        version = monitor.versions[("m", "1")]
        assert version.rows == 5 and version.dropped == 0
        assert version.recent is not None
        assert version.recent.request_id.tolist() == [f"r{i}".encode() for i in range(5)]
        await monitor.close()

    asyncio.run(scenario())
