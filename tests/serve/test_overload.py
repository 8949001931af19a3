"""The batcher under overload, deterministically: admission against the expected wait and the
deadline, the queue discipline (newest first when standing, stale and hopeless requests dropped
without running), and the model thread chaining full batches.

The model thread is held by a gate (a one-thread executor busy until the test opens it), so what
the queue holds when the model next runs is decided by the test, not by timing; the queue's clock
is shifted by hand where a test needs time to pass. An observer records every request the model
really ran."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.config import BatchConfig, RunnerConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.batch import Batcher
from lockgate.serve.runner import ModelRunner
from lockgate.types import ModelSpec, TensorSpec
from tests import onnx_models
from tests.waiting import until

SCALE = ModelSpec(
    "scale", "1", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),)
)
FAR = 3600.0  # seconds: a deadline no test reaches


class Clock:
    """time.monotonic, shifted by hand: the batcher's queue sees time pass, the loop's timers
    (real deadlines) do not."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


class Gate:
    """A one-thread executor whose thread is busy until `open()`."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1)
        self._event = threading.Event()
        self.executor.submit(self._event.wait, 60)

    def open(self) -> None:
        self._event.set()


class Ran:
    """A BatchObserver: the metas of every request the model ran, in order."""

    def __init__(self) -> None:
        self.metas: list[Any] = []

    def derive(self, feeds: Any, rows: list[int]) -> list[Any]:
        return []

    def record(self, feeds: Any, outputs: Any, metas: list[Any], *rest: Any) -> None:
        self.metas.extend(metas)


def loaded_runner(tmp_path: Path) -> ModelRunner:
    runner = ModelRunner(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), RunnerConfig(1))
    runner.load()
    return runner


def gated(
    tmp_path: Path,
    clock: Callable[[], float] | None = None,
    runner: ModelRunner | None = None,
    **batch: Any,
) -> tuple[Batcher, Gate, Ran]:
    runner = runner if runner is not None else loaded_runner(tmp_path)
    gate, ran = Gate(), Ran()
    config = BatchConfig(inline_threshold=0.0, **batch)  # every batch goes to the model thread
    batcher = Batcher(runner, config, gate.executor, ran, clock=clock or time.monotonic)
    return batcher, gate, ran


def rows(value: float, n: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((n, 4), value, np.float32)}


async def hold_first(b: Batcher, clock: Callable[[], float]) -> asyncio.Task[Any]:
    """Submit request 'first' and wait until the model thread has taken it (and is held)."""
    first = asyncio.create_task(b.submit(rows(0), 1, clock() + FAR, "first"))
    await until(
        lambda: b._task is not None and not b.queue, "the model thread to take the first request"
    )
    return first


def queue(b: Batcher, clock: Callable[[], float], *names: str) -> list[asyncio.Task[Any]]:
    return [
        asyncio.create_task(b.submit(rows(i + 1), 1, clock() + FAR, name))
        for i, name in enumerate(names)
    ]


async def test_a_request_that_cannot_meet_its_deadline_is_refused_and_never_runs(
    tmp_path: Path,
) -> None:
    b, gate, ran = gated(tmp_path, max_batch_rows=1)
    first = await hold_first(b, time.monotonic)
    waiting = queue(b, time.monotonic, "a", "b")
    await until(lambda: b.queued_rows == 2, "2 queued rows")
    # Expected: two runs ahead, then its own; its deadline leaves room for half of that.
    cost = b.runner.predicted_cost(1)
    with pytest.raises(LockgateError) as refused:
        await b.submit(rows(9), 1, time.monotonic() + 1.5 * cost, "late")
    assert refused.value.kind is ErrorKind.DEADLINE
    assert "deadline too close" in refused.value.message
    # Judged before its body is read, with the same estimate (a gRPC deadline):
    with pytest.raises(LockgateError) as early:
        b.admit(time.monotonic() + 1.5 * cost)
    assert early.value.kind is ErrorKind.DEADLINE
    b.admit(None)  # no deadline known (HTTP): nothing to refuse yet
    b.admit(time.monotonic() + FAR)
    gate.open()
    for task, value in zip([first, *waiting], [0, 1, 2], strict=True):
        out, _ = await task
        np.testing.assert_array_equal(out["y"], rows(value)["x"] * 2)
    assert ran.metas == ["first", "a", "b"] and b.stats.expired == 2


async def test_admission_refuses_an_expected_wait_beyond_max_queue_wait(tmp_path: Path) -> None:
    runner = loaded_runner(tmp_path)
    cost = runner.predicted_cost(1)  # this runner's own cost model: what its batcher predicts
    # Room for one queued run, not two; a clock that stands still keeps what is queued fresh.
    t0 = time.monotonic()
    b, gate, _ = gated(tmp_path, lambda: t0, runner, max_batch_rows=1, max_queue_wait=1.5 * cost)
    first = await hold_first(b, time.monotonic)
    waiting = queue(b, time.monotonic, "a", "b")
    await until(lambda: b.queued_rows == 2, "2 queued rows")
    shed = b.stats.shed
    with pytest.raises(LockgateError) as refused:
        b.admit()
    assert refused.value.kind is ErrorKind.OVERLOADED and refused.value.retry_after
    assert "expected wait" in refused.value.message and b.stats.shed == shed + 1
    with pytest.raises(LockgateError) as also:
        await b.submit(rows(3), 1, time.monotonic() + FAR, "c")
    assert also.value.kind is ErrorKind.OVERLOADED
    gate.open()
    await asyncio.gather(first, *waiting)


async def test_requests_that_waited_over_max_queue_wait_are_shed_without_running(
    tmp_path: Path,
) -> None:
    clock = Clock()
    b, gate, ran = gated(tmp_path, clock, max_batch_rows=1, max_queue_wait=10.0)
    first = await hold_first(b, clock)
    stale = queue(b, clock, "a", "b", "c")
    await until(lambda: b.queued_rows == 3, "3 queued rows")
    clock.shift = 10.5  # they have waited over max_queue_wait
    gate.open()
    await first
    for task in stale:
        with pytest.raises(LockgateError) as shed:
            await task
        assert shed.value.kind is ErrorKind.OVERLOADED and shed.value.retry_after
        assert "queued over 10000 ms" in shed.value.message
    assert ran.metas == ["first"] and b.stats.shed == 3 and b.queued_rows == 0


@pytest.mark.parametrize(
    ("waited", "order"),
    [
        (4.0, ["first", "old1", "old2", "new1", "new2"]),
        (6.0, ["first", "new2", "new1", "old2", "old1"]),
    ],
    ids=["draining-oldest-first", "standing-newest-first"],
)
async def test_a_standing_queue_is_served_newest_first(
    tmp_path: Path, waited: float, order: list[str]
) -> None:
    clock = Clock()
    b, gate, ran = gated(tmp_path, clock, max_batch_rows=1, max_queue_wait=10.0)
    first = await hold_first(b, clock)
    old = queue(b, clock, "old1", "old2")
    await until(lambda: b.queued_rows == 2, "2 queued rows")
    clock.shift = waited  # standing once the oldest has waited over half of max_queue_wait
    new = queue(b, clock, "new1", "new2")
    await until(lambda: b.queued_rows == 4, "4 queued rows")
    gate.open()
    await asyncio.gather(first, *old, *new)
    assert ran.metas == order and b.queue.standing == (waited > 5.0)


async def test_a_queued_request_that_can_no_longer_finish_in_time_is_dropped(
    tmp_path: Path,
) -> None:
    clock = Clock()
    b, gate, ran = gated(tmp_path, clock, max_batch_rows=1, max_queue_wait=0.0)
    first = await hold_first(b, clock)
    hopeless = asyncio.create_task(b.submit(rows(1), 1, clock() + 100.0, "hopeless"))
    fine = asyncio.create_task(b.submit(rows(2), 1, clock() + 1000.0, "fine"))
    await until(
        lambda: b.queued_rows == 2, "2 queued rows"
    )  # both admitted: the queue was nearly empty
    # Its deadline is now closer than the least its run takes (the real timer is far away).
    clock.shift = 100.0 - b.runner.predicted_cost(1) / 2
    gate.open()
    await first
    with pytest.raises(LockgateError) as dropped:
        await hopeless
    assert dropped.value.kind is ErrorKind.DEADLINE
    out, _ = await fine
    np.testing.assert_array_equal(out["y"], rows(2)["x"] * 2)
    assert ran.metas == ["first", "fine"] and b.stats.expired == 1


async def test_the_model_thread_runs_queued_full_batches_itself(tmp_path: Path) -> None:
    b, gate, ran = gated(tmp_path, max_batch_rows=2)
    first = await hold_first(b, time.monotonic)
    names = [f"r{i}" for i in range(6)]
    waiting = queue(b, time.monotonic, *names)
    await until(lambda: b.queued_rows == 6, "6 queued rows")
    gate.open()
    results = await asyncio.gather(first, *waiting)
    for value, (out, info) in enumerate(results):
        np.testing.assert_array_equal(out["y"], rows(value)["x"] * 2)
        assert info.batch_rows == (1 if value == 0 else 2)
    # After the first run three full batches were queued: the model thread took each itself.
    assert ran.metas == ["first", *names]
    assert b.stats.batches == 4 and b.stats.chained_batches == 3
