"""The batcher in-process with real onnxruntime sessions: greedy start, rows-not-requests limits,
isolation of a failing request, deadlines, shedding and draining."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor, ThreadPoolExecutor
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
from tests.serve.conftest import Held
from tests.waiting import until

SCALE = ModelSpec(
    "scale", "1", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),)
)
LOOKUP = ModelSpec(
    "lookup", "1", (TensorSpec("i", "INT64", (-1,)),), (TensorSpec("y", "FP32", (-1,)),)
)
SLOW = ModelSpec(
    "slow", "1", (TensorSpec("x", "FP32", (-1, 1024)),), (TensorSpec("y", "FP32", (-1, 1)),)
)


def make_batcher(
    spec: ModelSpec, path: Path, executor: Executor | None = None, **batch: Any
) -> Batcher:
    runner = ModelRunner(spec, path, RunnerConfig(intra_op_threads=1))
    runner.load()
    return Batcher(runner, BatchConfig(**batch), executor or ThreadPoolExecutor(2))


def held_batcher(tmp_path: Path, **batch: Any) -> tuple[Batcher, Held]:
    """A batcher of the scale model whose every run goes to an executor held until released:
    what is queued, running or answered is then decided by the test, not by timing."""
    executor = ThreadPoolExecutor(1)
    held = Held(executor, threads=1)
    path = onnx_models.scale_model(tmp_path / "m.onnx")
    return make_batcher(SCALE, path, executor, inline_threshold=0.0, **batch), held


def far() -> float:
    return asyncio.get_running_loop().time() + 30


async def test_idle_model_runs_a_request_at_once(tmp_path: Path) -> None:
    # max_queue_delay only applies to busy periods: an idle model does not wait for it (an
    # hour here: waiting for it would time out).
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), max_queue_delay=3600)
    x = np.ones((3, 4), np.float32)
    out, info = await asyncio.wait_for(b.submit({"x": x}, 3, far()), 60)
    np.testing.assert_array_equal(out["y"], x * 2)
    assert info.batch_requests == 1 and b.stats.batches == 1


async def test_max_batch_rows_counts_rows_not_requests(tmp_path: Path) -> None:
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), max_batch_rows=10)
    sizes = [4, 4, 4, 4, 1, 9, 3]
    xs = [np.full((n, 4), i, np.float32) for i, n in enumerate(sizes)]
    results = await asyncio.gather(*(b.submit({"x": x}, len(x), far()) for x in xs))
    for x, (out, info) in zip(xs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
        assert info.batch_rows <= 10 or info.batch_requests == 1
    assert b.stats.multi_request_batches >= 1 and b.stats.rows == sum(sizes)


async def test_an_oversized_request_runs_alone(tmp_path: Path) -> None:
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), max_batch_rows=4)
    x = np.ones((9, 4), np.float32)
    out, info = await b.submit({"x": x}, 9, far())
    assert out["y"].shape == (9, 4) and info.batch_rows == 9


@pytest.mark.parametrize("inline_threshold", [math.inf, 0.0], ids=["on-the-loop", "in-a-thread"])
async def test_a_failing_request_does_not_fail_its_batch(
    tmp_path: Path, inline_threshold: float
) -> None:
    b = make_batcher(
        LOOKUP, onnx_models.lookup_model(tmp_path / "m.onnx"), inline_threshold=inline_threshold
    )
    good = [np.array([i, 9 - i], np.int64) for i in range(5)]
    bad = np.array([99], np.int64)
    calls = [b.submit({"i": g}, 2, far()) for g in good[:3]]
    calls.append(b.submit({"i": bad}, 1, far()))
    calls += [b.submit({"i": g}, 2, far()) for g in good[3:]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], LockgateError) and results[3].kind is ErrorKind.MODEL_FAILED
    for g, res in zip(good, results[:3] + results[4:], strict=True):
        assert not isinstance(res, BaseException)
        np.testing.assert_array_equal(res[0]["y"], g.astype(np.float32) * 10)
    assert (b.stats.inline_batches > 0) == (inline_threshold > 0)


async def test_expired_request_never_reaches_the_model(tmp_path: Path) -> None:
    b, held = held_batcher(tmp_path, max_batch_rows=1)
    x = np.ones((1, 4), np.float32)
    loop = asyncio.get_running_loop()
    try:
        busy = [asyncio.create_task(b.submit({"x": x}, 1, far())) for _ in range(3)]
        await asyncio.sleep(0)  # one loop turn: the busy requests are queued first
        with pytest.raises(LockgateError) as info:  # no model run can finish meanwhile
            await b.submit({"x": x}, 1, loop.time() + 0.001)
        assert info.value.kind is ErrorKind.DEADLINE
    finally:
        held.release()
    await asyncio.gather(*busy)
    assert b.stats.requests == 3 and b.stats.expired == 1 and b.stats.rows == 3


async def test_each_request_expires_at_its_own_deadline_whatever_their_order(
    tmp_path: Path,
) -> None:
    # One timer per batcher (serve/deadline_watch.py): set for the first deadline, moved
    # earlier by a closer one, set again for what is left after each firing.
    b, held = held_batcher(tmp_path, max_batch_rows=1)
    x = np.ones((1, 4), np.float32)
    loop = asyncio.get_running_loop()
    try:
        running = asyncio.create_task(b.submit({"x": x}, 1, loop.time() + 0.2))
        await asyncio.sleep(0)  # taken at once: its run waits in the held executor
        later = asyncio.create_task(b.submit({"x": x}, 1, far()))
        sooner = asyncio.create_task(b.submit({"x": x}, 1, loop.time() + 0.05))
        for call in (sooner, running):
            with pytest.raises(LockgateError) as info:
                await call
            assert info.value.kind is ErrorKind.DEADLINE
        assert not later.done() and b.stats.expired == 2
    finally:
        held.release()
    out, _ = await later
    np.testing.assert_array_equal(out["y"], x * 2)
    assert b.stats.expired == 2


async def test_full_queue_sheds_at_once_with_retry_hint(tmp_path: Path) -> None:
    b, held = held_batcher(tmp_path, max_batch_rows=1, max_queue_rows=2)
    x = np.ones((1, 4), np.float32)
    try:
        calls = [asyncio.create_task(b.submit({"x": x}, 1, far())) for _ in range(8)]
        # the first two queue (one will run), the other six are refused: answered while no
        # model run can finish, so a rejection never waits for the queue
        await until(lambda: sum(c.done() for c in calls) == 6, "six rejections")
        shed = [c.exception() for c in calls if c.done()]
        assert all(isinstance(e, LockgateError) for e in shed)
        assert all(e.kind is ErrorKind.OVERLOADED and e.retry_after for e in shed)  # type: ignore[union-attr]
        assert b.stats.shed == 6 and b.stats.requests == 0
    finally:
        held.release()
    results = await asyncio.gather(*calls, return_exceptions=True)
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 2 and all((out["y"] == 2 * x).all() for out, _ in served)
    assert b.stats.requests == 2


async def test_close_waits_for_in_flight_then_refuses(tmp_path: Path) -> None:
    b, held = held_batcher(tmp_path, max_batch_rows=1)
    x = np.ones((1, 4), np.float32)
    try:
        pending = [asyncio.create_task(b.submit({"x": x}, 1, far())) for _ in range(4)]
        await asyncio.sleep(0)  # one loop turn: all four are submitted
        closing = asyncio.create_task(b.close(timeout=60))
        for _ in range(10):
            await asyncio.sleep(0)  # whatever close can do without the model: it must wait
        assert not closing.done() and not any(t.done() for t in pending)
        with pytest.raises(LockgateError) as info:
            await b.submit({"x": x}, 1, far())  # refused while it drains
        assert info.value.kind is ErrorKind.UNAVAILABLE
    finally:
        held.release()
    assert await closing
    assert all(t.done() and not t.exception() for t in pending)
    assert b.stats.requests == 4


async def test_close_gives_up_after_its_timeout(tmp_path: Path) -> None:
    b, held = held_batcher(tmp_path)
    try:
        pending = asyncio.create_task(b.submit({"x": np.ones((1, 4), np.float32)}, 1, far()))
        await asyncio.sleep(0)
        assert await b.close(timeout=0.01) is False  # the held run cannot finish
    finally:
        held.release()
    await pending


async def test_cost_model_sends_cheap_batches_inline(tmp_path: Path) -> None:
    """Between the two models' measured costs, whatever the machine's speed: the cheap one runs
    on the loop, the expensive one in a thread."""
    tiny = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "a.onnx"))
    slow = make_batcher(SLOW, onnx_models.slow_model(tmp_path / "b.onnx"))
    cheap, costly = tiny.runner.predicted_cost(1), slow.runner.predicted_cost(1)
    assert 0 < cheap < costly  # 8 multiplications against 24 million
    threshold = math.sqrt(cheap * costly)
    tiny = Batcher(tiny.runner, BatchConfig(inline_threshold=threshold), ThreadPoolExecutor(1))
    slow = Batcher(slow.runner, BatchConfig(inline_threshold=threshold), ThreadPoolExecutor(1))
    await tiny.submit({"x": np.ones((1, 4), np.float32)}, 1, far())
    assert tiny.stats.inline_batches == 1
    await slow.submit({"x": np.zeros((1, 1024), np.float32)}, 1, far())
    assert slow.stats.inline_batches == 0 and slow.stats.batches == 1


async def arrive_one_per_turn(
    b: Batcher, xs: list[np.ndarray[Any, Any]], name: str = "x"
) -> list[Any]:
    """Requests handed over one loop turn apart, as grpc.aio hands over calls."""

    async def arrive(i: int, x: np.ndarray[Any, Any]) -> Any:
        for _ in range(i):
            await asyncio.sleep(0)
        return await b.submit({name: x}, len(x), far(), alone=True)

    return await asyncio.gather(*(arrive(i, x) for i, x in enumerate(xs)))


async def test_one_at_a_time_requests_are_gathered_into_a_batch(tmp_path: Path) -> None:
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), gather_delay=0.05)
    xs = [np.full((1, 4), i, np.float32) for i in range(8)]
    results = await arrive_one_per_turn(b, xs)
    for x, (out, _) in zip(xs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)  # each caller gets its own rows
    assert b.stats.gathers == 1 and b.stats.batches == 1 and b.stats.requests == 8


async def test_fruitless_gathers_back_off_exponentially(tmp_path: Path) -> None:
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), gather_delay=0.05)
    x = np.ones((1, 4), np.float32)
    waited = []
    for _ in range(16):  # a lone client: one request at a time
        before = b.stats.gathers
        out, _ = await b.submit({"x": x}, 1, far(), alone=True)
        np.testing.assert_array_equal(out["y"], x * 2)
        waited.append(b.stats.gathers > before)
    # gather, then 1 at once, gather, 2 at once, gather, 4 at once, gather, 8 at once
    expected = [True, False, True, False, False, True] + [False] * 4 + [True] + [False] * 5
    assert waited == expected
    assert b.stats.fruitless_gathers == 4 and b.stats.batches == 16


async def test_a_lone_request_waits_no_longer_than_an_idle_loop(tmp_path: Path) -> None:
    # an hour's cap: reaching it would time out; an idle loop ends the wait long before
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), gather_delay=3600.0)
    x = np.ones((1, 4), np.float32)
    out, _ = await asyncio.wait_for(b.submit({"x": x}, 1, far(), alone=True), 60)
    np.testing.assert_array_equal(out["y"], x * 2)
    assert b.stats.gathers == 1 and b.stats.fruitless_gathers == 1


async def test_without_gathering_one_at_a_time_requests_run_inline(tmp_path: Path) -> None:
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), gather_delay=0.0)
    xs = [np.full((2, 4), i, np.float32) for i in range(4)]
    results = await arrive_one_per_turn(b, xs)
    for x, (out, info) in zip(xs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
        assert info.batch_requests == 1 and info.queue_ns == 0
    assert b.stats.gathers == 0 and b.stats.inline_batches == 4


async def test_inline_request_past_its_deadline_never_runs(tmp_path: Path) -> None:
    b = make_batcher(SCALE, onnx_models.scale_model(tmp_path / "m.onnx"), gather_delay=0.0)
    with pytest.raises(LockgateError) as err:
        await b.submit({"x": np.ones((1, 4), np.float32)}, 1, 0.0, alone=True)
    assert err.value.kind is ErrorKind.DEADLINE
    assert b.stats.expired == 1 and b.stats.batches == 0


async def test_requests_of_a_model_that_cannot_batch_never_gather(tmp_path: Path) -> None:
    fixed = ModelSpec(
        "fixed", "1", (TensorSpec("x", "FP32", (2, 4)),), (TensorSpec("y", "FP32", (2, 4)),)
    )
    b = make_batcher(fixed, onnx_models.scale_model(tmp_path / "m.onnx"), gather_delay=0.05)
    xs = [np.full((2, 4), i, np.float32) for i in range(4)]
    results = await arrive_one_per_turn(b, xs)
    for x, (out, _) in zip(xs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
    assert b.stats.gathers == 0 and b.stats.inline_batches == 4


async def test_requests_join_a_batch_only_with_the_same_inner_shapes(tmp_path: Path) -> None:
    """Images of any size: concatenated on the rows only when heights and widths agree (a batch
    of different sizes cannot be formed, and must not fail its requests)."""
    import onnxruntime as ort

    from tests.compat.exports import cnn_dynamic_sides

    model, _ = cnn_dynamic_sides()
    (tmp_path / "cnn.onnx").write_bytes(model)
    spec = ModelSpec(
        "cnn",
        "1",
        (TensorSpec("image", "FP32", (-1, 1, -1, -1)),),
        (TensorSpec("features", "FP32", (-1, 4)),),
    )
    assert spec.ragged == ("image",) and SCALE.ragged == ()
    b = make_batcher(spec, tmp_path / "cnn.onnx", gather_delay=0.05)
    rng = np.random.default_rng(5)
    sides = [(5, 4), (5, 4), (9, 13), (9, 13), (9, 13), (5, 4), (7, 7), (5, 4)]
    xs = [rng.normal(size=(1, 1, h, w)).astype(np.float32) for h, w in sides]
    results = await arrive_one_per_turn(b, xs, name="image")
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for x, (out, _) in zip(xs, results, strict=True):
        want = session.run(["features"], {"image": x})[0]
        np.testing.assert_allclose(out["features"], want, rtol=1e-5, atol=1e-6)
    # runs of one size: (5,4)x2, (9,13)x3, (5,4), (7,7), (5,4)
    assert b.stats.requests == 8 and b.stats.batches == 5 and b.stats.multi_request_batches == 2
