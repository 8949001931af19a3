"""WorkerPool without spawning processes: workers answering over real unix sockets in this
process. A change reaches every worker, failures are named by worker, and /metrics figures are
the sum of the workers', exited ones included. Where a worker's life matters it is a thread
behind the Process interface (multiprocessing.dummy), so that exits happen exactly when a test
says."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator
from multiprocessing.dummy import Process
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.control.state import State
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.sketch import LatencySketch
from lockgate.monitor.snapshot import Snapshot, VersionSnapshot
from lockgate.process import channel
from lockgate.process.channel import Hello
from lockgate.process.gateway import WorkerRole
from lockgate.process.pool import Slot, Worker, WorkerPool, _failures
from tests.process.test_channel import STATE, RecordingWorker

Key = tuple[str, str]
ROUTE = ("e", "stable", "m", "1", "http", "ok")


async def test_the_pool_speaks_to_every_worker(tmp_path: Path) -> None:
    workers = [RecordingWorker(), RecordingWorker()]
    servers, slots = [], []
    for i, worker in enumerate(workers):
        path = str(tmp_path / f"w{i}.sock")
        servers.append(await channel.serve(path, worker))
        role = WorkerRole(i, socket.socket(), path, str(tmp_path / f"w{i}.final"))
        # the process is never started or asked about here: the pool reaches workers by path
        process = multiprocessing.current_process()
        slots.append(Slot(i, role.http_socket, current=Worker(process, role, 0.0)))
    pool = WorkerPool(slots)
    try:
        assert await pool.apply(STATE) == {}
        assert all(w.applied == [STATE] for w in workers)  # the state given, to each worker
        failures = await pool.ensure_loaded({("m", "2")})
        assert failures == {("m", "2"): "worker 1: checksum mismatch"}  # the last answer names it
        snap = await pool.snapshot()
        assert snap.requests[("e", "a", "m", "1", "http", "ok")] == 10 and snap.processes == 2
        status = await pool.serving_status()
        assert [w["index"] for w in status["workers"]] == [3, 3] and status["revision"] == 7
        await pool.refresh_registry()
        assert pool.registered_versions() == {"m": frozenset({"1", "2"})}
        with pytest.raises(LockgateError) as missing:
            await pool.drift_report("m", "1")
        assert missing.value.kind is ErrorKind.NOT_FOUND
    finally:
        for server in servers:
            server.close()
        for slot in slots:
            slot.sock.close()


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


class Answering:
    """A WorkerService that answers each call with `values[name]`: raised if an exception,
    called with the call's arguments if callable, returned as it is otherwise."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def _answer(self, name: str, *args: Any) -> Any:
        value = self.values[name]
        if isinstance(value, BaseException):
            raise value
        return value(*args) if callable(value) else value

    async def hello(self) -> Hello:
        return Hello(0, 0, True)

    async def snapshot(self) -> Snapshot:
        answer: Snapshot = self._answer("snapshot")
        return answer

    async def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._answer("status")
        return answer

    async def registered(self) -> dict[str, frozenset[str]]:
        answer: dict[str, frozenset[str]] = self._answer("registered")
        return answer

    async def ensure_loaded(self, keys: set[Key]) -> dict[Key, str]:
        answer: dict[Key, str] = self._answer("ensure_loaded", keys)
        return answer

    async def apply(self, state: State) -> dict[Key, str]:
        answer: dict[Key, str] = self._answer("apply", state)
        return answer

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._answer("drift_report", model, version)
        return answer

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._answer("recent", model, version, limit)
        return answer


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
    """Workers that answer channel calls as a test's Answering says."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[asyncio.AbstractServer] = []
        self.lives: list[FakeLife] = []
        self.sockets: list[socket.socket] = []

    async def worker(self, index: int, service: Answering | None) -> Worker:
        """A worker of slot `index` that answers as `service` (None: its socket is not there)."""
        base = str(self.root / f"w{index}-{len(self.lives)}")
        sock = socket.socket()
        self.sockets.append(sock)
        role = WorkerRole(index, sock, base + ".sock", base + ".final")
        if service is not None:
            self.servers.append(await channel.serve(role.peer_path, service))
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


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(tmp_path)
    yield w
    await w.close()


async def pool_of(workers: Workers, *services: Answering | None) -> WorkerPool:
    slots = []
    for i, service in enumerate(services):
        slot = Slot(i, socket.socket(), current=await workers.worker(i, service))
        workers.sockets.append(slot.sock)
        slots.append(slot)
    return WorkerPool(slots)


def test_failures_name_the_worker_and_merge_by_version() -> None:
    slots = [Slot(0, socket.socket()), Slot(1, socket.socket())]
    try:
        answers = [
            (slots[0], {("m", "1"): "checksum mismatch"}),
            (slots[1], {("m", "2"): "no such file", ("n", "1"): "bad schema"}),
        ]
        assert _failures(answers) == {
            ("m", "1"): "worker 0: checksum mismatch",
            ("m", "2"): "worker 1: no such file",
            ("n", "1"): "worker 1: bad schema",
        }
        assert _failures([(slots[0], {}), (slots[1], {})]) == {}
    finally:
        for slot in slots:
            slot.sock.close()


async def test_a_change_is_loaded_on_every_worker(workers: Workers) -> None:
    seen: list[tuple[int, set[Key]]] = []

    def ensure(index: int, fails: dict[Key, str]) -> Any:
        def call(keys: set[Key]) -> dict[Key, str]:
            seen.append((index, keys))
            return fails

        return call

    pool = await pool_of(
        workers,
        Answering(ensure_loaded=ensure(0, {}), apply={}),
        Answering(ensure_loaded=ensure(1, {("m", "2"): "checksum mismatch"}), apply={}),
    )
    keys = {("m", "2"), ("m", "1")}
    failures = await pool.ensure_loaded(keys)
    assert failures == {("m", "2"): "worker 1: checksum mismatch"}
    assert sorted(seen) == [(0, keys), (1, keys)]
    assert await pool.apply(STATE) == {}


async def test_a_worker_that_does_not_answer_is_skipped_an_error_is_raised(
    workers: Workers,
) -> None:
    pool = await pool_of(workers, Answering(status={"index": 0, "revision": 3}), None)
    status = await pool.serving_status()
    assert [w["index"] for w in status["workers"]] == [0]  # worker 1's socket is not there
    refusing = await pool_of(
        workers,
        Answering(drift_report={"windows": 1}),
        Answering(drift_report=LockgateError(ErrorKind.NOT_FOUND, "monitoring is off")),
    )
    with pytest.raises(LockgateError, match="monitoring is off"):
        await refusing.drift_report("m", "1")


async def test_serving_status_reports_the_oldest_revision(workers: Workers) -> None:
    pool = await pool_of(
        workers,
        Answering(status={"index": 0, "revision": 7, "requests": 10}),
        Answering(status={"index": 1, "revision": 6, "requests": 4}),
    )
    pool.slots[1].restarts = 2
    status = await pool.serving_status()
    assert status["revision"] == 6  # applied everywhere only up to the slowest worker
    assert [(w["index"], w["restarts"]) for w in status["workers"]] == [(0, 0), (1, 2)]
    assert await WorkerPool([]).serving_status() == {"revision": 0, "workers": []}


async def test_one_call_goes_to_the_first_worker_that_answers(workers: Workers) -> None:
    pool = await pool_of(workers, None, Answering(registered={"m": frozenset({"1", "2"})}))
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
        workers, Answering(recent=rows(1, 4, 6)), Answering(recent=rows(2, 3, 5, 7))
    )
    doc = await pool.recent("m", "1", 4)
    assert doc["model"] == "m" and [r["ts"] for r in doc["rows"]] == [4, 5, 6, 7]
    with pytest.raises(LockgateError, match="no worker process is running"):
        await WorkerPool([]).recent("m", "1", 4)


async def test_drift_reports_one_per_worker(workers: Workers) -> None:
    pool = await pool_of(
        workers, Answering(drift_report={"windows": 3}), Answering(drift_report={"windows": 1})
    )
    assert await pool.drift_report("m", "1") == {
        "workers": [{"worker": 0, "windows": 3}, {"worker": 1, "windows": 1}]
    }


async def test_metrics_are_the_sum_of_every_worker(workers: Workers) -> None:
    a, b = snapshot(10, revision=5, latencies=(0.001, 0.002)), snapshot(4, revision=4)
    pool = await pool_of(workers, Answering(snapshot=a), Answering(snapshot=b))
    pool.slots[1].restarts = 1
    total = await pool.snapshot()
    assert total.requests[ROUTE] == 14 and total.processes == 2
    assert total.revision == 4 and total.restarts == 1
    assert total.versions[("m", "1")].rows == 14
    assert total.versions[("m", "1")].latency[("e", "stable")].count == 2


async def test_a_worker_that_cannot_answer_counts_with_its_last_figures(
    workers: Workers,
) -> None:
    pool = await pool_of(workers, Answering(snapshot=snapshot(10)))
    assert (await pool.snapshot()).requests[ROUTE] == 10
    workers.servers[-1].close()  # dying or restarting: its channel no longer answers
    await workers.servers[-1].wait_closed()
    total = await pool.snapshot()
    assert total.requests[ROUTE] == 10 and total.processes == 1  # the last figures it gave


async def test_exited_workers_keep_counting_with_their_final_figures(
    workers: Workers,
) -> None:
    pool = await pool_of(workers, Answering(snapshot=snapshot(3)))
    slot = pool.slots[0]
    # a rolling restart: the old worker drains; its final snapshot is written at exit
    old = await workers.worker(0, Answering(snapshot=snapshot(8)))
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
    pool = await pool_of(workers, Answering(snapshot=snapshot(1)))
    running = await workers.worker(0, Answering(snapshot=snapshot(2)))
    pool.slots[0].retiring.append(running)
    pool.reap()
    assert pool.slots[0].retiring == [running]
    assert pool.slots[0].workers() == [pool.slots[0].current, running]
