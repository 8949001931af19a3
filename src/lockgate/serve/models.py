"""The model versions this process knows (from the registry) and has loaded (runner + batcher).

Loading is blocking (onnxruntime session, warm-up) and runs in a thread. A version that fails to
load is remembered with its reason, so readiness and error responses can say why. A version
that stops receiving traffic is released only after its in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lockgate.config import ServeConfig
from lockgate.control.registry import Registry, VersionInfo
from lockgate.errors import ErrorKind, LockgateError, not_found
from lockgate.monitor.drain import Monitor
from lockgate.monitor.record import VersionRecorder
from lockgate.serve.batch import Batcher, BatchStats
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

    @property
    def spec(self) -> ModelSpec:
        return self.info.spec


class ModelSet:
    def __init__(self, registry: Registry, config: ServeConfig, monitor: Monitor | None) -> None:
        self.registry = registry
        self.config = config
        self.monitor = monitor
        self.registered: dict[str, dict[str, VersionInfo]] = {}
        self.loaded: dict[Key, LoadedVersion] = {}
        self.failed: dict[Key, str] = {}
        self._failed_at: dict[Key, float] = {}
        self._loading: dict[Key, asyncio.Task[str | None]] = {}
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

    def latest(self) -> dict[str, str]:
        return {
            name: max(versions, key=int) for name, versions in self.registered.items() if versions
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
        runner = ModelRunner(info.spec, info.model_path, self.config.runner)

        def verify_and_load() -> VersionRecorder | None:
            self.registry.verify(info)  # never serve a file that changed after registration
            runner.load()
            if self.monitor is None:
                return None
            profiles = self.registry.load_profiles(info)  # built at registration
            if profiles is not None:
                return self.monitor.attach(info.spec, profiles=profiles)
            reference = self.registry.load_reference(info)
            return self.monitor.attach(info.spec, reference, runner.run)

        try:
            loop = asyncio.get_running_loop()
            recorder = await loop.run_in_executor(self.executor, verify_and_load)
        except LockgateError as exc:
            self.failed[key] = exc.message
            self._failed_at[key] = time.monotonic()
            log.error("model %s v%s failed to load: %s", model, version, exc.message)
            return exc.message
        except OSError as exc:
            self.failed[key] = f"cannot read the model file: {exc.strerror}"
            self._failed_at[key] = time.monotonic()
            log.error("model %s v%s failed to load: %s", model, version, exc)
            return self.failed[key]
        self.failed.pop(key, None)
        self._failed_at.pop(key, None)
        batcher = Batcher(runner, self.config.batch, self.executor, recorder)
        self.loaded[key] = LoadedVersion(info, runner, batcher, recorder)
        log.info(
            "loaded %s v%s (%.0f us/call + %.1f us/row)",
            model,
            version,
            runner.fixed_cost * 1e6,
            runner.row_cost * 1e6,
        )
        return None

    async def release(self, key: Key) -> None:
        """Stop routing to `key` first (the caller does), then let in-flight work finish."""
        loaded = self.loaded.pop(key, None)
        if loaded is None:
            return
        finished = await loaded.batcher.close(self.config.grace_period)
        loaded.runner.release()
        if self.monitor is not None:  # off the loop: waits for the drain's lock
            await asyncio.to_thread(self.monitor.detach, key)
        log.info(
            "released %s v%s%s", key[0], key[1], "" if finished else " (in-flight work timed out)"
        )

    async def drain(self, timeout: float) -> bool:
        """Refuse new work and wait for every in-flight request; True if all finished."""
        results = await asyncio.gather(*(lv.batcher.close(timeout) for lv in self.loaded.values()))
        self.executor.shutdown(wait=False)
        return all(results)
