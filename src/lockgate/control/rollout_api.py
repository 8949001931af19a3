"""Admin routes for progressive rollouts: list and show them, and record an operator's pause /
resume / abort / promote for the rollout controller to act on.

The routes never move traffic themselves: the controller owns the ramp and the record tells it
what the operator asked, so an operator and a worker can never race each other's traffic
changes. Mount them on the admin app with its `guarded` wrapper (bearer auth sets
`request.state.actor`, LockgateError kinds map to statuses: unknown id 404, refused transition
409).

The gate policy: promoting at once gives the candidate 100%, so a candidate without passed gates
cannot be promoted (409 naming the policy); its steps beyond the limit are refused by the
traffic API, which rolls the rollout back with the policy's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.control.auth import FORCE, ROLLOUT
from lockgate.control.policy import PASSED, GatePolicy, gate_status
from lockgate.control.registry import Registry
from lockgate.control.rollouts import ACTIONS, PROMOTE, Rollout, RolloutStore
from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.specs import VersionKey
from lockgate.web import digits

Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Any]  # the admin app's guarded(handler, *, permission=...)


def _json(doc: Any, status: int = 200) -> Response:
    body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


def _limit(request: Request) -> int:
    limit = digits(request.query_params.get("limit", "100"), "limit")  # '²'.isdigit() is true
    if not 0 < limit <= 10_000:
        raise invalid("limit must be an integer from 1 to 10000")
    return limit


def _view(store: RolloutStore, rollout: Rollout) -> dict[str, Any]:
    return {**rollout.to_json(), "aliases": store.aliases(rollout.endpoint)}


def rollout_routes(
    store: RolloutStore,
    guarded: Guard,
    registry: Registry | None = None,
    policy: GatePolicy | None = None,
) -> list[Route]:
    """The `/v1/rollouts` routes, each wrapped in the admin app's `guarded`; with a registry
    and an enabled policy, a promotion of an ungated candidate is refused."""

    def ask(rid: str, name: str, actor: str) -> Rollout:
        if name == PROMOTE and registry is not None and policy is not None and policy.enabled:
            r = store.get(rid)
            key = VersionKey(r.model, r.candidate)
            status = gate_status(registry.verdicts({r.model: [r.candidate]}).get(key))
            if status != PASSED:
                refusal = policy.refusal(r.endpoint, key, status, 100.0)
                raise LockgateError(
                    ErrorKind.CONFLICT, f"rollout {rid} cannot be promoted at once: {refusal}"
                )
        return store.request(rid, name, actor=actor)

    def listing(endpoint: str | None, limit: int) -> list[dict[str, Any]]:
        """Rollouts with their endpoint's aliases as they are now (the current champion, even
        for a rollout that ended long ago)."""
        rollouts = store.rollouts(endpoint, limit)
        aliases = {e: store.aliases(e) for e in {r.endpoint for r in rollouts}}
        return [{**r.to_json(), "aliases": aliases[r.endpoint]} for r in rollouts]

    async def list_rollouts(request: Request) -> Response:
        endpoint = request.query_params.get("endpoint") or None
        rollouts = await asyncio.to_thread(listing, endpoint, _limit(request))
        return _json({"rollouts": rollouts})

    async def show(request: Request) -> Response:
        rid = request.path_params["id"]
        return _json(await asyncio.to_thread(lambda: _view(store, store.get(rid))))

    def action(name: str) -> Handler:
        async def run(request: Request) -> Response:
            actor: str = request.state.actor
            rid = request.path_params["id"]
            rollout = await asyncio.to_thread(ask, rid, name, actor)
            return _json({"action": name, "actor": actor, "rollout": rollout.to_json()})

        return run

    routes = [
        Route("/v1/rollouts", guarded(list_rollouts), methods=["GET"]),
        Route("/v1/rollouts/{id}", guarded(show), methods=["GET"]),
    ]
    routes += [
        Route(
            f"/v1/rollouts/{{id}}/{name}",
            guarded(action(name), permission=FORCE if name == PROMOTE else ROLLOUT),
            methods=["POST"],
        )
        for name in ACTIONS
    ]
    return routes
