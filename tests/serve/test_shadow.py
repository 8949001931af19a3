"""Shadow copies on real models: sent without the primary waiting, compared row by row with the
primary's answer, shed (and counted) before they could take capacity, failures counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.control.registry import Registry
from lockgate.serve.models import ModelSet
from lockgate.serve.route import Variant
from lockgate.serve.shadow import ShadowStats, ShadowTraffic, disagreeing_rows
from tests.serve.conftest import Held, serve_config
from tests.waiting import until

SHADOW = Variant("shadow", "scale", "2")
ENDPOINT = "scale"


Array = np.ndarray[Any, Any]


def rows_of(n: int) -> Array:
    return np.arange(4 * n, dtype=np.float32).reshape(n, 4)


def far() -> float:
    return asyncio.get_running_loop().time() + 60


def send(shadows: ShadowTraffic, x: Array, primary: dict[str, Array]) -> None:
    """A copy of the request `x`, whose primary answer was `primary`, to SHADOW."""
    shadows.send(ENDPOINT, SHADOW, {"x": x}, len(x), primary, "req-1", time.perf_counter_ns())


async def test_a_copy_is_compared_with_the_primary_answer(models: ModelSet) -> None:
    await models.ensure({SHADOW.key})
    shadows = ShadowTraffic(models)
    x = rows_of(5)
    send(shadows, x, {"y": 2 * x})  # what the shadow answers too: y = 2x
    disagree = 2 * x
    disagree[[1, 3], 2] += 1.0  # two rows the primary answered differently
    send(shadows, x, {"y": disagree})
    await shadows.drain(timeout=60)
    assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats(
        requests=2, shed=0, failed=0, rows=10, disagreeing_rows=2
    )


async def test_the_primary_never_waits_for_its_copy(models: ModelSet) -> None:
    await models.ensure({SHADOW.key})
    shadows = ShadowTraffic(models)
    x = rows_of(2)
    held = Held(models.executor)  # the shadow's model cannot run until released
    try:
        send(shadows, x, {"y": 2 * x})  # returns although the copy cannot have run
        assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats()  # pending: not shed
    finally:
        held.release()
    await shadows.drain(timeout=60)
    assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats(requests=1, rows=2)


async def test_copies_beyond_max_in_flight_are_shed(models: ModelSet) -> None:
    await models.ensure({SHADOW.key})
    shadows = ShadowTraffic(models, max_in_flight=2)
    x = rows_of(1)
    held = Held(models.executor)
    try:
        for _ in range(5):
            send(shadows, x, {"y": 2 * x})
        assert shadows.stats[(ENDPOINT, "shadow")].shed == 3
    finally:
        held.release()
    await shadows.drain(timeout=60)
    assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats(requests=2, shed=3, rows=2)
    send(shadows, x, {"y": 2 * x})  # the copies finished: room again
    await shadows.drain(timeout=60)
    assert shadows.stats[(ENDPOINT, "shadow")].requests == 3


async def test_a_copy_is_shed_when_the_shadow_queue_is_half_full(
    registry: Registry, tmp_path: Path
) -> None:
    config = serve_config(tmp_path, max_batch_rows=1, max_queue_rows=8)
    models = ModelSet(registry, config, monitor=None)
    await models.refresh()
    await models.ensure({SHADOW.key})
    shadows = ShadowTraffic(models)
    batcher = models.get(*SHADOW.key).batcher
    x = rows_of(1)
    held = Held(models.executor)
    try:
        # four requests of its own: one runs (held), three stay queued
        own = [asyncio.create_task(batcher.submit({"x": x}, 1, far())) for _ in range(4)]
        await until(lambda: batcher.queued_rows == 3, "three queued requests")
        x2 = rows_of(2)
        send(shadows, x2, {"y": 2 * x2})  # 3 + 2 rows > 8 // 2: shed
        send(shadows, x, {"y": 2 * x})  # 3 + 1 rows: room for it
        assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats(shed=1)
    finally:
        held.release()
    await asyncio.gather(*own)
    await shadows.drain(timeout=60)
    assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats(requests=1, shed=1, rows=1)
    await models.drain(timeout=60)


async def test_a_shadow_that_is_not_loaded_is_shed(models: ModelSet) -> None:
    shadows = ShadowTraffic(models)
    x = rows_of(1)
    send(shadows, x, {"y": 2 * x})
    assert shadows.stats[(ENDPOINT, "shadow")] == ShadowStats(shed=1)


async def test_a_failing_copy_is_counted_not_raised(models: ModelSet) -> None:
    lookup = Variant("broken", "lookup", "1")
    await models.ensure({lookup.key})
    shadows = ShadowTraffic(models)
    good, bad = np.array([1, 2], np.int64), np.array([3, 99], np.int64)  # 99: out of the table
    shadows.send(ENDPOINT, lookup, {"i": good}, 2, {"y": good * 10.0}, "a", 0)
    shadows.send(ENDPOINT, lookup, {"i": bad}, 2, {"y": bad * 10.0}, "b", 0)
    await shadows.drain(timeout=60)
    assert shadows.stats[(ENDPOINT, "broken")] == ShadowStats(requests=1, failed=1, rows=2)


def test_disagreement_is_per_row_beyond_float_noise() -> None:
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    noisy = a * np.float32(1 + 1e-6)  # float noise: agrees
    assert disagreeing_rows({"y": a}, {"y": noisy}, 4) == 0
    other = a.copy()
    other[2, 1] += 0.01
    assert disagreeing_rows({"y": a}, {"y": other}, 4) == 1
    # a row differs when any of its outputs does; NaN agrees with NaN
    labels = np.array([1, 0, 1, 1], np.int64)
    flipped = np.array([1, 1, 1, 1], np.int64)
    nan = a.copy()
    nan[0, 0] = np.nan
    both = {"y": nan, "label": labels}
    assert disagreeing_rows(both, {"y": nan.copy(), "label": flipped}, 4) == 1
    assert disagreeing_rows({"y": a}, {"y": a[:, :2]}, 4) == 4  # another shape: every row
    assert disagreeing_rows({"y": a}, {"z": a}, 4) == 4  # a missing output: every row


@pytest.mark.parametrize("rows", [1, 7])
def test_disagreement_of_integer_outputs_is_exact(rows: int) -> None:
    a = np.arange(rows * 2, dtype=np.int64).reshape(rows, 2) * 1_000_000_000
    b = a.copy()
    b[-1, -1] += 1  # within a float tolerance of 1e-4 * 1e9, still a different label
    assert disagreeing_rows({"y": a}, {"y": b}, rows) == 1
