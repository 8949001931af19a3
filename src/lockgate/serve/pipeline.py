"""handle(request): resolve the model version -> validate -> batch -> run -> answer.

This is the one place the order of the request path is written; both transports call `infer`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lockgate import __version__
from lockgate.config import ServeConfig
from lockgate.control.registry import Registry, VersionInfo
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.serve.batch import Batcher, RunInfo
from lockgate.serve.runner import Arrays, ModelRunner
from lockgate.types import InferRequest, InferResponse, ModelSpec, Tensor

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "msgpack_tensor_data", "model_repository_read"]


@dataclass(slots=True)
class LoadedVersion:
    spec: ModelSpec
    runner: ModelRunner
    batcher: Batcher


class Pipeline:
    server_name = "lockgate"
    server_version = __version__
    extensions = EXTENSIONS

    def __init__(self, registry: Registry, config: ServeConfig) -> None:
        self.registry = registry
        self.config = config
        self._registered: dict[str, dict[str, VersionInfo]] = {}
        self._loaded: dict[tuple[str, str], LoadedVersion] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._latest: dict[str, str] = {}
        # One thread per core is enough: a batcher keeps at most one batch in flight.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lockgate-run")
        self._ready = False
        self._shutting_down = False  # readiness off, still answering
        self._draining = False  # refusing new requests

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm every registered version; a version that fails is reported, not fatal."""
        for name in self.registry.models():
            versions = self.registry.versions(name)
            self._registered[name] = {v.version: v for v in versions}
            if versions:
                self._latest[name] = versions[-1].version
        for registered in self._registered.values():
            for info in registered.values():
                await self.load(info)
        self._ready = True
        log.info(
            "serving %d model versions (%d failed to load)", len(self._loaded), len(self._failed)
        )

    async def load(self, info: VersionInfo) -> None:
        key = (info.name, info.version)
        runner = ModelRunner(info.spec, info.model_path, self.config.runner)

        def verify_and_load() -> None:
            self.registry.verify(info)  # never serve a file that changed after registration
            runner.load()

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, verify_and_load)
        except LockgateError as exc:
            self._failed[key] = exc.message
            log.error("model %s v%s failed to load: %s", info.name, info.version, exc.message)
            return
        self._failed.pop(key, None)
        self._loaded[key] = LoadedVersion(
            info.spec, runner, Batcher(runner, self.config.batch, self._executor)
        )
        log.info(
            "loaded %s v%s (%.0f us/call + %.1f us/row)",
            info.name,
            info.version,
            runner.fixed_cost * 1e6,
            runner.row_cost * 1e6,
        )

    def begin_shutdown(self) -> None:
        """Report not-ready so load balancers stop sending, while in-flight traffic completes."""
        self._shutting_down = True

    async def drain(self, timeout: float) -> bool:
        """Stop taking new requests and wait for in-flight ones; True if all finished in time."""
        self._draining = True
        results = await asyncio.gather(*(lv.batcher.close(timeout) for lv in self._loaded.values()))
        self._executor.shutdown(wait=False)
        return all(results)

    # -- metadata ----------------------------------------------------------------------------
    def ready(self) -> bool:
        return self._ready and not (self._shutting_down or self._draining)

    def model_versions(self, name: str) -> list[str]:
        return list(self._versions_of(name))

    def model_spec(self, name: str, version: str | None) -> ModelSpec:
        return self._info(name, version).spec

    def model_ready(self, name: str, version: str | None) -> bool:
        info = self._info(name, version)
        return self.ready() and (info.name, info.version) in self._loaded

    def batch_stats(self, name: str, version: str) -> Any:
        return self._loaded[(name, version)].batcher.stats

    def _versions_of(self, name: str) -> dict[str, VersionInfo]:
        versions = self._registered.get(name)
        if versions is None:
            raise not_found(f"unknown model {name!r}")
        return versions

    def _info(self, name: str, version: str | None) -> VersionInfo:
        versions = self._versions_of(name)
        if not version:
            return versions[self._latest[name]]
        info = versions.get(version)
        if info is None:
            raise not_found(f"unknown version {version!r} of model {name!r}")
        return info

    # -- the request path --------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        if self._draining:
            raise LockgateError(ErrorKind.UNAVAILABLE, "server is shutting down")
        info = self._info(request.model, request.version)
        loaded = self._loaded.get((info.name, info.version))
        if loaded is None:
            reason = self._failed.get((info.name, info.version), "not loaded")
            raise LockgateError(
                ErrorKind.UNAVAILABLE, f"model {info.name} v{info.version}: {reason}"
            )
        feeds, rows = validate_inputs(request, loaded.spec)
        outputs = select_outputs(request, loaded.spec)
        deadline = self._deadline(request)
        results, run = await loaded.batcher.submit(feeds, rows, deadline)
        return InferResponse(
            model=info.name,
            version=info.version,
            id=request.id,
            outputs=[Tensor(name, dt, results[name]) for name, dt in outputs],
            parameters=_run_parameters(run),
        )

    def _deadline(self, request: InferRequest) -> float:
        """The earliest of the transport deadline, the `timeout` parameter (microseconds, as
        tritonclient sends it) and the server default."""
        now = time.monotonic()
        deadline = min(request.deadline, now + self.config.default_timeout)
        timeout_us = request.parameters.get("timeout")
        if timeout_us is not None:
            if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0:
                raise invalid(
                    "parameter 'timeout' must be a positive integer (microseconds), "
                    f"got {timeout_us!r}"
                )
            deadline = min(deadline, now + timeout_us / 1e6)
        if deadline <= now:
            raise LockgateError(ErrorKind.DEADLINE, "deadline already passed on arrival")
        return deadline


def validate_inputs(request: InferRequest, spec: ModelSpec) -> tuple[Arrays, int]:
    """Check names, datatypes and shapes against the model; return feeds and the row count."""
    feeds: Arrays = {}
    for tensor in request.inputs:
        want = spec.input(tensor.name)
        if want is None:
            expected = ", ".join(i.name for i in spec.inputs)
            raise invalid(
                f"unknown input {tensor.name!r} for model {spec.name} (expects: {expected})"
            )
        if tensor.name in feeds:
            raise invalid(f"input {tensor.name!r} given more than once")
        if tensor.datatype != want.datatype:
            raise invalid(
                f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's "
                f"{want.datatype}"
            )
        shape = tensor.data.shape
        if len(shape) != len(want.shape) or any(
            w >= 0 and g != w for g, w in zip(shape, want.shape, strict=True)
        ):
            raise invalid(
                f"input {tensor.name!r}: shape {list(shape)} does not match the model's "
                f"{list(want.shape)} (-1 = any)"
            )
        feeds[tensor.name] = tensor.data
    missing = [i.name for i in spec.inputs if i.name not in feeds]
    if missing:
        raise invalid(f"missing input(s) {', '.join(map(repr, missing))} for model {spec.name}")
    if not spec.batchable:
        return feeds, 1
    rows = {int(a.shape[0]) for a in feeds.values()}
    if len(rows) != 1:
        raise invalid(f"inputs disagree on the batch dimension: {sorted(rows)}")
    (n,) = rows
    if n == 0:
        raise invalid("empty batch: the leading dimension is 0")
    return feeds, n


def select_outputs(request: InferRequest, spec: ModelSpec) -> list[tuple[str, str]]:
    if not request.outputs:
        return [(o.name, o.datatype) for o in spec.outputs]
    chosen = []
    for wanted in request.outputs:
        out = spec.output(wanted.name)
        if out is None:
            names = ", ".join(o.name for o in spec.outputs)
            raise invalid(f"unknown output {wanted.name!r} for model {spec.name} (has: {names})")
        chosen.append((out.name, out.datatype))
    return chosen


def _run_parameters(run: RunInfo) -> dict[str, bool | int | float | str]:
    return {"queue_us": run.queue_ns // 1000, "compute_us": run.compute_ns // 1000}
