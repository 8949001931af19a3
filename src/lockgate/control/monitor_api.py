"""The admin API's monitor routes: `/metrics` (the format the scraper asks for), the merged
snapshot, and a version's drift report, latency sketches and recent predictions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.monitor.formats import negotiate
from lockgate.monitor.metrics import render_metrics
from lockgate.monitor.snapshot import Snapshot
from lockgate.web import digits

Guard = Callable[..., Any]  # the admin app's guarded(handler, *, permission=...)


class MonitorView(Protocol):
    """What the admin API reads from the monitor (of this process, or of all workers)."""

    async def drift_report(self, model: str, version: str) -> dict[str, Any]: ...
    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]: ...


def _json(doc: Any) -> Response:
    body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, media_type="application/json")


def _limit(request: Request) -> int:
    limit = digits(request.query_params.get("limit", "100"), "limit")
    if not 0 < limit <= 10_000:
        raise invalid("limit must be an integer from 1 to 10000")
    return limit


def monitor_routes(
    snapshot: Callable[[], Awaitable[Snapshot]], monitor: MonitorView | None, guarded: Guard
) -> list[Route]:
    """The monitor's routes, each wrapped in the admin app's `guarded`; `snapshot`: this
    process's (or the workers' merged) figures. Without `monitor`, the per-version reports
    are NOT_FOUND."""

    async def prometheus(request: Request) -> Response:
        snap = await snapshot()
        names = request.query_params.getlist("name[]") or None  # as prometheus-client's
        fmt = negotiate(request.headers.get("accept"))
        return Response(render_metrics(snap, names, fmt), media_type=fmt.content_type)

    async def monitor_snapshot(request: Request) -> Response:
        snap = await snapshot()
        return Response(snap.to_bytes(), media_type="application/msgpack")

    def watched(request: Request) -> tuple[MonitorView, str, str]:
        if monitor is None:
            raise LockgateError(ErrorKind.NOT_FOUND, "monitoring is off")
        return monitor, request.path_params["model"], request.path_params["version"]

    async def drift(request: Request) -> Response:
        view, model, version = watched(request)
        return _json(await view.drift_report(model, version))

    async def sketches(request: Request) -> Response:
        _, model, version = watched(request)
        figures = (await snapshot()).versions.get((model, version))
        if figures is None:
            raise not_found(f"{model} v{version} is not loaded (nothing is monitored for it)")
        return Response(figures.sketches((model, version)), media_type="application/msgpack")

    async def recent(request: Request) -> Response:
        view, model, version = watched(request)
        limit = _limit(request)
        return _json(await view.recent(model, version, limit))

    mon = "/v1/models/{model}/versions/{version}"
    return [
        Route("/metrics", guarded(prometheus, public=True), methods=["GET"]),
        Route("/v1/monitor/snapshot", guarded(monitor_snapshot), methods=["GET"]),
        Route(mon + "/drift", guarded(drift), methods=["GET"]),
        Route(mon + "/sketches", guarded(sketches), methods=["GET"]),
        Route(mon + "/recent", guarded(recent), methods=["GET"]),
    ]
