"""Admin routes for registered model versions: show one (schema with class labels, what
registration converted, warm-up, configuration) and change its serving configuration.

A configuration change writes the version's `config.toml` in the registry, then commits an
audit record (action `model.config`, before and after) with a new state revision, which makes
every gateway re-read the registry at once and reload the version with its new configuration
(the old one serves until the new one is warm). Mount with the admin app's `guarded` wrapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.control.auth import TRAFFIC, Principal
from lockgate.control.registry import Registry
from lockgate.control.state import Change, State, StateStore, Transition
from lockgate.errors import invalid
from lockgate.model_config import ModelConfig
from lockgate.web import read_body

Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Any]  # the admin app's guarded(handler, *, permission=...)
MAX_CONFIG_BODY = 64 * 1024


def _json(doc: Any, revision: int | None = None) -> Response:
    headers = {"etag": f'"{revision}"'} if revision is not None else None
    return Response(orjson.dumps(doc), headers=headers, media_type="application/json")


def change_config(
    registry: Registry,
    store: StateStore,
    model: str,
    version: str,
    changes: Any,
    actor: str,
    role: str | None = None,
) -> tuple[dict[str, Any], int]:
    """Apply `changes` (keys of ModelConfig) to a version's configuration, audited; returns
    the new configuration and the state revision that announces it. Blocking."""
    if not isinstance(changes, dict) or not changes:
        raise invalid("request body must be a JSON object of configuration keys to change")
    info = registry.get(model, version)
    before = info.config.to_json()
    config = ModelConfig.from_dict({**before, **changes})
    after = config.to_json()
    registry.set_config(model, info.version, config)
    target = f"{model}/{info.version}"

    def record(state: State) -> Transition:
        return Transition(
            state.endpoints, state.pins, Change("model.config", target, before, after)
        )

    try:
        state = store.apply(record, actor=actor, expected_revision=None, role=role)
    except BaseException:
        registry.set_config(model, info.version, info.config)  # unaudited: not applied
        raise
    return after, state.revision


def model_routes(
    registry: Registry,
    store: StateStore,
    guarded: Guard,
    refresh: Callable[[], Awaitable[None]],
) -> list[Route]:
    """`GET /v1/models/{model}/versions/{version}`, `GET|POST .../config`. `refresh` re-reads
    the registry in this process (reloading versions whose configuration changed)."""

    def key(request: Request) -> tuple[str, str]:
        return request.path_params["model"], request.path_params["version"]

    async def show(request: Request) -> Response:
        info = await asyncio.to_thread(registry.get, *key(request))
        return _json(info.to_json())

    async def show_config(request: Request) -> Response:
        info = await asyncio.to_thread(registry.get, *key(request))
        return _json({"model": info.name, "version": info.version, **info.config.to_json()})

    async def post_config(request: Request) -> Response:
        raw = await read_body(request, MAX_CONFIG_BODY)
        try:
            changes = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise invalid(f"malformed JSON body: {exc}") from None
        model, version = key(request)
        who: Principal = request.state.principal
        config, revision = await asyncio.to_thread(
            change_config, registry, store, model, version, changes, who.name, who.role
        )
        await refresh()
        doc = {"model": model, "version": version, "config": config, "revision": revision}
        return _json(doc, revision)

    base = "/v1/models/{model}/versions/{version}"
    return [
        Route(base, guarded(show), methods=["GET"]),
        Route(base + "/config", guarded(show_config), methods=["GET"]),
        Route(base + "/config", guarded(post_config, permission=TRAFFIC), methods=["POST"]),
    ]
