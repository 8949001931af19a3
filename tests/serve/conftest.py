"""The request path's parts without servers: a registry of small real models in `tmp_path`, a
ModelSet over it, and a way to hold model runs at a known point."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import BatchConfig, RunnerConfig, ServeConfig
from lockgate.control.registry import Registry
from lockgate.serve.models import ModelSet
from tests import onnx_models

# Every batch goes to the executor (none runs inline on the loop), so that holding the
# executor holds every model run; one warm-up run is enough for these tiny models.
THREADED = BatchConfig(inline_threshold=0.0)
RUNNER = RunnerConfig(intra_op_threads=1, warmup_runs=1)
EXECUTOR_THREADS = 4  # ModelSet's executor


class Held:
    """Every thread of an executor waits until `release()`: work handed to the executor after
    this queues behind the waits, so a test sees a model run pending for as long as it needs."""

    def __init__(self, executor: Executor, threads: int = EXECUTOR_THREADS) -> None:
        self._go = threading.Event()
        self._waits = [executor.submit(self._go.wait) for _ in range(threads)]

    def release(self) -> None:
        self._go.set()
        for wait in self._waits:
            wait.result(timeout=60)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """scale v1, v2 (y = 2x, FP32 [batch, 4]) and lookup v1 (y = 10 * i; fails on i >= 10)."""
    registry = Registry(tmp_path)
    for _ in range(2):
        registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    registry.register(onnx_models.lookup_model(tmp_path / "lookup.onnx"), "lookup")
    return registry


def serve_config(home: Path, **batch: Any) -> ServeConfig:
    return ServeConfig(
        home=home, grace_period=30.0, batch=dataclasses.replace(THREADED, **batch), runner=RUNNER
    )


@pytest.fixture
async def models(registry: Registry, tmp_path: Path) -> AsyncIterator[ModelSet]:
    """A ModelSet over `registry` that knows every registered version and has loaded none."""
    models = ModelSet(registry, serve_config(tmp_path), monitor=None)
    await models.refresh()
    yield models
    await models.drain(timeout=30)
