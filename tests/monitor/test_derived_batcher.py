"""Derived features through a real batcher and onnxruntime: a wide input's summaries are made in
the model thread and the ring holds exactly them (against numpy and the dense projection); runs
on the event loop derive there; a tensor of an unexpected size is NaN and counted; a failing
derivation is counted and never fails its request."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.config import BatchConfig, RunnerConfig
from lockgate.monitor import derived
from lockgate.monitor.record import VersionRecorder
from lockgate.serve.batch import Batcher
from lockgate.serve.runner import ModelRunner
from lockgate.types import ModelSpec, TensorSpec
from tests import onnx_models
from tests.serve.conftest import Held
from tests.waiting import until

Array = np.ndarray[Any, Any]
SHAPE = (3, 32, 32)
WIDTH = 3 * 32 * 32  # wider than the monitor follows value by value: summarised
SEED = 5
OUT = (TensorSpec("y", "FP32", (-1, 1)),)
SPEC = ModelSpec("image", "1", (TensorSpec("x", "FP32", (-1, *SHAPE)),), OUT)


class ThreadNoting(VersionRecorder):
    """The monitor's recorder, noting the thread of each `derive` call."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, 64, derivation=derived.Derivation(seed=SEED))
        self.threads: list[int] = []

    def derive(self, feeds: dict[str, Array], rows: list[int]) -> list[Array | None]:
        self.threads.append(threading.get_ident())
        return super().derive(feeds, rows)


def batcher(
    tmp_path: Path, recorder: VersionRecorder, dynamic: bool = False, **batch: Any
) -> tuple[Batcher, ThreadPoolExecutor]:
    """The image model behind a batcher observed by `recorder`; by default every run goes to
    the executor's one thread. `dynamic`: the model takes images of any height and width."""
    shape: tuple[int | str, ...] = (3, "h", "w") if dynamic else SHAPE
    spec = ModelSpec("image", "1", (TensorSpec("x", "FP32", (-1, 3, -1, -1)),), OUT)
    path = onnx_models.image_model(tmp_path / "image.onnx", shape)
    runner = ModelRunner(spec if dynamic else SPEC, path, RunnerConfig(intra_op_threads=1))
    runner.load()
    executor = ThreadPoolExecutor(1)
    config = BatchConfig(**{"inline_threshold": 0.0, **batch})
    return Batcher(runner, config, executor, recorder), executor


def images(rng: np.random.Generator, rows: int, shape: tuple[int, ...] = SHAPE) -> Array:
    return rng.uniform(0, 1, (rows, *shape)).astype(np.float32)


async def infer(b: Batcher, recorder: VersionRecorder, x: Array, **kw: Any) -> Array:
    meta = recorder.meta(f"r{x.sum()}", "image", "1", 0)
    outputs, _ = await b.submit({"x": x}, x.shape[0], time.monotonic() + 60, meta, **kw)
    return outputs["y"]


def ring_inputs(recorder: VersionRecorder) -> Array:
    columns, dropped = recorder.ring.swap()
    return recorder.ring.assemble(columns, dropped).inputs.copy()


def summary() -> derived.Summary:
    return derived.Summary("x", "wide", WIDTH, derived.Derivation(SEED))


async def test_the_ring_holds_the_summaries_made_in_the_model_thread(tmp_path: Path) -> None:
    """Requests of 2, 1 and 3 images: the first runs alone, the other two as one batch while
    the model thread is held; both runs are derived in that thread, not on the loop."""
    recorder = ThreadNoting(SPEC)
    b, executor = batcher(tmp_path, recorder)
    held = Held(executor, threads=1)
    rng = np.random.default_rng(4)
    x = [images(rng, n) for n in (2, 1, 3)]
    first = asyncio.create_task(infer(b, recorder, x[0]))
    await until(lambda: b._task is not None and not b.queue, "the first run to be handed over")
    rest = [asyncio.create_task(infer(b, recorder, xi)) for xi in x[1:]]
    await until(lambda: b.queued_rows == 4, "the next two requests to queue")
    held.release()
    answers = await asyncio.gather(first, *rest)

    pixels = np.concatenate(x).reshape(6, -1).astype(np.float64)
    np.testing.assert_allclose(np.concatenate(answers)[:, 0], pixels.mean(axis=1), rtol=1e-5)
    assert (b.stats.batches, b.stats.multi_request_batches, b.stats.observer_errors) == (2, 1, 0)
    loop_thread = threading.get_ident()
    assert len(recorder.threads) == 2 and loop_thread not in recorder.threads
    got = ring_inputs(recorder)
    assert recorder.input_features == summary().names
    want = np.concatenate([summary().columns(x[0], 2), summary().columns(np.concatenate(x[1:]), 4)])
    np.testing.assert_array_equal(got, want)
    # independently: numpy's moments and the dense projection matrix
    np.testing.assert_allclose(got[:, 0], pixels.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], pixels.std(axis=1), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got[:, 2], np.linalg.norm(pixels, axis=1), rtol=1e-5)
    dense = derived.projection(SEED, "x", WIDTH).dense(WIDTH).astype(np.float64)
    np.testing.assert_allclose(got[:, 3:], pixels @ dense, rtol=1e-4, atol=1e-4)


async def test_runs_on_the_event_loop_derive_there(tmp_path: Path) -> None:
    """Inline runs, on the loop anyway, are derived by their record: a request handed over
    alone (no gathering) runs at once; a queued one is drained by the loop's callback. The ring
    holds the same columns as for a run in the model thread."""
    recorder = ThreadNoting(SPEC)
    b, _ = batcher(tmp_path, recorder, inline_threshold=10.0, gather_delay=0.0)
    rng = np.random.default_rng(5)
    x = [images(rng, 2), images(rng, 3)]
    await infer(b, recorder, x[0], alone=True)
    await infer(b, recorder, x[1])
    assert recorder.threads == [] and b.stats.inline_batches == 2
    want = np.concatenate([summary().columns(xi, len(xi)) for xi in x])
    np.testing.assert_array_equal(ring_inputs(recorder), want)


async def test_an_unexpected_size_is_recorded_as_nan_and_counted(tmp_path: Path) -> None:
    """The model takes any image size; the monitor's layout says 32x32. A 16x16 run's rows are
    kept with NaN features and counted; the next 32x32 run is recorded as usual."""
    recorder = ThreadNoting(SPEC)
    b, _ = batcher(tmp_path, recorder, dynamic=True)
    rng = np.random.default_rng(6)
    small, right = images(rng, 2, (3, 16, 16)), images(rng, 1)
    await infer(b, recorder, small)
    await infer(b, recorder, right)
    assert len(recorder.threads) == 2 and b.stats.observer_errors == 0
    assert recorder.ring.written == 3 and recorder.ring.mismatched == 2
    got = ring_inputs(recorder)
    assert np.isnan(got[:2]).all()
    np.testing.assert_array_equal(got[2:], summary().columns(right, 1))


async def test_a_failing_derivation_is_counted_and_its_request_answered(tmp_path: Path) -> None:
    """A recorder whose schema summarises an input `z` the runs do not have: deriving fails in
    the model thread, each run counts one observer error, nothing reaches the ring, and every
    request gets its answer."""
    spec = ModelSpec("image", "1", (TensorSpec("z", "FP32", (-1, *SHAPE)),), OUT)
    recorder = ThreadNoting(spec)
    b, _ = batcher(tmp_path, recorder)
    rng = np.random.default_rng(7)
    for n in (1, 2):
        x = images(rng, n)
        y = await infer(b, recorder, x)
        np.testing.assert_allclose(y[:, 0], x.reshape(n, -1).mean(axis=1), rtol=1e-5)
        assert b.stats.observer_errors == n
    assert len(recorder.threads) == 2 and threading.get_ident() not in recorder.threads
    assert recorder.ring.written == 0 and b.stats.failed == 0
