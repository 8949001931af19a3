"""The admin API's view of all worker processes: `ServingControl` and `MonitorView` over each
worker's channel. A change is loaded and applied on every worker before the admin call answers,
and `/metrics` is the exact sum of every worker's figures (:mod:`lockgate.monitor.snapshot`),
including the final figures of workers that have exited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from lockgate.control.state import State
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.snapshot import Snapshot, merged
from lockgate.process.channel import WorkerChannel
from lockgate.process.gateway import WorkerRole

log = logging.getLogger(__name__)
Key = tuple[str, str]
T = TypeVar("T")


@dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    process: BaseProcess
    role: WorkerRole
    started_at: float
    last: Snapshot | None = None  # the newest snapshot it answered

    @property
    def channel(self) -> WorkerChannel:
        return WorkerChannel(self.role.peer_path)


@dataclass
class Slot:
    """One worker position: its listening socket outlives the processes that serve it."""

    index: int
    sock: socket.socket
    current: Worker | None = None
    retiring: list[Worker] = field(default_factory=list)  # draining after a handover
    incarnation: int = 0
    restarts: int = 0
    quick_failures: int = 0  # consecutive deaths soon after start: back off
    restart_at: float = 0.0
    handover: bool = False  # a rolling restart is replacing this slot's worker

    def workers(self) -> list[Worker]:
        """Every process of this slot that may still be running."""
        return ([self.current] if self.current else []) + self.retiring


class WorkerPool:
    """The admin API's view of all workers: ServingControl and MonitorView over peer calls."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.retired = Snapshot(processes=0)  # counts of exited workers
        self._registered: dict[str, frozenset[str]] = {}

    def live(self) -> list[tuple[Slot, Worker]]:
        return [(s, s.current) for s in self.slots if s.current is not None]

    async def _each(self, call: Callable[[WorkerChannel], Awaitable[T]]) -> list[tuple[Slot, T]]:
        """Call every current worker; one that fails to answer is skipped and logged."""
        live = self.live()
        results = await asyncio.gather(*(call(w.channel) for _, w in live), return_exceptions=True)
        answered = []
        for (slot, _), result in zip(live, results, strict=True):
            if isinstance(result, LockgateError):
                raise result
            if isinstance(result, BaseException):
                log.warning("worker %d did not answer: %s", slot.index, result)
                continue
            answered.append((slot, result))
        return answered

    async def _one(self, call: Callable[[WorkerChannel], Awaitable[T]]) -> T:
        for slot, worker in self.live():
            try:
                return await call(worker.channel)
            except (OSError, TimeoutError) as exc:
                log.warning("worker %d did not answer: %s", slot.index, exc)
        raise LockgateError(ErrorKind.UNAVAILABLE, "no worker process is running")

    def retire(self, worker: Worker) -> None:
        """Keep an exited worker's counts: its final snapshot, else the last one it answered
        (a crashed worker's counts since then are lost with it)."""
        last = _read_final(worker.role) or worker.last
        if last is not None:
            self.retired.merge(last.counters())
        for path in (worker.role.peer_path, worker.role.final_path):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def reap(self) -> None:
        """Retire draining workers that have exited."""
        for slot in self.slots:
            for worker in [w for w in slot.retiring if not w.process.is_alive()]:
                slot.retiring.remove(worker)
                self.retire(worker)

    # -- ServingControl ---------------------------------------------------------------------------
    async def refresh_registry(self) -> None:
        self._registered = await self._one(WorkerChannel.registered)

    def registered_versions(self) -> dict[str, frozenset[str]]:
        return self._registered

    async def ensure_loaded(self, keys: set[Key]) -> dict[Key, str]:
        return _failures(await self._each(lambda ch: ch.ensure_loaded(keys)))

    async def apply(self, state: State) -> dict[Key, str]:
        return _failures(await self._each(lambda ch: ch.apply(state)))

    async def serving_status(self) -> dict[str, Any]:
        statuses = [
            {**status, "restarts": slot.restarts}
            for slot, status in await self._each(WorkerChannel.status)
        ]
        return {
            "revision": min((s["revision"] for s in statuses), default=0),
            "workers": sorted(statuses, key=lambda s: s["index"]),
        }

    async def snapshot(self) -> Snapshot:
        """Every worker's figures, draining ones included; a worker that cannot answer right
        now (dying, restarting) counts with the last figures it gave."""
        self.reap()
        workers = [w for s in self.slots for w in s.workers()]
        answers = await asyncio.gather(
            *(w.channel.snapshot() for w in workers), return_exceptions=True
        )
        for worker, answer in zip(workers, answers, strict=True):
            if isinstance(answer, Snapshot):
                worker.last = answer
        total = merged([self.retired, *(w.last for w in workers if w.last is not None)])
        total.restarts = sum(s.restarts for s in self.slots)
        return total

    # -- MonitorView ------------------------------------------------------------------------------
    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        """Each worker scores windows of its own share of the traffic: one report per worker."""
        answers = await self._each(lambda ch: ch.drift_report(model, version))
        return {"workers": [{"worker": slot.index, **report} for slot, report in answers]}

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        answers = await self._each(lambda ch: ch.recent(model, version, limit))
        if not answers:
            raise LockgateError(ErrorKind.UNAVAILABLE, "no worker process is running")
        rows = sorted((r for _, doc in answers for r in doc["rows"]), key=lambda r: r["ts"])
        return {**answers[0][1], "rows": rows[-limit:]}


def _failures(answers: list[tuple[Slot, dict[Key, str]]]) -> dict[Key, str]:
    return {
        key: f"worker {slot.index}: {why}" for slot, found in answers for key, why in found.items()
    }


def _read_final(role: WorkerRole) -> Snapshot | None:
    try:
        return Snapshot.from_bytes(Path(role.final_path).read_bytes())
    except (OSError, ValueError):
        return None
