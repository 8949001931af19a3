"""Shared fixtures: real gateways on ephemeral loopback ports, in a background thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
import uvloop

from lockgate.config import BatchConfig, ServeConfig
from lockgate.control import traffic
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.demo import ensure_demo_models
from lockgate.process.gateway import Gateway
from tests import onnx_models
from tests.postgres import postgres_server, postgres_url, state_url  # noqa: F401


# CPython 3.11's tracemalloc.start() and stop() swap the process's memory allocators unsynchronised
# with threads allocating without the GIL (Numba's nogil kernels, e.g. a gateway's drain thread,
# allocate through PyMem_RawMalloc), which then crash (python/cpython#128679, fixed from 3.12).
# Tests that start and stop tracemalloc are marked `single_thread` and run first, before any
# gateway's threads exist; `single_threaded` checks it.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "single_thread: runs first, while the test process has no other thread"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("single_thread") is None)  # stable


def single_threaded() -> None:
    """Fail (instead of risking a crash) when tracemalloc would start beside other threads."""
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    assert not others, f"tracemalloc started beside threads {others}: mark the test single_thread"


class RunningGateway:
    """A real Gateway (uvicorn + grpc.aio on real sockets) on its own event loop thread."""

    def __init__(self, config: ServeConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.gateway: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        try:
            uvloop.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.gateway = Gateway(self.config, self.registry)
        task = asyncio.create_task(self.gateway.run())
        started = asyncio.create_task(self.gateway.started.wait())
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # failed while starting: report it to __enter__
            started.cancel()
            self._error = task.exception() or RuntimeError("gateway stopped while starting")
            self._started.set()
            return
        self._started.set()
        await task

    def __enter__(self) -> RunningGateway:
        self._thread.start()
        self._started.wait(120)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.loop is not None and self.gateway is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.gateway.request_stop)
        self._thread.join(60)

    @property
    def dataplane(self) -> Any:
        assert self.gateway is not None
        return self.gateway.dataplane

    @property
    def http(self) -> str:
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.ports['http']}"

    @property
    def grpc(self) -> str:
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.ports['grpc']}"

    @property
    def admin(self) -> str:
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.ports['admin']}"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop (to read its state without races)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def model_executor(dataplane: Any) -> Executor:
    """The executor a data plane runs its model versions in (tests hold it to keep model runs
    pending for as long as they need)."""
    executor: Executor = dataplane.models.executor
    return executor


def loopback_config(home: Path, **changes: Any) -> ServeConfig:
    base = ServeConfig(
        home=home,
        http_host="127.0.0.1",
        http_port=0,
        grpc_host="127.0.0.1",
        grpc_port=0,
        admin_host="127.0.0.1",
        admin_port=0,
        grace_period=5.0,
        # The gate policy is the subject of tests/control/test_gate_policy.py; elsewhere the
        # hand-registered test models move freely (as with `--ungated-max-percent 100`).
        ungated_max_percent=100.0,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("demo-home")
    registry = Registry(home)
    ensure_demo_models(registry)
    onnx_models.scale_model(home / "scale.onnx")
    registry.register(home / "scale.onnx", "scale")
    onnx_models.multi_io_model(home / "multi.onnx")
    registry.register(home / "multi.onnx", "multi")
    pin_versions(home, ("classifier", "1"))  # v2 is latest; keep v1 warm for explicit calls
    return home


def catalog(registry: Registry) -> traffic.Catalog:
    return traffic.Catalog(
        {name: frozenset(v.version for v in registry.versions(name)) for name in registry.models()}
    )


def pin_versions(home: Path, *keys: tuple[str, str]) -> None:
    store = StateStore(home)
    for model, version in keys:
        mutation = traffic.pin(model, version, catalog(Registry(home)))
        store.apply(mutation, actor="tests", expected_revision=None)
    store.close()


@pytest.fixture(scope="session")
def gateway(demo_home: Path) -> Iterator[RunningGateway]:
    """One shared gateway with the demo models plus `scale` and `multi` test models."""
    config = loopback_config(demo_home, batch=BatchConfig(max_batch_rows=64))
    with RunningGateway(config, Registry(demo_home)) as gw:
        yield gw
