"""Gathering batch-mates for requests handed over one at a time.

A transport that hands requests over one at a time (grpc.aio accepts one call per completion-queue
round trip) never lets batch-mates arrive while a tiny model runs, so under load every request
would pay a whole model call. Its requests, arriving at an idle model, wait for batch-mates while
the event loop is busy bringing in more (at most `gather_delay`), as long as such waits pay; a
wait that gathers too few backs the gathering off exponentially, so a lone client almost never
waits and a small convoy is not formed.
"""

from __future__ import annotations

import asyncio
import time

from lockgate.serve.queue import RequestQueue

# Measured with grpc.aio on 2 cores:
BUSY_TURN = 20e-6  # a loop turn longer than this ran other callbacks: requests are moving
# This long without a busy turn or an arrival: nobody else is coming. The next call reaches the
# loop through grpc's poller thread, which on busy cores often takes more than 50 us: a 50 us
# bound ended gathers after two or three requests (docs/design/grpc-gathering.md).
IDLE_LOOP = 150e-6
GATHER_PAYS = 3  # two batch-mates: below that, gathering a convoy costs more than it saves
MAX_GATHER_BACKOFF = 256  # after fruitless gathers, a lone client waits on one request in 257


class Gatherer:
    """One version's gathering policy: whether the next one-at-a-time request waits, and the
    wait itself. `gathers` / `fruitless` count the waits."""

    def __init__(self, delay: float, batch_rows: int, batchable: bool) -> None:
        self.delay = delay
        self.batch_rows = batch_rows
        self.enabled = delay > 0 and batchable  # only where batch-mates can share a run
        self.gathers = 0
        self.fruitless = 0
        self._skip = 0  # one-at-a-time requests to run at once before gathering again
        self._backoff = 0

    def wanted(self) -> bool:
        """For a request arriving at an idle model: wait for batch-mates?"""
        if self.enabled and not self._skip:
            return True
        self._skip = max(0, self._skip - 1)
        return False

    async def gather(self, queue: RequestQueue) -> None:
        """Let one-at-a-time requests join the first while the event loop is busy (a loop turn
        that runs other callbacks is how the next request arrives), for at most `delay` or until
        a batch is full; stop as soon as the loop has sat idle, since nobody else is coming
        then. Judge the wait by how many it gathered."""
        start = busy = previous = time.perf_counter()
        seen = len(queue)
        while queue.rows < self.batch_rows:
            await asyncio.sleep(0)
            now = time.perf_counter()
            if now - previous > BUSY_TURN or len(queue) != seen:
                busy, seen = now, len(queue)
            elif now - busy > IDLE_LOOP or now - start > self.delay:
                break
            previous = now
        self.gathers += 1
        if len(queue) >= GATHER_PAYS:
            self._backoff = 0
        else:
            self.fruitless += 1
            self._backoff = min(max(1, 2 * self._backoff), MAX_GATHER_BACKOFF)
            self._skip = self._backoff
