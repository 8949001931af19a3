"""infer(request): route -> validate -> batch -> run -> shadow -> answer; and model metadata.

This is the one place the order of the request path is written; both transports call `infer`.
The route table is swapped whole by the controller when the state database changes; between
choosing a variant and queueing on its batcher there is no `await`, so a version is never
released under a request.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence

from lockgate import __version__
from lockgate.config import ServeConfig
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.monitor.handle import MonitorHandle
from lockgate.serve.batch_stats import BatchStats
from lockgate.serve.models import Key, LoadedVersion, ModelSet
from lockgate.serve.queue import RunInfo
from lockgate.serve.route import EndpointRoute, RouteTable, Variant
from lockgate.serve.runner import Arrays
from lockgate.serve.shadow import ShadowTraffic
from lockgate.serve.transport.client_keys import ClientKeys
from lockgate.types import (
    IndexEntry,
    InferRequest,
    InferResponse,
    ModelSpec,
    ServedConfig,
    Tensor,
    VersionStats,
)

log = logging.getLogger(__name__)

# What server metadata advertises: Triton's extension names, plus lockgate's msgpack bodies.
EXTENSIONS = [
    "classification",
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "msgpack_tensor_data",
]


class DataPlane:
    """The request path and the model metadata both transports read (`InferencePipeline`).

    Its route table is replaced whole by the controller; the only state it changes itself is
    its request counters, read at scrape time."""

    server_name = "lockgate"
    server_version = __version__
    extensions = EXTENSIONS

    def __init__(
        self,
        models: ModelSet,
        shadows: ShadowTraffic,
        config: ServeConfig,
        monitor: MonitorHandle | None = None,
    ) -> None:
        self.models = models
        self.shadows = shadows
        self.config = config
        self.monitor = monitor
        self.routes = RouteTable(-1, {})
        # requests by (endpoint, variant, model, version, protocol, outcome); read at scrape time
        self.requests: Counter[tuple[str, ...]] = Counter()
        self.in_flight = 0  # infer requests admitted and not yet released (see `admit`)
        # the data-plane API keys; the transports check them and it counts each client's calls
        self.clients = ClientKeys(config.client_keys)
        self._ready = False
        self._shutting_down = False  # readiness off, still answering
        self._draining = False  # refusing new requests

    def open(self) -> None:
        """Ready: the first route table is in place and its versions are warm."""
        self._ready = True

    def begin_shutdown(self) -> None:
        self._shutting_down = True

    def close(self) -> None:
        """Refuse new requests from now on (in-flight ones finish)."""
        self._draining = True

    # -- metadata ----------------------------------------------------------------------------
    def ready(self) -> bool:
        return self._ready and not (self._shutting_down or self._draining)

    def model_versions(self, name: str) -> list[str]:
        if name in self.models.registered:
            return sorted(self.models.versions_of(name), key=int)
        return sorted({v.version for v in self.routes.resolve(name).variants}, key=int)

    def model_spec(self, name: str, version: str | None) -> ModelSpec:
        """The schema requests for `name` are decoded against: the served one (the very object
        `infer` validates against, see `validate_inputs`) of the version, or of the endpoint's
        primary variant."""
        if version:
            return self._explicit(name, version).spec
        key = self.routes.resolve(name).primary.key
        loaded = self.models.loaded.get(key)
        return loaded.spec if loaded is not None else self.models.info(*key).spec

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
    def admit(
        self, name: str, version: str | None, deadline: float | None = None
    ) -> ModelSpec | None:
        """Shed at once, before the body is read and decoded: when this process already has
        `max_in_flight` infer requests admitted and unanswered, or when the version the request
        would go to (an endpoint's primary variant) would refuse it once queued (see
        `Batcher.admit`; `deadline` on time.monotonic(), when the transport knows it). Anything
        else wrong with the request is left for `infer` to report. An admitted request counts
        as in flight until the transport calls `release`, exactly once, whatever its outcome.
        Returns `model_spec(name, version)` when that version is loaded (None: ask it), saving
        the transport a second look-up."""
        if self.in_flight >= self.config.max_in_flight:
            raise LockgateError(
                ErrorKind.OVERLOADED,
                f"server is overloaded ({self.in_flight} requests in flight)",
                retry_after=1.0,
            )
        if version:
            loaded = self.models.loaded.get((name, version))
        else:
            route = self.routes.endpoints.get(name)
            loaded = self.models.loaded.get(route.primary.key) if route is not None else None
        if loaded is not None:
            loaded.batcher.admit(deadline)
        self.in_flight += 1
        return loaded.spec if loaded is not None else None

    def release(self) -> None:
        """An admitted request has been answered (see `admit`)."""
        self.in_flight -= 1

    async def infer(self, request: InferRequest) -> InferResponse:
        """Answer one request. Every outcome is counted here, once: with its variant and version
        when routing got that far, else under the endpoint name (or `_unknown`)."""
        try:
            if self._draining:
                raise LockgateError(ErrorKind.UNAVAILABLE, "server is shutting down")
            route = variant = None
            if request.version:
                loaded = self._explicit(request.model, request.version)
            else:
                route = self.routes.resolve(request.model)
                variant = route.pick(_routing_key(request))
                loaded = self.models.get(*variant.key)
        except LockgateError as exc:
            self.count_failure(request.model, request.protocol, exc.kind.value)
            raise
        spec = loaded.spec
        endpoint = route.name if route is not None else request.model
        variant_name = variant.name if variant is not None else ""
        try:
            return await self._run(request, loaded, endpoint, variant_name, route, variant)
        except LockgateError as exc:
            key = (endpoint, variant_name, spec.name, spec.version, request.protocol)
            self.requests[(*key, exc.kind.value)] += 1
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
            meta = loaded.recorder.meta(
                request.id, endpoint, variant_name, received, request.client
            )
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
                self.shadows.send(
                    route.name, shadow, feeds, rows, results, request.id, received, request.client
                )
        return InferResponse(
            model=request.model,
            version=spec.version,
            id=request.id,
            outputs=[Tensor(name, dt, results[name]) for name, dt in outputs],
            parameters=parameters,
        )

    async def feedback(
        self, endpoint: str, labels: list[tuple[str, float]], client: str = ""
    ) -> dict[str, int]:
        """Ground truth for earlier predictions, joined by request id (unknown ids counted);
        logged with `client`, the name of the key that sent them."""
        self.routes.resolve(endpoint)
        if self.monitor is None:
            raise LockgateError(ErrorKind.UNAVAILABLE, "monitoring is off: feedback is not kept")
        result = await self.monitor.submit_feedback(labels, client)
        return {"accepted": len(labels), "matched": result.matched, "unknown": result.unknown}

    def count_failure(self, endpoint: str, protocol: str, outcome: str) -> None:
        """A request that failed before it reached a variant. Names that are not endpoints share
        one label value, so that garbage in URLs cannot grow the metrics without bound."""
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

    # -- Triton's model configuration, statistics and repository index (read-only) -----------
    def served_config(self, name: str, version: str | None) -> ServedConfig:
        spec = self.model_spec(name, version)
        batch = self.config.batch
        rows = batch.max_batch_rows if spec.batchable else 0
        return ServedConfig(spec, rows, round(batch.max_queue_delay * 1e6), 1)

    def statistics(self, name: str | None, version: str | None) -> list[VersionStats]:
        """The loaded versions' counters: all of them, a model's or endpoint's (named `name`
        in the answer, as asked), or one version."""
        failures: Counter[Key] = Counter()
        for (_, _, model, number, _, outcome), n in self.requests.items():
            if outcome != "ok" and model:
                failures[(model, number)] += n
        out = []
        for key in self._loaded_keys(name, version):
            loaded = self.models.loaded.get(key)
            if loaded is None:
                continue
            s = loaded.batcher.stats
            out.append(
                VersionStats(
                    name or key[0],
                    key[1],
                    requests=s.requests,
                    failures=failures[key],
                    rows=s.rows,
                    batches=s.batches,
                    queue_ns=s.queue_ns,
                    compute_ns=s.request_compute_ns,
                    last_started_ns=s.last_started_ns,
                    size_batches=dict(s.size_batches),
                    size_compute_ns=dict(s.size_compute_ns),
                )
            )
        return out

    def _loaded_keys(self, name: str | None, version: str | None) -> list[Key]:
        if name is None:
            if version:
                raise invalid("statistics of a version need the model's name")
            keys: Collection[Key] = self.models.loaded.keys()
        elif version:
            keys = [self._explicit_key(name, version)]
            if keys[0] not in self.models.loaded:
                raise not_found(f"model {name} v{version} is not loaded")
        elif name in self.models.registered:
            keys = [k for k in self.models.loaded if k[0] == name]
        else:
            keys = self.routes.resolve(name).versions()
        return sorted(keys, key=lambda k: (k[0], int(k[1])))

    def repository_index(self) -> list[IndexEntry]:
        """Every registered version: READY when loaded, else UNAVAILABLE and why."""
        out = []
        for model in sorted(self.models.registered):
            for version in sorted(self.models.registered[model], key=int):
                key = (model, version)
                if key in self.models.loaded:
                    out.append(IndexEntry(model, version, "READY"))
                else:
                    reason = self.models.failed.get(key, "not loaded")
                    out.append(IndexEntry(model, version, "UNAVAILABLE", reason))
        return out


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
    """Check names, datatypes and shapes against the model; return feeds and the row count.
    Inputs the transport already checked against this very spec (`request.checked`) are only
    checked for what spans them: every input given once, none missing, one batch dimension."""
    if request.checked is spec:
        feeds = {t.name: t.data for t in request.inputs}
        if len(feeds) == len(request.inputs) == len(spec.inputs):
            return feeds, _rows(feeds, spec)
    feeds = {}
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
    return feeds, _rows(feeds, spec)


def _rows(feeds: Arrays, spec: ModelSpec) -> int:
    """The request's rows: the inputs' common leading dimension (1 for a model that cannot
    batch)."""
    if not spec.batchable:
        return 1
    if len(feeds) == 1:
        n: int = next(iter(feeds.values())).shape[0]
    else:
        rows = {a.shape[0] for a in feeds.values()}
        if len(rows) != 1:
            raise invalid(f"inputs disagree on the batch dimension: {sorted(rows)}")
        (n,) = rows
    if n == 0:
        raise invalid("empty batch: the leading dimension is 0")
    return n


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
