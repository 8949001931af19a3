"""Shadow traffic: a copy of a request goes to a shadow variant after the primary answer is
ready. Its answer is compared with the primary's and counted, never returned. Shadow work is
bounded: beyond `max_in_flight` concurrent copies, or when the shadow's queue is busy, the copy
is shed first (and counted), so shadows can never take capacity from primary traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.errors import LockgateError
from lockgate.serve.models import ModelSet
from lockgate.serve.route import Variant
from lockgate.serve.runner import Arrays

log = logging.getLogger(__name__)
SHADOW_TIMEOUT = 10.0  # seconds a shadow copy may take before it is abandoned


@dataclass(slots=True)
class ShadowStats:
    """Counters per (endpoint, shadow variant); rows disagree when any output differs."""

    requests: int = 0
    shed: int = 0
    failed: int = 0
    rows: int = 0
    disagreeing_rows: int = 0


def disagreeing_rows(primary: Arrays, shadow: Arrays, rows: int) -> int:
    """Rows where any shared output differs beyond float noise (exact for integer outputs)."""
    differs = np.zeros(rows, dtype=bool)
    for name, a in primary.items():
        b = shadow.get(name)
        if b is None or b.shape != a.shape:
            return rows
        if a.dtype.kind in "fc":
            close = np.isclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True)
        else:
            close = a == b
        differs |= ~close.reshape(rows, -1).all(axis=1)
    return int(differs.sum())


class ShadowTraffic:
    def __init__(self, models: ModelSet, max_in_flight: int = 64) -> None:
        self.models = models
        self.max_in_flight = max_in_flight
        self.stats: defaultdict[tuple[str, str], ShadowStats] = defaultdict(ShadowStats)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def send(
        self,
        endpoint: str,
        shadow: Variant,
        feeds: Arrays,
        rows: int,
        primary: Arrays,
        request_id: str,
        received_ns: int,
        client: str = "",
    ) -> None:
        """Schedule a shadow copy; returns at once (the primary never waits for it)."""
        stats = self.stats[(endpoint, shadow.name)]
        loaded = self.models.loaded.get(shadow.key)
        busy = (
            loaded is None
            or loaded.batcher.queued_rows + rows > loaded.batcher.config.max_queue_rows // 2
        )
        if self._in_flight >= self.max_in_flight or busy:
            stats.shed += 1
            return
        assert loaded is not None
        self._in_flight += 1
        meta = None
        if loaded.recorder is not None:  # shadow answers are logged like any other
            meta = loaded.recorder.meta(request_id, endpoint, shadow.name, received_ns, client)
        task = asyncio.get_running_loop().create_task(
            self._run(loaded.batcher, stats, feeds, rows, primary, meta)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        batcher: Any,
        stats: ShadowStats,
        feeds: Arrays,
        rows: int,
        primary: Arrays,
        meta: Any,
    ) -> None:
        try:
            # Yield first so the primary response is written before the copy competes for CPU.
            await asyncio.sleep(0)
            deadline = time.monotonic() + SHADOW_TIMEOUT
            outputs, _ = await batcher.submit(feeds, rows, deadline, meta)
        except LockgateError:
            stats.failed += 1
            return
        except Exception:
            stats.failed += 1
            log.exception("shadow request failed unexpectedly")
            return
        finally:
            self._in_flight -= 1
        stats.requests += 1
        stats.rows += rows
        stats.disagreeing_rows += disagreeing_rows(primary, outputs, rows)

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
