"""The admin API (own listener, 127.0.0.1:8002 by default): traffic splits, blue-green switches,
canaries, shadows, pinned versions and the audit log, as JSON; its OpenAPI document is served at
`/openapi.json`.

Every write: authenticate (bearer token, named in the audit) -> read the state and check the
revision the caller read (`If-Match`, else the current one) -> validate, gate policy included
(`force` + `reason` in the body: an admin's audited override) -> load and warm every version the
change needs -> commit (state + audit record + new revision, one transaction) -> apply to this
process's route table. A refusal at any step changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.control import traffic
from lockgate.control.admin_openapi import openapi_document
from lockgate.control.auth import FORCE, READ, TRAFFIC, Principal, TokenCheck
from lockgate.control.model_api import model_routes
from lockgate.control.policy import Force, GatePolicy
from lockgate.control.registry import Registry
from lockgate.control.rollout_api import rollout_routes
from lockgate.control.rollouts import RolloutStore
from lockgate.control.state import Mutation, State, StateStore
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.monitor.formats import negotiate
from lockgate.monitor.metrics import render_metrics
from lockgate.monitor.snapshot import Snapshot
from lockgate.web import digits, error_response, read_body

log = logging.getLogger(__name__)
Key = tuple[str, str]
MAX_ADMIN_BODY = 1024 * 1024


class MonitorView(Protocol):
    """What the admin API reads from the monitor (of this process, or of all workers)."""

    async def drift_report(self, model: str, version: str) -> dict[str, Any]: ...
    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]: ...


class ServingControl(Protocol):
    """What the admin API needs from the serving side: one pipeline, or a pool of workers."""

    async def refresh_registry(self) -> None: ...
    def registered_versions(self) -> dict[str, frozenset[str]]: ...
    async def ensure_loaded(self, keys: set[Key]) -> dict[Key, str]: ...
    async def apply(self, state: State) -> dict[Key, str]: ...
    async def serving_status(self) -> dict[str, Any]: ...
    async def snapshot(self) -> Snapshot: ...


def _json(doc: Any, status: int = 200, revision: int | None = None) -> Response:
    headers = {"etag": f'"{revision}"'} if revision is not None else None
    body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    return digits(raw.strip().removeprefix("W/").strip('"'), "If-Match (a state revision)")


async def _body(request: Request) -> Any:
    body = await read_body(request, MAX_ADMIN_BODY)
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON body: {exc}") from None


def _limit(request: Request) -> int:
    limit = digits(request.query_params.get("limit", "100"), "limit")
    if not 0 < limit <= 10_000:
        raise invalid("limit must be an integer from 1 to 10000")
    return limit


def _field(doc: Any, name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    if not isinstance(doc, dict):
        raise invalid("request body must be a JSON object")
    value = doc.get(name)
    if value is None:
        if required:
            raise invalid(f"field {name!r} is required")
        return None
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # versions may be sent as numbers
    if isinstance(value, bool) or not isinstance(value, kind):
        raise invalid(f"field {name!r} has the wrong type")
    return value


def _force(doc: Any, who: Principal) -> Force | None:
    """The body's `force` / `reason`: forcing past the gate policy is an admin's act (403 for
    anyone else) and needs a reason for the audit log (400 without one)."""
    if not isinstance(doc, dict) or doc.get("force") in (None, False):
        return None
    if doc["force"] is not True:
        raise invalid("field 'force' must be true or false")
    who.require(FORCE)
    reason = doc.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise invalid("forcing a change past the gate policy needs a 'reason' (for the audit log)")
    return Force(reason.strip(), who.role)


def _endpoint_view(name: str, state: State, catalog: traffic.Catalog) -> dict[str, Any]:
    spec = traffic.current_endpoint(state, catalog, name)
    return {"name": name, "implicit": name not in state.endpoints, **spec.to_doc()}


def build_admin_app(
    store: StateStore,
    control: ServingControl,
    tokens: TokenCheck,
    monitor: MonitorView | None = None,
    policy: GatePolicy | None = None,
) -> Starlette:
    policy = policy or GatePolicy()
    registry = Registry(store.home)

    async def catalog() -> traffic.Catalog:
        await control.refresh_registry()
        versions = control.registered_versions()
        verdicts = await asyncio.to_thread(registry.verdicts, versions)
        return traffic.Catalog(versions, verdicts, policy)

    async def read_state() -> State:
        return await asyncio.to_thread(store.read)

    async def write(
        request: Request,
        build: Callable[[traffic.Catalog], Mutation],
        target_versions: bool,
        doc: Any = None,
    ) -> Response:
        """Commit one change; `doc` is the request body (its `force` and `reason`)."""
        who: Principal = request.state.principal
        actor = who.name
        expected = _if_match(request)
        force = _force(doc, who)
        cat = await catalog()
        mutation = traffic.enforced(build(cat), cat, force)
        current = await read_state()
        if expected is not None and expected != current.revision:
            raise LockgateError(
                ErrorKind.CONFLICT,
                f"stale revision: you read {expected}, the state is at {current.revision}",
            )
        step = mutation(current)  # dry run: validates, names the versions
        change = step.change
        needed: set[Key] = set(step.pins - current.pins)
        target = step.endpoints.get(change.target)
        if target_versions and target is not None:
            needed |= target.versions()
        failures = await control.ensure_loaded(needed)
        if failures:
            reasons = "; ".join(f"{m} v{v}: {why}" for (m, v), why in sorted(failures.items()))
            raise LockgateError(ErrorKind.UNPROCESSABLE, f"nothing changed: {reasons}")
        state = await asyncio.to_thread(
            store.apply, mutation, actor=actor, expected_revision=current.revision, role=who.role
        )
        await control.apply(state)
        log.info(
            "admin: %s %s by %s (%s) -> revision %d",
            change.action,
            change.target,
            actor,
            who.role,
            state.revision,
        )
        doc = {
            "revision": state.revision,
            "action": change.action,
            "target": change.target,
            "before": change.before,
            "after": change.after,
        }
        if change.forced is not None:
            doc["forced"] = change.forced
            log.warning(
                "admin: %s %s forced past the gate policy by %s: %s",
                change.action,
                change.target,
                actor,
                change.forced["reason"],
            )
        return _json(doc, revision=state.revision)

    # -- reads --------------------------------------------------------------------------------
    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        snap = await control.snapshot()
        names = request.query_params.getlist("name[]") or None  # as prometheus-client's
        fmt = negotiate(request.headers.get("accept"))
        return Response(render_metrics(snap, names, fmt), media_type=fmt.content_type)

    async def monitor_snapshot(request: Request) -> Response:
        snap = await control.snapshot()
        return Response(snap.to_bytes(), media_type="application/msgpack")

    async def openapi(request: Request) -> Response:
        return _json(openapi_document())

    async def show_state(request: Request) -> Response:
        cat, state = await catalog(), await read_state()
        names = sorted(state.endpoints.keys() | {m for m, v in cat.versions.items() if v})
        doc = {
            "revision": state.revision,
            "endpoints": [_endpoint_view(n, state, cat) for n in names],
            "pins": [{"model": m, "version": v} for m, v in sorted(state.pins)],
            "serving": await control.serving_status(),
        }
        return _json(doc, revision=state.revision)

    async def show_endpoint(request: Request) -> Response:
        cat, state = await catalog(), await read_state()
        doc = _endpoint_view(request.path_params["name"], state, cat)
        return _json({"revision": state.revision, **doc}, revision=state.revision)

    async def audit(request: Request) -> Response:
        limit = _limit(request)
        target = request.query_params.get("target")
        records = await asyncio.to_thread(store.audit, limit, target)
        return _json({"records": records})

    def watched(request: Request) -> tuple[MonitorView, str, str]:
        if monitor is None:
            raise LockgateError(ErrorKind.NOT_FOUND, "monitoring is off")
        return monitor, request.path_params["model"], request.path_params["version"]

    async def drift(request: Request) -> Response:
        view, model, version = watched(request)
        return _json(await view.drift_report(model, version))

    async def sketches(request: Request) -> Response:
        _, model, version = watched(request)
        figures = (await control.snapshot()).versions.get((model, version))
        if figures is None:
            raise not_found(f"{model} v{version} is not loaded (nothing is monitored for it)")
        return Response(figures.sketches((model, version)), media_type="application/msgpack")

    async def recent(request: Request) -> Response:
        view, model, version = watched(request)
        limit = _limit(request)
        return _json(await view.recent(model, version, limit))

    # -- writes -------------------------------------------------------------------------------
    async def put_endpoint(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        spec = (
            {k: v for k, v in doc.items() if k not in ("force", "reason")}
            if isinstance(doc, dict)
            else doc
        )
        return await write(request, lambda c: traffic.put_endpoint(name, spec, c), True, doc)

    async def delete_endpoint(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        return await write(request, lambda c: traffic.delete_endpoint(name), False, doc)

    async def set_weights(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        weights = _field(doc, "weights", dict)
        return await write(request, lambda c: traffic.set_weights(name, weights, c), True, doc)

    async def switch(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        to = _field(doc, "variant", str)
        return await write(request, lambda c: traffic.switch(name, to, c), True, doc)

    async def canary(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        model = _field(doc, "model", str, required=False)
        version = _field(doc, "version", str, required=False)  # none: ramp the current canary
        weight = _field(doc, "weight", (int, float))
        return await write(
            request, lambda c: traffic.canary(name, model, version, weight, c), True, doc
        )

    async def promote(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        return await write(request, lambda c: traffic.promote(name, c), True, doc)

    async def rollback(request: Request) -> Response:
        name = request.path_params["name"]
        return await write(request, lambda c: traffic.rollback(name, c), True)

    async def add_shadow(request: Request) -> Response:
        name, doc = request.path_params["name"], await _body(request)
        variant = _field(doc, "variant", str)
        model = _field(doc, "model", str, required=False)
        version = _field(doc, "version", str)
        return await write(
            request, lambda c: traffic.add_shadow(name, variant, model, version, c), True
        )

    async def remove_shadow(request: Request) -> Response:
        name, variant = request.path_params["name"], request.path_params["variant"]
        return await write(request, lambda c: traffic.remove_shadow(name, variant, c), False)

    async def load(request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params["version"]
        return await write(request, lambda c: traffic.pin(model, version, c), False)

    async def unload(request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params["version"]
        return await write(request, lambda c: traffic.unpin(model, version), False)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
        *,
        public: bool = False,
        permission: str = READ,
    ) -> Callable[..., Any]:
        """Authenticate and authorise (before the body is read), then map errors to statuses."""

        async def run(request: Request) -> Response:
            try:
                if not public:
                    who = tokens.principal(request.headers.get("authorization"))
                    who.require(permission)
                    request.state.principal, request.state.actor = who, who.name
                return await handler(request)
            except LockgateError as exc:
                response = error_response(exc)
                if exc.kind is ErrorKind.UNAUTHORIZED:
                    response.headers["www-authenticate"] = 'Bearer realm="lockgate-admin"'
                return response
            except Exception:
                log.exception("unexpected error serving admin %s %s", request.method, request.url)
                return _json({"error": "internal server error"}, 500)

        run.permission = None if public else permission  # type: ignore[attr-defined]
        return run

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"no route for {request.method} {request.url.path}"
        if status == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return _json({"error": message}, status)

    ep = "/v1/endpoints/{name}"
    mon = "/v1/models/{model}/versions/{version}"
    routes = [
        Route("/healthz", guarded(healthz, public=True), methods=["GET"]),
        Route("/openapi.json", guarded(openapi, public=True), methods=["GET"]),
        Route("/metrics", guarded(prometheus, public=True), methods=["GET"]),
        Route("/v1/monitor/snapshot", guarded(monitor_snapshot), methods=["GET"]),
        Route("/v1/state", guarded(show_state), methods=["GET"]),
        Route("/v1/audit", guarded(audit), methods=["GET"]),
        Route(ep, guarded(show_endpoint), methods=["GET"]),
        Route(ep, guarded(put_endpoint, permission=TRAFFIC), methods=["PUT"]),
        Route(ep, guarded(delete_endpoint, permission=TRAFFIC), methods=["DELETE"]),
        Route(ep + "/weights", guarded(set_weights, permission=TRAFFIC), methods=["POST"]),
        Route(ep + "/switch", guarded(switch, permission=TRAFFIC), methods=["POST"]),
        Route(ep + "/canary", guarded(canary, permission=TRAFFIC), methods=["POST"]),
        Route(ep + "/canary/promote", guarded(promote, permission=TRAFFIC), methods=["POST"]),
        Route(ep + "/canary/rollback", guarded(rollback, permission=TRAFFIC), methods=["POST"]),
        Route(ep + "/shadows", guarded(add_shadow, permission=TRAFFIC), methods=["POST"]),
        Route(
            ep + "/shadows/{variant}",
            guarded(remove_shadow, permission=TRAFFIC),
            methods=["DELETE"],
        ),
        Route(mon + "/drift", guarded(drift), methods=["GET"]),
        Route(mon + "/sketches", guarded(sketches), methods=["GET"]),
        Route(mon + "/recent", guarded(recent), methods=["GET"]),
        Route(
            "/v1/models/{model}/versions/{version}/load",
            guarded(load, permission=TRAFFIC),
            methods=["POST"],
        ),
        Route(
            "/v1/models/{model}/versions/{version}/unload",
            guarded(unload, permission=TRAFFIC),
            methods=["POST"],
        ),
    ]
    routes += rollout_routes(RolloutStore(store.home, store.url), guarded, registry, policy)
    routes += model_routes(registry, store, guarded, control.refresh_registry)
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
