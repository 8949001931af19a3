"""The gateway process: one data plane and its controller, served over HTTP (uvicorn), gRPC
(grpc.aio) and the admin listener, all on one event loop; graceful shutdown on request.

As one of `--workers N` processes (a :class:`WorkerRole`), it serves HTTP on the listening socket
its supervisor hands it and gRPC on a shared port, and instead of the admin listener answers its
supervisor's calls on a private unix socket (:mod:`lockgate.process.channel`)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.config import ServeConfig
from lockgate.control.admin_api import build_admin_app
from lockgate.control.auth import TokenCheck, is_loopback
from lockgate.control.policy import GatePolicy
from lockgate.control.registry import Registry
from lockgate.control.state import State, StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.drain import Monitor
from lockgate.monitor.handle import MonitorHandle
from lockgate.monitor.snapshot import Snapshot
from lockgate.process import channel
from lockgate.process.handover import hand_over
from lockgate.process.http_server import (
    HTTP_LINGER,
    Server,
    bind_socket,
    http_server,
)
from lockgate.process.monitor_remote import MonitorProcess
from lockgate.serve.controller import Controller
from lockgate.serve.repository import ModelRepository
from lockgate.serve.transport.client_keys import ENV as API_KEYS_ENV
from lockgate.serve.transport.client_keys import load_keys
from lockgate.serve.transport.grpc_server import build_grpc_server
from lockgate.serve.transport.http_app import build_http_app

log = logging.getLogger(__name__)
# Allocations between young-generation collections (CPython's default is 700). Measured with wrk
# at 64 connections on the tiny model: 20,000 gives about 6% more requests per second, and a
# young collection of that size takes well under a millisecond.
YOUNG_GC_THRESHOLD = 20_000
# A worker's gRPC connections get a graceful GOAWAY within this age, so that a worker handed over
# by a rolling restart sees its clients move to the other workers (serve/handover.py). Clients
# reconnect this often; a reconnect costs well under a millisecond.
GRPC_CONNECTION_AGE = 5.0


def handover_seconds(grace_period: float) -> float:
    """The longest a handed-over worker waits for its gRPC connections to end: their age (with
    gRPC core's jitter) plus the grace their calls get after the GOAWAY."""
    return GRPC_CONNECTION_AGE * 1.2 + grace_period


@dataclass(frozen=True)
class WorkerRole:
    """How a worker process differs from a lone gateway."""

    index: int
    http_socket: socket.socket  # listening, SO_REUSEPORT; owned by the supervisor's slot
    peer_path: str  # unix socket the supervisor calls
    final_path: str  # where the last snapshot goes at exit, so no count is lost


async def collect_registry_garbage(registry: Registry) -> None:
    """Remove what registrations that crashed left behind (a lone gateway or the supervisor,
    at start)."""
    removed = await asyncio.to_thread(registry.gc_temp)
    if removed:
        log.info("removed %d unfinished registrations from the registry", removed)


def monitor_for(config: ServeConfig, writer: str) -> MonitorHandle | None:
    """The monitor the configuration asks for: none, in this process, or in a child process
    (docs/design/monitor-tail-cost.md#monitor-process)."""
    if not config.monitor.enabled:
        return None
    if config.monitor.process:
        if not hasattr(os, "memfd_create"):
            raise ValueError("the monitor process needs memfd_create (Linux): --no-monitor-process")
        return MonitorProcess(config.monitor, config.home, writer)
    return Monitor(config.monitor, config.home, writer)


def log_tokens(tokens: TokenCheck) -> None:
    """Name each admin token's role at start, so an operator sees who may do what."""
    if tokens.enabled:
        roles = ", ".join(f"{who.name} ({who.role})" for who in tokens.principals())
        log.info("admin tokens: %s", roles)


def log_client_keys(config: ServeConfig) -> None:
    """Name each data-plane API key's scope at start (never the key)."""
    if config.client_keys:
        keys = ", ".join(f"{name} ({scope})" for name, _, scope in config.client_keys)
        log.info("API keys (infer, feedback and model reads need one): %s", keys)


async def reread_client_keys(config: ServeConfig) -> ServeConfig | None:
    """`config` with its API keys read again from `--api-keys-file` (and LOCKGATE_API_KEYS),
    or None, logged, when there is no file or it is not valid (the old keys stay)."""
    if config.client_keys_file is None:
        if config.client_keys:
            log.warning("SIGHUP: API keys from LOCKGATE_API_KEYS only are read at start only")
        return None
    try:
        entries = await asyncio.to_thread(
            load_keys, config.client_keys_file, os.environ.get(API_KEYS_ENV)
        )
    except LockgateError as exc:
        log.error("SIGHUP: the API keys stay as they were: %s", exc.message)
        return None
    new = dataclasses.replace(config, client_keys=entries)
    log_client_keys(new)
    return new


def check_admin_binding(tokens: TokenCheck, host: str) -> None:
    """Refuse an admin listener reachable from other hosts without a token."""
    if not tokens.enabled and not is_loopback(host):
        raise LockgateError(
            ErrorKind.INVALID,
            f"the admin API would listen on {host} without a token: configure "
            "tokens (--admin-token-file or LOCKGATE_ADMIN_TOKENS) or bind it to loopback",
        )


class Gateway:
    """Owns the listeners, the data plane and its controller. `ports` is filled once the
    sockets are bound."""

    def __init__(
        self,
        config: ServeConfig,
        registry: Registry | None = None,
        worker: WorkerRole | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.registry = registry or Registry(config.home)
        self.state = StateStore(config.home, config.state_url)
        writer = config.replica + (f".w{worker.index}" if worker is not None else "")
        self.monitor = monitor_for(config, writer)
        self.controller = Controller(self.registry, config, self.state, self.monitor)
        self.dataplane = self.controller.dataplane
        # Triton's model repository extension on the data-plane listeners (admin tokens apply)
        self.repository = ModelRepository(self.controller, TokenCheck(dict(config.admin_tokens)))
        self.ports: dict[str, int] = {}
        self.admin_app: Any = None
        self.http_app: Any = None
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._handing_over = False
        self._background: set[asyncio.Task[None]] = set()

    def request_stop(self) -> None:
        self._stop.set()

    def request_key_reload(self) -> None:
        """Read the API keys file again (SIGHUP on a lone gateway): key rotation without a
        restart. The file is read off the event loop; the keys are swapped on it."""
        task = asyncio.get_running_loop().create_task(self._reload_keys())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_keys(self) -> None:
        new = await reread_client_keys(self.config)
        if new is not None:
            self.config = new
            self.dataplane.clients.replace(new.client_keys)

    def request_handover(self) -> None:
        """Stop as a worker replaced by a rolling restart: move the gRPC clients to the other
        workers first (serve/handover.py), so that no call fails."""
        self._handing_over = True
        self._stop.set()

    async def run(self) -> None:
        if self.worker is not None:
            await self._run_worker(self.worker)
            return
        cfg = self.config
        tokens = TokenCheck(dict(cfg.admin_tokens))
        check_admin_binding(tokens, cfg.admin_host)
        log_tokens(tokens)
        log_client_keys(cfg)
        await collect_registry_garbage(self.registry)
        http_sock = bind_socket(cfg.http_host, cfg.http_port)
        admin_sock = bind_socket(cfg.admin_host, cfg.admin_port)
        grpc_server, grpc_port = build_grpc_server(
            self.dataplane,
            cfg.grpc_host,
            cfg.grpc_port,
            max_message_bytes=cfg.max_body_bytes,
            tls=cfg.tls,
            max_request_elements=cfg.max_request_elements,
            repository=self.repository,
            clients=self.dataplane.clients,
        )
        self.ports = {
            "http": http_sock.getsockname()[1],
            "grpc": grpc_port,
            "admin": admin_sock.getsockname()[1],
        }
        self.admin_app = build_admin_app(
            self.state, self.controller, tokens, self.monitor, GatePolicy(cfg.ungated_max_percent)
        )
        servers = [
            (self._http_server(), http_sock),
            (http_server(self.admin_app, cfg), admin_sock),
        ]
        log.info(
            "listening: http %s:%d, grpc %s:%d, admin %s:%d",
            cfg.http_host,
            self.ports["http"],
            cfg.grpc_host,
            grpc_port,
            cfg.admin_host,
            self.ports["admin"],
        )
        await self._serve(servers, grpc_server)

    def _http_server(self) -> Server:
        cfg = self.config
        app = self.http_app = build_http_app(
            self.dataplane,
            max_body_bytes=cfg.max_body_bytes,
            max_buffered_bytes=cfg.max_buffered_body_bytes,
            max_request_elements=cfg.max_request_elements,
            repository=self.repository,
            clients=self.dataplane.clients,
        )
        return http_server(app, cfg, linger=HTTP_LINGER)

    async def _run_worker(self, role: WorkerRole) -> None:
        cfg = self.config
        grpc_server, grpc_port = build_grpc_server(
            self.dataplane,
            cfg.grpc_host,
            cfg.grpc_port,
            max_message_bytes=cfg.max_body_bytes,
            reuse_port=True,
            max_connection_age=GRPC_CONNECTION_AGE,
            grace_period=cfg.grace_period,
            tls=cfg.tls,
            max_request_elements=cfg.max_request_elements,
            repository=self.repository,
            clients=self.dataplane.clients,
        )
        self.ports = {"http": role.http_socket.getsockname()[1], "grpc": grpc_port}
        http = self._http_server()
        peer_server = await channel.serve(role.peer_path, _WorkerAnswers(self, role))
        log.info("worker %d (pid %d) serving", role.index, os.getpid())
        try:
            await self._serve([(http, role.http_socket)], grpc_server)
        finally:
            peer_server.close()
            snap = await self.controller.snapshot()
            Path(role.final_path + ".tmp").write_bytes(snap.to_bytes())
            os.replace(role.final_path + ".tmp", role.final_path)

    async def _serve(self, servers: list[tuple[Server, socket.socket]], grpc_server: Any) -> None:
        """Serve until asked to stop. A lone gateway listens at once (its readiness endpoint
        says when models are warm); a worker loads first and only then takes connections from
        its slot's socket, so a restarted worker never answers for models it has not loaded."""
        tasks: list[asyncio.Task[None]] = []

        async def listen() -> None:
            await grpc_server.start()
            tasks.extend(
                asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn-{i}")
                for i, (server, sock) in enumerate(servers)
            )

        try:
            if self.worker is None:
                await listen()
            await self.controller.start()
            if self.worker is not None:
                await listen()
            if self.monitor is not None:
                self.monitor.start()
            # Everything alive now lives as long as the process: keep it out of GC scans. The
            # request path makes few reference cycles, so young collections can be rarer too.
            gc.collect()
            gc.freeze()
            gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
            self.started.set()
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._shutdown([s for s, _ in servers], grpc_server, tasks)

    async def _shutdown(
        self, servers: list[Server], grpc_server: Any, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then exit."""
        log.info(
            "shutting down: finishing in-flight requests (grace %.0fs)", self.config.grace_period
        )
        self.controller.begin_shutdown()
        for server in servers:
            server.should_exit = True
        if self._handing_over:
            await hand_over(self.ports["grpc"], handover_seconds(self.config.grace_period))
        await asyncio.gather(
            grpc_server.stop(self.config.grace_period), *tasks, return_exceptions=True
        )
        finished = await self.controller.drain(self.config.grace_period)
        if self.monitor is not None:
            await self.monitor.close()
        log.info(
            "shutdown complete%s", "" if finished else " (some requests did not finish in time)"
        )


class _WorkerAnswers:
    """A worker's answers to its supervisor (channel.WorkerService): for the admin API and
    /metrics, which the supervisor serves for all workers."""

    def __init__(self, gateway: Gateway, role: WorkerRole) -> None:
        self.gateway = gateway
        self.controller = gateway.controller
        self.role = role

    async def hello(self) -> channel.Hello:
        return channel.Hello(self.role.index, os.getpid(), self.gateway.started.is_set())

    async def snapshot(self) -> Snapshot:
        return await self.controller.snapshot()

    async def status(self) -> dict[str, Any]:
        status = await self.controller.serving_status()
        return {"index": self.role.index, "pid": os.getpid(), **status}

    async def registered(self) -> dict[str, frozenset[str]]:
        await self.controller.refresh_registry()
        return self.controller.registered_versions()

    async def ensure_loaded(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return await self.controller.ensure_loaded(keys)

    async def apply(self, state: State) -> dict[tuple[str, str], str]:
        return await self.controller.apply(state)

    async def drift_report(self, model: str, version: str) -> dict[str, Any]:
        return await self._monitor().drift_report(model, version)

    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]:
        return await self._monitor().recent(model, version, limit)

    def _monitor(self) -> MonitorHandle:
        if self.gateway.monitor is None:
            raise LockgateError(ErrorKind.NOT_FOUND, "monitoring is off")
        return self.gateway.monitor
