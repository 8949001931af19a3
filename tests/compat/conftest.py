"""Serve registered models in process (a Controller with its data plane and a real monitor, no
listeners), or all of them at once behind one real gateway on loopback sockets (`served`), and
compare every answer with onnxruntime run directly on the exported file."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.monitor.drain import Monitor
from lockgate.serve.controller import Controller
from lockgate.types import NUMERIC_DTYPES, InferRequest, Tensor
from tests.compat.wire import Case, build_cases
from tests.conftest import RunningGateway, loopback_config

Array = np.ndarray[Any, Any]


@asynccontextmanager
async def serving(home: Path) -> AsyncIterator[Controller]:
    """Every registered model's latest version, loaded and warm, with the monitor on."""
    monitor_config = MonitorConfig(predlog=False, drift_window_rows=50)
    config = dataclasses.replace(loopback_config(home), monitor=monitor_config)
    monitor = Monitor(monitor_config, home)
    controller = Controller(Registry(home), config, StateStore(home), monitor)
    await controller.start()
    try:
        yield controller
    finally:
        await controller.drain(5.0)
        await monitor.close()


def datatype(array: Array) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    return next(name for name, dt in NUMERIC_DTYPES.items() if dt == array.dtype)


def as_wire(array: Array) -> Array:
    """A string input as the transports hand it over: an object array of UTF-8 `bytes`."""
    if array.dtype.kind in "OU":
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape)
    return array


async def infer(
    controller: Controller, model: str, inputs: dict[str, Array], version: str | None = None
) -> dict[str, Array]:
    tensors = [Tensor(n, datatype(a), as_wire(a)) for n, a in inputs.items()]
    answer = await controller.dataplane.infer(InferRequest(model, version, "req", tensors))
    return {t.name: t.data for t in answer.outputs}


def onnxruntime_run(model: bytes, inputs: dict[str, Array]) -> dict[str, Any]:
    """The exported file run directly: the independent expectation."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feeds = {n: a.astype(object) if a.dtype.kind == "U" else a for n, a in inputs.items()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def zipmap_to_matrix(maps: list[dict[Any, float]], labels: tuple[Any, ...]) -> Array:
    """A ZipMap's sequence of {class: probability} as the `[N, classes]` lockgate serves."""
    return np.array([[row[c] for c in labels] for row in maps], dtype=np.float32)


@dataclass
class Served:
    """One real gateway serving every compat model, and the cases by name."""

    gateway: RunningGateway
    cases: dict[str, Case]


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("compat-home")
    registry = Registry(home)
    cases = build_cases()
    for case in cases:
        registry.register(case.model, case.name, warmup=case.warmup)
    config = dataclasses.replace(
        loopback_config(home), monitor=MonitorConfig(predlog=False, drift_window_rows=50)
    )
    with RunningGateway(config, registry) as gateway:
        yield Served(gateway, {c.name: c for c in cases})
