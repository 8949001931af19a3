"""The model versions this process knows (from the registry) and has loaded (runner + batcher).

Loading is blocking (onnxruntime session, warm-up) and runs in a thread. A version that fails to
load is remembered with its reason, so readiness and error responses can say why. A version
that stops receiving traffic is released only after its in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from lockgate.config import ServeConfig
from lockgate.control.policy import GatePolicy, gate_status
from lockgate.control.registry import Registry
from lockgate.control.version_info import VersionInfo
from lockgate.errors import ErrorKind, LockgateError, not_found
from lockgate.monitor.handle import MonitorHandle
from lockgate.monitor.record import VersionRecorder
from lockgate.serve.batch import Batcher
from lockgate.serve.batch_stats import BatchStats
from lockgate.serve.runner import ModelRunner
from lockgate.types import ModelSpec

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (model, version)
RETRY_SECONDS = 60.0  # how long the state watcher leaves a version that failed to load


@dataclass(slots=True)
class LoadedVersion:
    info: VersionInfo
    runner: ModelRunner
    batcher: Batcher
    recorder: VersionRecorder | None  # the monitor's ring, when monitoring is on

    executor: Executor | None = None  # its own threads, for a version with several sessions

    @property
    def spec(self) -> ModelSpec:
        """The schema as served: the registry's, with the batching decided at load."""
        return self.runner.spec


class ModelSet:
    def __init__(
        self, registry: Registry, config: ServeConfig, monitor: MonitorHandle | None
    ) -> None:
        self.registry = registry
        self.config = config
        self.monitor = monitor
        self.registered: dict[str, dict[str, VersionInfo]] = {}
        self.loaded: dict[Key, LoadedVersion] = {}
        self.failed: dict[Key, str] = {}
        self._failed_at: dict[Key, float] = {}
        self._loading: dict[Key, asyncio.Task[str | None]] = {}
        self._refused: dict[Key, tuple[object, str]] = {}  # configurations that failed to load
        self._retiring: set[asyncio.Task[None]] = set()  # runners replaced by a reload
        # A batcher keeps at most one batch in flight, so a few threads serve many versions.
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lockgate-run")

    # -- the registry view ----------------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read the registry (in a thread: it touches the disk)."""

        def scan() -> dict[str, dict[str, VersionInfo]]:
            return {
                name: {v.version: v for v in self.registry.versions(name)}
                for name in self.registry.models()
            }

        self.registered = await asyncio.to_thread(scan)
        await self._reconfigure()

    async def _reconfigure(self) -> None:
        """Reload loaded versions whose configuration changed in the registry: the new runner
        is loaded and warmed beside the old one, which serves until the swap and is released
        once its in-flight requests finish. A configuration that fails to load is logged once
        and the old runner keeps serving."""
        for key, loaded in list(self.loaded.items()):
            info = self.registered.get(key[0], {}).get(key[1])
            if info is None or key in self._loading:
                continue
            wanted = (info.config, info.config_error)
            if wanted == (loaded.info.config, loaded.info.config_error):
                continue
            if self._refused.get(key) == wanted:
                continue
            try:
                runner, recorder = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._open, info, loaded.recorder
                )
            except (LockgateError, OSError, ValueError) as exc:
                self._refused[key] = wanted
                log.error(
                    "model %s v%s: the changed configuration does not load (%s); the previous "
                    "one keeps serving",
                    *key,
                    _reason(exc),
                )
                continue
            self._refused.pop(key, None)
            if self.loaded.get(key) is not loaded:
                runner.release()  # released or reloaded meanwhile
                continue
            self.loaded[key] = self._serve(info, runner, recorder)
            log.info("reloaded %s v%s with its changed configuration", *key)
            task = asyncio.create_task(self._retire(loaded))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: LoadedVersion) -> None:
        await old.batcher.close(self.config.grace_period)
        old.runner.release()
        if old.executor is not None:
            old.executor.shutdown(wait=False)

    def implicit_versions(self) -> dict[str, str]:
        """{model: the version its implicit endpoint serves}, as the gate policy picks it."""
        policy = GatePolicy(self.config.ungated_max_percent)
        return {
            name: policy.implicit_version(
                {v: gate_status(info.gates_passed) for v, info in versions.items()}
            )
            for name, versions in self.registered.items()
            if versions
        }

    def versions_of(self, model: str) -> dict[str, VersionInfo]:
        versions = self.registered.get(model)
        if not versions:
            raise not_found(f"unknown model {model!r}")
        return versions

    def info(self, model: str, version: str) -> VersionInfo:
        info = self.versions_of(model).get(version)
        if info is None:
            raise not_found(f"unknown version {version!r} of model {model!r}")
        return info

    def get(self, model: str, version: str) -> LoadedVersion:
        """The loaded version, or UNAVAILABLE saying why it is not."""
        loaded = self.loaded.get((model, version))
        if loaded is not None:
            return loaded
        self.info(model, version)  # NOT_FOUND for unknown versions
        reason = self.failed.get((model, version))
        if reason is None:
            reason = (
                "not loaded (route traffic to it, or pin it: `lockgate traffic load "
                f"{model} {version}`)"
            )
        raise LockgateError(ErrorKind.UNAVAILABLE, f"model {model} v{version}: {reason}")

    def batch_stats(self, model: str, version: str) -> BatchStats:
        return self.loaded[(model, version)].batcher.stats

    # -- loading and releasing --------------------------------------------------------------------
    async def ensure(self, keys: set[Key], *, retry_failed: bool = True) -> dict[Key, str]:
        """Load every version in `keys` that is not loaded yet; returns {key: reason} for those
        that failed. Concurrent callers share one load of a version. Without `retry_failed`, a
        version that failed less than RETRY_SECONDS ago is not tried again (the state watcher
        re-applies every few seconds; a broken file must not be reloaded and logged each time)."""
        failures: dict[Key, str] = {}
        for key in sorted(keys - self.loaded.keys()):
            failed_at = self._failed_at.get(key)
            if not retry_failed and failed_at and time.monotonic() - failed_at < RETRY_SECONDS:
                failures[key] = self.failed[key]
                continue
            task = self._loading.get(key)
            if task is None:
                task = asyncio.create_task(self._load(key))
                self._loading[key] = task
                task.add_done_callback(lambda _, k=key: self._loading.pop(k, None))  # type: ignore[misc]
            reason = await task
            if reason is not None:
                failures[key] = reason
        return failures

    async def _load(self, key: Key) -> str | None:
        model, version = key
        try:
            info = self.info(model, version)
        except LockgateError as exc:
            return exc.message
        try:
            loop = asyncio.get_running_loop()
            runner, recorder = await loop.run_in_executor(self.executor, self._open, info, None)
        except (LockgateError, OSError, ValueError) as exc:
            reason = _reason(exc)
            self.failed[key] = reason
            self._failed_at[key] = time.monotonic()
            log.error("model %s v%s failed to load: %s", model, version, reason)
            return reason
        self.failed.pop(key, None)
        self._failed_at.pop(key, None)
        self.loaded[key] = self._serve(info, runner, recorder)
        log.info(
            "loaded %s v%s (%s; warm-up on %s; %.0f us/call + %.1f us/row)",
            model,
            version,
            "batched" if runner.spec.batchable else "each request alone",
            runner.warmup_source,
            runner.fixed_cost * 1e6,
            runner.row_cost * 1e6,
        )
        return None

    def _open(
        self, info: VersionInfo, recorder: VersionRecorder | None
    ) -> tuple[ModelRunner, VersionRecorder | None]:
        """Verify, load and warm a version's runner; attach it to the monitor (or keep
        `recorder`, a reload's, when the monitored layout is the same). Blocking."""
        self.registry.verify(info)  # never serve a file that changed after registration
        if info.config_error:
            raise LockgateError(ErrorKind.UNAVAILABLE, info.config_error)
        reference = self.registry.load_reference(info)
        runner = ModelRunner(
            info.spec,
            info.model_path,
            self.config.runner,
            info.config,
            warmup=self.registry.load_warmup(info),
            reference=reference,
        )
        runner.load()
        if self.monitor is None:
            return runner, None
        if recorder is not None and recorder.layout == runner.layout:
            return runner, recorder
        profiles = self.registry.load_profiles(info)  # built at registration
        if profiles is not None:
            reference = None
        recorder = self.monitor.attach(
            info.spec, reference, runner.run, profiles=profiles, layout=runner.layout
        )
        return runner, recorder

    def _serve(
        self, info: VersionInfo, runner: ModelRunner, recorder: VersionRecorder | None
    ) -> LoadedVersion:
        """The batcher of a loaded runner, with the version's own batch size and threads."""
        batch = self.config.batch
        if info.config.max_batch_rows:
            batch = dataclasses.replace(batch, max_batch_rows=info.config.max_batch_rows)
        own = None
        if runner.sessions > 1:
            own = ThreadPoolExecutor(runner.sessions, thread_name_prefix=f"lockgate-{info.name}")
        batcher = Batcher(runner, batch, own or self.executor, recorder, runner.sessions)
        return LoadedVersion(info, runner, batcher, recorder, own)

    async def release(self, key: Key) -> None:
        """Stop routing to `key` first (the caller does), then let in-flight work finish."""
        loaded = self.loaded.pop(key, None)
        if loaded is None:
            return
        finished = await loaded.batcher.close(self.config.grace_period)
        loaded.runner.release()
        if loaded.executor is not None:
            loaded.executor.shutdown(wait=False)
        if self.monitor is not None:  # off the loop: waits for the drain's lock
            await asyncio.to_thread(self.monitor.detach, key)
        log.info(
            "released %s v%s%s", key[0], key[1], "" if finished else " (in-flight work timed out)"
        )

    async def drain(self, timeout: float) -> bool:
        """Refuse new work and wait for every in-flight request; True if all finished."""
        results = await asyncio.gather(*(lv.batcher.close(timeout) for lv in self.loaded.values()))
        self.executor.shutdown(wait=False)
        for lv in self.loaded.values():
            if lv.executor is not None:
                lv.executor.shutdown(wait=False)
        return all(results)


def _reason(exc: Exception) -> str:
    if isinstance(exc, LockgateError):
        return exc.message
    if isinstance(exc, OSError):
        return f"cannot read the model's files: {exc.strerror or exc}"
    return f"unreadable files: {exc}"
