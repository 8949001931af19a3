"""The drain runs every `drain_interval`, or as soon as a ring's filling set passes half its
rows: a burst never waits for the interval to overflow the ring."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import Monitor
from tests.monitor.recording import SPEC, record_rows
from tests.waiting import until


def test_a_half_full_ring_is_drained_before_the_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = MonitorConfig(predlog=False, ring_rows=8, drain_interval=3600)
        monitor = Monitor(config, tmp_path)
        monitor.attach(SPEC)
        monitor.start()
        version = monitor.versions[("m", "1")]
        ring = version.recorder.ring
        record_rows(monitor, 0, 4)  # half: not past it
        for _ in range(20):  # loop turns: a drain that was due would have taken the rows
            await asyncio.sleep(0)
        assert ring.pending_rows == 4
        record_rows(monitor, 4, 1)  # past half: drained now, not in an hour
        await until(lambda: version.rows == 5, "the half-full ring drained")
        record_rows(monitor, 5, 3)  # a fresh set: below half again, waits for the interval
        for _ in range(20):
            await asyncio.sleep(0)
        assert ring.pending_rows == 3 and version.rows == 5
        await monitor.close()
        assert version.rows == 8 and version.dropped == 0

    asyncio.run(scenario())
