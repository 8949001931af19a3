"""Triton's model repository extension on the data-plane listeners: loading a model pins a
version in the state database and unloading drops its pins, through the same validated changes
(control/traffic.py) and audit log as the admin API; every gateway process applies them the way
it applies any state change.

It is an admin act: with admin tokens configured it needs `Authorization: Bearer <admin token>`;
without, it is taken only from loopback clients.
"""

from __future__ import annotations

import asyncio
import logging

from lockgate.control import traffic
from lockgate.control.auth import LOCAL, TRAFFIC, TokenCheck, is_loopback
from lockgate.control.state import Mutation
from lockgate.errors import ErrorKind, LockgateError, not_found
from lockgate.serve.controller import Controller

log = logging.getLogger(__name__)


class ModelRepository:
    """`RepositoryControl` for one gateway process."""

    def __init__(self, controller: Controller, tokens: TokenCheck) -> None:
        self.controller = controller
        self.tokens = tokens

    def actor(self, authorization: str | None, client_host: str | None) -> str:
        """The caller's name, once it is known to hold the `traffic` permission (an operator's
        or an admin's token: control/auth.py)."""
        if self.tokens.enabled:
            who = self.tokens.principal(authorization)
            who.require(TRAFFIC)
            return who.name
        if client_host is None or not is_loopback(client_host):
            raise LockgateError(
                ErrorKind.UNAUTHORIZED,
                "loading and unloading models is for loopback clients when no admin tokens "
                "are configured",
            )
        return self.tokens.actor(None)

    async def load(self, model: str, version: str | None, actor: str) -> None:
        """Pin `version` (default: the latest) of `model` and have it loaded and warm here."""
        catalog = await self._catalog()
        version = version or catalog.latest(model)
        mutation = traffic.pin(model, version, catalog)  # validates model and version
        failures = await self.controller.ensure_loaded({(model, version)})
        if failures:
            reason = failures[model, version]
            raise LockgateError(ErrorKind.UNPROCESSABLE, f"model {model} v{version}: {reason}")
        state = await asyncio.to_thread(self.controller.state.read)
        if (model, version) not in state.pins:
            await self._apply(mutation, actor)

    async def unload(self, model: str, version: str | None, actor: str) -> None:
        """Drop the pins of `model` (or of one version). A version that still receives
        traffic stays loaded; unloading what is not pinned changes nothing."""
        catalog = await self._catalog()
        if version is not None:
            catalog.check(model, version)
        elif model not in catalog.versions:
            raise not_found(f"unknown model {model!r}")
        state = await asyncio.to_thread(self.controller.state.read)
        for key in sorted(state.pins):
            if key[0] == model and version in (None, key[1]):
                await self._apply(traffic.unpin(*key), actor)

    async def _catalog(self) -> traffic.Catalog:
        await self.controller.refresh_registry()
        return traffic.Catalog(self.controller.registered_versions())

    async def _apply(self, mutation: Mutation, actor: str) -> None:
        store = self.controller.state
        roles = {who.name: who.role for who in self.tokens.principals()}
        role = roles.get(actor, LOCAL.role)
        state = await asyncio.to_thread(
            store.apply, mutation, actor=actor, expected_revision=None, role=role
        )
        await self.controller.apply(state)
        log.info("model repository: change by %s -> revision %d", actor, state.revision)
