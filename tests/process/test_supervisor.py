"""WorkerPool, the admin API's view of `--workers N`, without spawning: each "worker" is a real
channel server in this process, its life a thread with the Process interface
(multiprocessing.dummy), so that exits happen exactly when a test says."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from multiprocessing.dummy import Process
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import Snapshot, VersionSnapshot
from lockgate.process import channel
from lockgate.process.gateway import WorkerRole
from lockgate.process.supervisor import Slot, Worker, WorkerPool, _failures

ROUTE = ("e", "stable", "m", "1", "http", "ok")


def snapshot(requests: int, revision: int = 5, latencies: tuple[float, ...] = ()) -> Snapshot:
    sketch = LatencySketch()
    if latencies:
        sketch.add(np.array(latencies))
    return Snapshot(
        revision=revision,
        requests=Counter({ROUTE: requests}),
        weights={("e", "stable", "m", "1"): 100.0},
        loaded={("m", "1")},
        versions={("m", "1"): VersionSnapshot(latency={("e", "stable"): sketch}, rows=requests)},
    )


class FakeLife:
    """A worker's life: running until `end()` (a thread behind the Process interface)."""

    def __init__(self) -> None:
        self._ended = threading.Event()
        self.process = Process(target=self._ended.wait)
        self.process.start()

    def end(self) -> None:
        self._ended.set()
        self.process.join(30)


class Workers:
    """Slots whose workers answer channel calls from handlers a test gives them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[asyncio.AbstractServer] = []
        self.lives: list[FakeLife] = []
        self.sockets: list[socket.socket] = []

    async def worker(self, index: int, handlers: dict[str, Callable[..., Any]] | None) -> Worker:
        """A worker of slot `index` that answers `handlers` (None: its socket is not there)."""
        base = str(self.root / f"w{index}-{len(self.lives)}")
        sock = socket.socket()
        self.sockets.append(sock)
        role = WorkerRole(index, sock, base + ".sock", base + ".final")
        if handlers is not None:
            self.servers.append(await channel.serve(role.peer_path, handlers))
        life = FakeLife()
        self.lives.append(life)
        return Worker(life.process, role, started_at=0.0)  # type: ignore[arg-type]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for life in self.lives:
            life.end()
        for sock in self.sockets:
            sock.close()


def answering(**values: Any) -> dict[str, Callable[..., Any]]:
    """Handlers that return `values[name]` (called with the call's arguments if callable)."""

    def handler(value: Any) -> Callable[..., Any]:
        async def call(*args: Any) -> Any:
            if isinstance(value, BaseException):
                raise value
            return value(*args) if callable(value) else value

        return call

    return {name: handler(value) for name, value in values.items()}


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(tmp_path)
    yield w
    await w.close()


async def pool_of(workers: Workers, *handlers: dict[str, Callable[..., Any]] | None) -> WorkerPool:
    slots = []
    for i, h in enumerate(handlers):
        slot = Slot(i, socket.socket(), current=await workers.worker(i, h))
        workers.sockets.append(slot.sock)
        slots.append(slot)
    return WorkerPool(slots)


def test_failures_name_the_worker_and_merge_by_version() -> None:
    slots = [Slot(0, socket.socket()), Slot(1, socket.socket())]
    try:
        answers = [
            (slots[0], [["m", "1", "checksum mismatch"]]),
            (slots[1], [["m", "2", "no such file"], ["n", "1", "bad schema"]]),
        ]
        assert _failures(answers) == {
            ("m", "1"): "worker 0: checksum mismatch",
            ("m", "2"): "worker 1: no such file",
            ("n", "1"): "worker 1: bad schema",
        }
        assert _failures([(slots[0], []), (slots[1], [])]) == {}
    finally:
        for slot in slots:
            slot.sock.close()


async def test_a_change_is_applied_on_every_worker(workers: Workers) -> None:
    seen: list[tuple[int, Any]] = []

    def ensure(index: int, fails: list[list[str]]) -> Callable[[list[list[str]]], Any]:
        def call(keys: list[list[str]]) -> Any:
            seen.append((index, keys))
            return fails

        return call

    pool = await pool_of(
        workers,
        answering(ensure_loaded=ensure(0, []), apply=[]),
        answering(ensure_loaded=ensure(1, [["m", "2", "checksum mismatch"]]), apply=[]),
    )
    failures = await pool.ensure_loaded({("m", "2"), ("m", "1")})
    assert failures == {("m", "2"): "worker 1: checksum mismatch"}
    assert sorted(seen) == [(0, [["m", "1"], ["m", "2"]]), (1, [["m", "1"], ["m", "2"]])]
    assert await pool.apply(None) == {}  # type: ignore[arg-type]


async def test_a_worker_that_does_not_answer_is_skipped_an_error_is_raised(
    workers: Workers,
) -> None:
    pool = await pool_of(workers, answering(status={"index": 0, "revision": 3}), None)
    status = await pool.serving_status()
    assert [w["index"] for w in status["workers"]] == [0]  # worker 1's socket is not there
    refusing = await pool_of(
        workers,
        answering(drift_report={"windows": 1}),
        answering(drift_report=LockgateError(ErrorKind.NOT_FOUND, "monitoring is off")),
    )
    with pytest.raises(LockgateError, match="monitoring is off"):
        await refusing.drift_report("m", "1")


async def test_serving_status_reports_the_oldest_revision(workers: Workers) -> None:
    pool = await pool_of(
        workers,
        answering(status={"index": 0, "revision": 7, "requests": 10}),
        answering(status={"index": 1, "revision": 6, "requests": 4}),
    )
    pool.slots[1].restarts = 2
    status = await pool.serving_status()
    assert status["revision"] == 6  # applied everywhere only up to the slowest worker
    assert [(w["index"], w["restarts"]) for w in status["workers"]] == [(0, 0), (1, 2)]
    assert await WorkerPool([]).serving_status() == {"revision": 0, "workers": []}


async def test_one_call_goes_to_the_first_worker_that_answers(workers: Workers) -> None:
    pool = await pool_of(workers, None, answering(registered={"m": ["1", "2"]}))
    await pool.refresh_registry()
    assert pool.registered_versions() == {"m": frozenset({"1", "2"})}
    gone = await pool_of(workers, None)
    with pytest.raises(LockgateError, match="no worker process is running") as info:
        await gone.refresh_registry()
    assert info.value.kind is ErrorKind.UNAVAILABLE


async def test_recent_rows_merge_in_time_order(workers: Workers) -> None:
    def rows(*ts: float) -> dict[str, Any]:
        return {"model": "m", "version": "1", "rows": [{"ts": t, "id": f"r{t:g}"} for t in ts]}

    pool = await pool_of(
        workers, answering(recent=rows(1, 4, 6)), answering(recent=rows(2, 3, 5, 7))
    )
    doc = await pool.recent("m", "1", 4)
    assert doc["model"] == "m" and [r["ts"] for r in doc["rows"]] == [4, 5, 6, 7]
    with pytest.raises(LockgateError, match="no worker process is running"):
        await WorkerPool([]).recent("m", "1", 4)


async def test_drift_reports_one_per_worker(workers: Workers) -> None:
    pool = await pool_of(
        workers, answering(drift_report={"windows": 3}), answering(drift_report={"windows": 1})
    )
    assert await pool.drift_report("m", "1") == {
        "workers": [{"worker": 0, "windows": 3}, {"worker": 1, "windows": 1}]
    }


async def test_metrics_are_the_sum_of_every_worker(workers: Workers) -> None:
    a, b = snapshot(10, revision=5, latencies=(0.001, 0.002)), snapshot(4, revision=4)
    pool = await pool_of(
        workers, answering(snapshot=a.to_bytes()), answering(snapshot=b.to_bytes())
    )
    pool.slots[1].restarts = 1
    total = await pool.snapshot()
    assert total.requests[ROUTE] == 14 and total.processes == 2
    assert total.revision == 4 and total.restarts == 1
    assert total.versions[("m", "1")].rows == 14
    assert total.versions[("m", "1")].latency[("e", "stable")].count == 2


async def test_a_worker_that_cannot_answer_counts_with_its_last_figures(
    workers: Workers,
) -> None:
    pool = await pool_of(workers, answering(snapshot=snapshot(10).to_bytes()))
    assert (await pool.snapshot()).requests[ROUTE] == 10
    workers.servers[-1].close()  # dying or restarting: its channel no longer answers
    await workers.servers[-1].wait_closed()
    total = await pool.snapshot()
    assert total.requests[ROUTE] == 10 and total.processes == 1  # the last figures it gave


async def test_exited_workers_keep_counting_with_their_final_figures(
    workers: Workers,
) -> None:
    pool = await pool_of(workers, answering(snapshot=snapshot(3).to_bytes()))
    slot = pool.slots[0]
    # a rolling restart: the old worker drains; its final snapshot is written at exit
    old = await workers.worker(0, answering(snapshot=snapshot(8).to_bytes()))
    slot.retiring.append(old)
    assert (await pool.snapshot()).requests[ROUTE] == 11  # draining: still answering
    Path(old.role.final_path).write_bytes(snapshot(9, revision=2).to_bytes())
    workers.lives[-1].end()
    total = await pool.snapshot()  # reaps it: its final figures (9), not its last answer (8)
    assert slot.retiring == [] and total.requests[ROUTE] == 3 + 9
    assert total.processes == 1 and total.revision == 5  # an exited worker has no revision
    assert not Path(old.role.final_path).exists() and not Path(old.role.peer_path).exists()
    assert pool.retired.requests[ROUTE] == 9 and pool.retired.processes == 0
    assert (await pool.snapshot()).requests[ROUTE] == 12  # counted once, not at every scrape


async def test_a_crashed_worker_counts_with_the_last_figures_it_gave(
    workers: Workers,
) -> None:
    pool = await pool_of(workers)
    crashed = await workers.worker(0, None)
    crashed.last = snapshot(6)
    pool.retire(crashed)  # no final snapshot: it died without writing one
    pool.retire(await workers.worker(1, None))  # nothing known of it: nothing to add
    assert pool.retired.requests[ROUTE] == 6
    assert pool.retired.loaded == set() and pool.retired.weights == {}  # counters only
    assert (await pool.snapshot()).requests[ROUTE] == 6


async def test_reap_leaves_running_workers_alone(workers: Workers) -> None:
    pool = await pool_of(workers, answering(snapshot=snapshot(1).to_bytes()))
    running = await workers.worker(0, answering(snapshot=snapshot(2).to_bytes()))
    pool.slots[0].retiring.append(running)
    pool.reap()
    assert pool.slots[0].retiring == [running]
    assert pool.slots[0].workers() == [pool.slots[0].current, running]
