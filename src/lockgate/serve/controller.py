"""Apply the state database to this process: load and warm what the routes need, swap the route
table whole, release what nothing uses; watch the revision; report status and metrics figures.

The controller is the serving side's slow path (the admin API's `ServingControl` for one
process); the request path is :class:`~lockgate.serve.dataplane.DataPlane`, which it owns and
whose route table it swaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from typing import Any

from lockgate.config import ServeConfig
from lockgate.control.registry import Registry
from lockgate.control.state import State, StateStore
from lockgate.monitor.capture import capture_process
from lockgate.monitor.handle import MonitorHandle
from lockgate.monitor.snapshot import BATCH_FIELDS, SHADOW_FIELDS, Snapshot
from lockgate.monitor.warmup import warm_up
from lockgate.serve.dataplane import DataPlane
from lockgate.serve.models import Key, ModelSet
from lockgate.serve.route import EndpointRoute, RouteTable, build_route_table
from lockgate.serve.shadow import ShadowTraffic

log = logging.getLogger(__name__)
STATE_POLL_SECONDS = 0.2
REGISTRY_SCAN_SECONDS = 5.0


class Controller:
    def __init__(
        self,
        registry: Registry,
        config: ServeConfig,
        state: StateStore,
        monitor: MonitorHandle | None = None,
    ) -> None:
        self.state = state
        self.monitor = monitor
        self.models = ModelSet(registry, config, monitor)
        self.shadows = ShadowTraffic(self.models)
        self.dataplane = DataPlane(self.models, self.shadows, config, monitor)
        self._apply_lock = asyncio.Lock()  # one route change at a time (not on the hot path)
        self._watcher: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm every version that receives traffic or is pinned, and compile the
        monitor's kernels meanwhile, then watch the state database for changes. A version that
        fails to load is reported, not fatal."""
        kernels = asyncio.create_task(self._warm_up_monitor(), name="monitor-warm-up")
        try:
            await self.models.refresh()
            await self.apply(await asyncio.to_thread(self.state.read))
        finally:
            await kernels
        self._watcher = asyncio.create_task(self._watch(), name="state-watcher")
        self.dataplane.open()
        log.info(
            "serving %d endpoints, %d model versions (%d failed to load)",
            len(self.dataplane.routes.endpoints),
            len(self.models.loaded),
            len(self.models.failed),
        )

    async def _warm_up_monitor(self) -> None:
        """Compile the monitor's kernels on a thread before readiness, so that the first drain
        does not compile them holding its lock and the GIL (monitor/warmup.py)."""
        if self.monitor is None:
            return
        try:
            warmed = await asyncio.to_thread(warm_up)
        except Exception:  # the drain still works: it compiles what it needs itself
            log.exception("the monitor's kernels could not be compiled at start")
            return
        log.info(
            "monitor kernels ready in %.2f s (%d compiled, %d read from numba's cache)",
            warmed.seconds,
            warmed.compiled,
            warmed.cached,
        )

    async def apply(self, state: State, *, retry_failed: bool = True) -> dict[Key, str]:
        """Make `state` the serving configuration: load what it needs, swap the route table,
        then release what nothing uses any more. Endpoints whose new variants fail to load keep
        their previous route. Returns the versions that failed, with reasons."""
        async with self._apply_lock:
            if state.revision < self.dataplane.routes.revision:
                return {}  # a newer state is already applied (the watcher was first)
            table = build_route_table(
                state.revision, state.endpoints, self.models.implicit_versions()
            )
            needed = table.versions() | state.pins
            failures = await self.models.ensure(needed, retry_failed=retry_failed)
            if failures:
                table = self._around_failures(table, failures)
            self.dataplane.routes = table
            unused = self.models.loaded.keys() - table.versions() - state.pins
            for key in unused:
                task = asyncio.create_task(self.models.release(key))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
            return failures

    def _around_failures(self, table: RouteTable, failures: dict[Key, str]) -> RouteTable:
        """Route around versions that failed to load. An endpoint that served before keeps its
        old route when that one is whole; otherwise its loaded variants serve the failed ones'
        share; with none loaded it keeps the new route, so that its requests get 503 naming the
        failure rather than 404."""
        current = self.dataplane.routes
        kept = dict(table.endpoints)
        for name, route in table.endpoints.items():
            if not route.versions() & failures.keys():
                continue
            old = current.endpoints.get(name)
            if old is not None and not old.versions() & failures.keys():
                kept[name] = old
            else:
                kept[name] = route.without(failures.keys()) or route
            for variant in kept[name].fallback:
                log.warning(
                    "endpoint %s: variant %s (%s v%s) failed to load; the other variants "
                    "serve its share",
                    name,
                    variant.name,
                    variant.model,
                    variant.version,
                )
        return RouteTable(table.revision, kept)

    async def _watch(self) -> None:
        """Notice new state revisions (and newly registered models) and apply them."""
        last_scan = time.monotonic()
        while True:
            await asyncio.sleep(STATE_POLL_SECONDS)
            try:
                revision = await asyncio.to_thread(self.state.revision)
                rescan = time.monotonic() - last_scan > REGISTRY_SCAN_SECONDS
                if revision == self.dataplane.routes.revision and not rescan:
                    continue
                if rescan:
                    last_scan = time.monotonic()
                await self.models.refresh()
                await self.apply(await asyncio.to_thread(self.state.read), retry_failed=False)
            except Exception:
                log.exception("applying the state database failed; keeping the current routes")

    def begin_shutdown(self) -> None:
        """Report not-ready so load balancers stop sending, while in-flight traffic completes."""
        self.dataplane.begin_shutdown()

    async def drain(self, timeout: float) -> bool:
        """Stop taking new requests and wait for in-flight ones; True if all finished in time."""
        self.dataplane.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.shadows.drain(timeout)
        return await self.models.drain(timeout)

    # -- ServingControl (for the admin API) -------------------------------------------------------
    async def refresh_registry(self) -> None:
        await self.models.refresh()

    def registered_versions(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(versions) for name, versions in self.models.registered.items()}

    async def ensure_loaded(self, keys: set[Key]) -> dict[Key, str]:
        return await self.models.ensure(keys)

    async def snapshot(self) -> Snapshot:
        """This process's metrics figures now: the serving counters (owned by the event loop,
        so read on it), then the monitor's (under its lock, so off the loop)."""
        snap = self.serving_snapshot()
        await asyncio.to_thread(self._capture_off_loop, snap)
        return snap

    def _capture_off_loop(self, snap: Snapshot) -> None:
        capture_process(snap)
        if self.monitor is not None:
            self.monitor.capture(snap)

    def serving_snapshot(self) -> Snapshot:
        """The serving side's figures: a handful of dict copies."""
        routes = self.dataplane.routes
        snap = Snapshot(
            revision=routes.revision,
            requests=Counter(dict(self.dataplane.requests)),
            clients=Counter(dict(self.dataplane.clients.requests)),
            weights={
                (route.name, v.name, v.model, v.version): v.weight
                for route in routes.endpoints.values()
                for v in route.variants
            },
            loaded=set(self.models.loaded),
            failed=set(self.models.failed),
            fallback={
                (route.name, v.name, v.model, v.version)
                for route in routes.endpoints.values()
                for v in route.fallback
            },
            monitored=self.monitor is not None,
        )
        for key, lv in list(self.models.loaded.items()):
            stats = lv.batcher.stats
            snap.batch[key] = Counter({f: getattr(stats, f) for f in BATCH_FIELDS})
            snap.queued_rows[key] = lv.batcher.queued_rows
        for key, shadow in list(self.shadows.stats.items()):
            snap.shadows[key] = Counter({f: getattr(shadow, f) for f in SHADOW_FIELDS})
        return snap

    async def serving_status(self) -> dict[str, Any]:
        """What this process serves right now: revision, versions, failures, shadow counters."""
        return {
            "revision": self.dataplane.routes.revision,
            "requests": sum(self.dataplane.requests.values()),
            "loaded": [{"model": m, "version": v} for m, v in sorted(self.models.loaded)],
            "failed": [
                {"model": m, "version": v, "reason": why}
                for (m, v), why in sorted(self.models.failed.items())
            ],
            "fallback": [
                {"endpoint": route.name, "variant": v.name, "model": v.model, "version": v.version}
                for route in sorted(self.dataplane.routes.endpoints.values(), key=_name)
                for v in route.fallback
            ],
            "shadows": [
                {"endpoint": e, "variant": v, **dataclasses.asdict(stats)}
                for (e, v), stats in sorted(self.shadows.stats.items())
            ],
        }


def _name(route: EndpointRoute) -> str:
    return route.name
