"""ModelSet on a real registry: what it knows, what it loads (once, however many ask), why a
version is not served, and releasing a version only after its in-flight requests."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.models import ModelSet
from tests.serve.conftest import Held, serve_config
from tests.waiting import until

SCALE1, SCALE2, LOOKUP = ("scale", "1"), ("scale", "2"), ("lookup", "1")


def far() -> float:
    return asyncio.get_running_loop().time() + 60


def load_logs(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]


async def test_the_registry_view(models: ModelSet, registry: Registry) -> None:
    assert set(models.registered) == {"scale", "lookup"}
    assert models.implicit_versions() == {"scale": "2", "lookup": "1"}  # none has gates
    assert set(models.versions_of("scale")) == {"1", "2"}
    assert models.info("scale", "2") == registry.get("scale", "2")
    with pytest.raises(LockgateError, match="unknown model 'nope'") as info:
        models.versions_of("nope")
    assert info.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(LockgateError, match="unknown version '7' of model 'scale'") as info:
        models.info("scale", "7")
    assert info.value.kind is ErrorKind.NOT_FOUND
    # a version registered later is known after the next refresh
    registry.register(registry.get("scale", "1").model_path, "scale")
    assert models.implicit_versions()["scale"] == "2"
    await models.refresh()
    assert models.implicit_versions()["scale"] == "3"


async def test_a_known_version_is_served_only_once_loaded(models: ModelSet) -> None:
    with pytest.raises(LockgateError, match="not loaded") as info:
        models.get(*SCALE1)
    assert info.value.kind is ErrorKind.UNAVAILABLE
    with pytest.raises(LockgateError) as unknown:
        models.get("scale", "9")
    assert unknown.value.kind is ErrorKind.NOT_FOUND
    assert await models.ensure({SCALE1, LOOKUP}) == {}
    loaded = models.get(*SCALE1)
    assert loaded.spec.name == "scale" and loaded.spec.version == "1"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out, _ = await loaded.batcher.submit({"x": x}, 2, far())
    np.testing.assert_array_equal(out["y"], 2 * x)
    assert models.loaded.keys() == {SCALE1, LOOKUP}
    assert models.batch_stats(*SCALE1).requests == 1


async def test_concurrent_callers_share_one_load(
    models: ModelSet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lockgate.serve.models")
    results = await asyncio.gather(*(models.ensure({SCALE1, SCALE2}) for _ in range(5)))
    assert results == [{}] * 5
    assert sorted(m.split(" (")[0] for m in load_logs(caplog, "loaded")) == [
        "loaded scale v1",
        "loaded scale v2",
    ]
    assert await models.ensure({SCALE1}) == {}  # loaded already: nothing more
    assert len(load_logs(caplog, "loaded")) == 2


async def test_a_version_whose_file_changed_fails_with_its_reason(
    models: ModelSet, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    path = registry.get(*SCALE1).model_path
    original = path.read_bytes()
    path.write_bytes(original + b"\0")  # no longer what was registered
    failures = await models.ensure({SCALE1, SCALE2})
    assert failures == {SCALE1: "scale v1: model.onnx checksum mismatch (file changed on disk)"}
    assert SCALE2 in models.loaded and SCALE1 not in models.loaded
    assert models.failed == failures
    with pytest.raises(LockgateError, match="checksum mismatch") as info:
        models.get(*SCALE1)
    assert info.value.kind is ErrorKind.UNAVAILABLE
    # the state watcher's re-apply does not try a recent failure again ...
    assert await models.ensure({SCALE1}, retry_failed=False) == failures
    assert len(load_logs(caplog, "model scale v1 failed to load")) == 1
    # ... an explicit load does, and succeeds once the file is whole again
    path.write_bytes(original)
    assert await models.ensure({SCALE1}) == {}
    assert models.failed == {} and SCALE1 in models.loaded


async def test_a_missing_file_is_reported_not_raised(models: ModelSet, registry: Registry) -> None:
    registry.get(*LOOKUP).model_path.unlink()
    failures = await models.ensure({LOOKUP})
    assert failures == {LOOKUP: "cannot read the model's files: No such file or directory"}
    assert models.failed == failures


async def test_an_unknown_version_is_a_failure_not_a_load(models: ModelSet) -> None:
    assert await models.ensure({("scale", "9")}) == {
        ("scale", "9"): "unknown version '9' of model 'scale'"
    }
    assert models.loaded == {}


async def test_release_waits_for_in_flight_requests(models: ModelSet) -> None:
    await models.ensure({SCALE1})
    loaded = models.get(*SCALE1)
    x = np.ones((1, 4), np.float32)
    held = Held(models.executor)
    try:
        request = asyncio.create_task(loaded.batcher.submit({"x": x}, 1, far()))
        await asyncio.sleep(0)  # one loop turn: the task has submitted its request
        release = asyncio.create_task(models.release(SCALE1))
        # routing to it stops at once; the version itself stays until its request is answered
        await until(lambda: SCALE1 not in models.loaded, "the release to start")
        for _ in range(10):
            await asyncio.sleep(0)  # the release runs as far as it can: it must wait here
        assert not release.done() and not request.done() and loaded.runner.loaded
    finally:
        held.release()
    out, _ = await request
    np.testing.assert_array_equal(out["y"], 2 * x)
    await release
    assert not loaded.runner.loaded
    with pytest.raises(LockgateError, match="shutting down") as info:
        await loaded.batcher.submit({"x": x}, 1, far())
    assert info.value.kind is ErrorKind.UNAVAILABLE
    await models.release(SCALE1)  # releasing twice is harmless


async def test_drain_waits_for_every_version(registry: Registry, tmp_path: Path) -> None:
    models = ModelSet(registry, serve_config(tmp_path), monitor=None)
    await models.refresh()
    await models.ensure({SCALE1, SCALE2})
    x = np.ones((1, 4), np.float32)
    held = Held(models.executor)
    requests = [
        asyncio.create_task(models.get(*key).batcher.submit({"x": x}, 1, far()))
        for key in (SCALE1, SCALE2)
    ]
    drained = asyncio.create_task(models.drain(timeout=60))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not drained.done()
    held.release()
    assert await drained is True
    assert all(r.done() and not r.exception() for r in requests)
