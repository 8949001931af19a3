"""handle(request): route -> validate -> batch -> run -> shadow -> answer.

This is the one place the order of the request path is written; both transports call `infer`.
The route table is swapped whole when the state database changes; between choosing a variant and
queueing on its batcher there is no `await`, so a version is never released under a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lockgate import __version__
from lockgate.config import ServeConfig
from lockgate.control.registry import Registry
from lockgate.control.state import State, StateStore
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.monitor.drain import Monitor
from lockgate.monitor.metrics import capture_monitor, capture_serving
from lockgate.monitor.snapshot import Snapshot
from lockgate.serve.batch import BatchStats, RunInfo
from lockgate.serve.models import Key, LoadedVersion, ModelSet
from lockgate.serve.route import EndpointRoute, RouteTable, Variant, build_route_table
from lockgate.serve.runner import Arrays
from lockgate.serve.shadow import ShadowTraffic
from lockgate.types import InferRequest, InferResponse, ModelSpec, Tensor

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "msgpack_tensor_data", "model_repository_read"]
STATE_POLL_SECONDS = 0.2
REGISTRY_SCAN_SECONDS = 5.0


class Pipeline:
    server_name = "lockgate"
    server_version = __version__
    extensions = EXTENSIONS

    def __init__(
        self,
        registry: Registry,
        config: ServeConfig,
        state: StateStore,
        monitor: Monitor | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.monitor = monitor
        self.models = ModelSet(registry, config, monitor)
        self.shadows = ShadowTraffic(self.models)
        self.routes = RouteTable(-1, {})
        self._pins: frozenset[Key] = frozenset()
        self._apply_lock = asyncio.Lock()  # one route change at a time (not on the hot path)
        self._watcher: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        # requests by (endpoint, variant, model, version, protocol, outcome); read at scrape time
        self.requests: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self._ready = False
        self._shutting_down = False  # readiness off, still answering
        self._draining = False  # refusing new requests

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm every version that receives traffic or is pinned, then watch the state
        database for changes. A version that fails to load is reported, not fatal."""
        await self.models.refresh()
        await self.apply(await asyncio.to_thread(self.state.read))
        self._watcher = asyncio.create_task(self._watch(), name="state-watcher")
        self._ready = True
        log.info(
            "serving %d endpoints, %d model versions (%d failed to load)",
            len(self.routes.endpoints),
            len(self.models.loaded),
            len(self.models.failed),
        )

    async def apply(self, state: State, *, retry_failed: bool = True) -> dict[Key, str]:
        """Make `state` the serving configuration: load what it needs, swap the route table,
        then release what nothing uses any more. Endpoints whose new variants fail to load keep
        their previous route. Returns the versions that failed, with reasons."""
        async with self._apply_lock:
            table = build_route_table(state.revision, state.endpoints, self.models.latest())
            needed = table.versions() | state.pins
            failures = await self.models.ensure(needed, retry_failed=retry_failed)
            if failures:
                # An endpoint that served before keeps its old route; a new one keeps the new
                # route, so its requests get 503 naming the failure rather than 404.
                kept = dict(table.endpoints)
                for name, route in table.endpoints.items():
                    old = self.routes.endpoints.get(name)
                    if route.versions() & failures.keys() and old is not None:
                        kept[name] = old
                table = RouteTable(state.revision, kept)
            self.routes = table
            self._pins = state.pins
            unused = self.models.loaded.keys() - table.versions() - state.pins
            for key in unused:
                task = asyncio.create_task(self.models.release(key))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
            return failures

    async def _watch(self) -> None:
        """Notice new state revisions (and newly registered models) and apply them."""
        last_scan = time.monotonic()
        while True:
            await asyncio.sleep(STATE_POLL_SECONDS)
            try:
                revision = await asyncio.to_thread(self.state.revision)
                rescan = time.monotonic() - last_scan > REGISTRY_SCAN_SECONDS
                if revision == self.routes.revision and not rescan:
                    continue
                if rescan:
                    last_scan = time.monotonic()
                await self.models.refresh()
                await self.apply(await asyncio.to_thread(self.state.read), retry_failed=False)
            except Exception:
                log.exception("applying the state database failed; keeping the current routes")

    def begin_shutdown(self) -> None:
        """Report not-ready so load balancers stop sending, while in-flight traffic completes."""
        self._shutting_down = True

    async def drain(self, timeout: float) -> bool:
        """Stop taking new requests and wait for in-flight ones; True if all finished in time."""
        self._draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.shadows.drain(timeout)
        return await self.models.drain(timeout)

    # -- control (for the admin API) -----------------------------------------------------------
    async def refresh_registry(self) -> None:
        await self.models.refresh()

    def registered_versions(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(versions) for name, versions in self.models.registered.items()}

    async def ensure_loaded(self, keys: set[Key]) -> dict[Key, str]:
        return await self.models.ensure(keys)

    async def snapshot(self) -> Snapshot:
        """This process's metrics figures now."""
        snap = capture_serving(self)
        if self.monitor is not None:
            await asyncio.to_thread(capture_monitor, snap, self.monitor)
        return snap

    async def serving_status(self) -> dict[str, Any]:
        """What this process serves right now: revision, versions, failures, shadow counters."""
        return {
            "revision": self.routes.revision,
            "loaded": [{"model": m, "version": v} for m, v in sorted(self.models.loaded)],
            "failed": [
                {"model": m, "version": v, "reason": why}
                for (m, v), why in sorted(self.models.failed.items())
            ],
            "shadows": [
                {"endpoint": e, "variant": v, **dataclasses.asdict(stats)}
                for (e, v), stats in sorted(self.shadows.stats.items())
            ],
        }

    # -- metadata ----------------------------------------------------------------------------
    def ready(self) -> bool:
        return self._ready and not (self._shutting_down or self._draining)

    def model_versions(self, name: str) -> list[str]:
        if name in self.models.registered:
            return sorted(self.models.versions_of(name), key=int)
        return sorted({v.version for v in self.routes.resolve(name).variants}, key=int)

    def model_spec(self, name: str, version: str | None) -> ModelSpec:
        if version:
            return self._explicit(name, version).spec
        return self.models.info(*self.routes.resolve(name).primary.key).spec

    def model_ready(self, name: str, version: str | None) -> bool:
        if not self.ready():
            return False
        if version:
            model, version = self._explicit_key(name, version)
            return (model, version) in self.models.loaded
        route = self.routes.resolve(name)
        return all(v.key in self.models.loaded for v in route.variants if v.weight > 0)

    def batch_stats(self, model: str, version: str) -> BatchStats:
        return self.models.batch_stats(model, version)

    def _explicit_key(self, name: str, version: str) -> Key:
        """An explicit version: of the model `name`, or of the endpoint `name`'s variants."""
        if name in self.models.registered:
            return (name, version)
        route = self.routes.resolve(name)
        matches = {v.key for v in (*route.variants, *route.shadows) if v.version == version}
        if len(matches) != 1:
            raise not_found(f"endpoint {name!r} has no single variant at version {version!r}")
        (key,) = matches
        return key

    def _explicit(self, name: str, version: str) -> LoadedVersion:
        return self.models.get(*self._explicit_key(name, version))

    # -- the request path --------------------------------------------------------------------
    def admit(self, name: str, version: str | None) -> None:
        """Shed at once, before the body is read and decoded, when the version the request
        would go to (an endpoint's primary variant) has a full queue. Anything else wrong with
        the request is left for `infer` to report."""
        if version:
            loaded = self.models.loaded.get((name, version))
        else:
            route = self.routes.endpoints.get(name)
            loaded = self.models.loaded.get(route.primary.key) if route is not None else None
        if loaded is not None:
            loaded.batcher.admit()

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._draining:
            raise LockgateError(ErrorKind.UNAVAILABLE, "server is shutting down")
        route = variant = None
        if request.version:
            loaded = self._explicit(request.model, request.version)
        else:
            route = self.routes.resolve(request.model)
            variant = route.pick(_routing_key(request))
            loaded = self.models.get(*variant.key)
        spec = loaded.spec
        endpoint = route.name if route is not None else request.model
        variant_name = variant.name if variant is not None else ""
        try:
            return await self._run(request, loaded, endpoint, variant_name, route, variant)
        except LockgateError as exc:  # counted here, where the variant and version are known
            key = (endpoint, variant_name, spec.name, spec.version, request.protocol)
            self.requests[(*key, exc.kind.value)] += 1
            exc.counted = True
            raise

    async def _run(
        self,
        request: InferRequest,
        loaded: LoadedVersion,
        endpoint: str,
        variant_name: str,
        route: EndpointRoute | None,
        variant: Variant | None,
    ) -> InferResponse:
        spec = loaded.spec
        feeds, rows = validate_inputs(request, spec)
        outputs = select_outputs(request, spec)
        deadline = self._deadline(request)
        received = request.received_ns or time.perf_counter_ns()
        meta = None
        if loaded.recorder is not None:
            meta = loaded.recorder.meta(request.id, endpoint, variant_name, received)
        results, run = await loaded.batcher.submit(feeds, rows, deadline, meta, alone=request.alone)
        parameters = _run_parameters(run)
        self.requests[
            (endpoint, variant_name, spec.name, spec.version, request.protocol, "ok")
        ] += 1
        if variant is not None and route is not None:
            parameters["variant"] = variant.name
            if variant.model != request.model:
                parameters["model"] = variant.model
            for shadow in route.shadows:
                self.shadows.send(route.name, shadow, feeds, rows, results, request.id, received)
        return InferResponse(
            model=request.model,
            version=spec.version,
            id=request.id,
            outputs=[Tensor(name, dt, results[name]) for name, dt in outputs],
            parameters=parameters,
        )

    async def feedback(self, endpoint: str, labels: list[tuple[str, float]]) -> dict[str, int]:
        """Ground truth for earlier predictions, joined by request id (unknown ids counted)."""
        self.routes.resolve(endpoint)
        if self.monitor is None:
            raise LockgateError(ErrorKind.UNAVAILABLE, "monitoring is off: feedback is not kept")
        result = await self.monitor.submit_feedback(labels)
        return {"accepted": len(labels), "matched": result.matched, "unknown": result.unknown}

    def count_failure(self, endpoint: str, protocol: str, outcome: str) -> None:
        """A failed request; names that are not endpoints share one label value so that
        garbage in URLs cannot grow the metrics without bound."""
        name = endpoint if endpoint in self.routes.endpoints else "_unknown"
        self.requests[(name, "", "", "", protocol, outcome)] += 1

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


def _routing_key(request: InferRequest) -> str | None:
    if request.routing_key is not None:
        return request.routing_key
    key = request.parameters.get("routing_key")
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise invalid(f"parameter 'routing_key' must be a non-empty string, got {key!r}")
    return key


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
    if len(feeds) != len(spec.inputs):  # every name given is known and given once
        missing = [i.name for i in spec.inputs if i.name not in feeds]
        raise invalid(f"missing input(s) {', '.join(map(repr, missing))} for model {spec.name}")
    if not spec.batchable:
        return feeds, 1
    if len(feeds) == 1:
        n = next(iter(feeds.values())).shape[0]
    else:
        rows = {a.shape[0] for a in feeds.values()}
        if len(rows) != 1:
            raise invalid(f"inputs disagree on the batch dimension: {sorted(rows)}")
        (n,) = rows
    if n == 0:
        raise invalid("empty batch: the leading dimension is 0")
    return feeds, n


def select_outputs(request: InferRequest, spec: ModelSpec) -> Sequence[tuple[str, str]]:
    if not request.outputs:
        return spec.all_outputs
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
