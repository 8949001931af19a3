"""The gateway process: one Pipeline, served over HTTP (uvicorn), gRPC (grpc.aio) and the admin
listener, all on one event loop; graceful shutdown on request."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from prometheus_client import generate_latest

from lockgate.config import ServeConfig
from lockgate.control.admin_api import build_admin_app
from lockgate.control.auth import TokenCheck, is_loopback
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.drain import Monitor
from lockgate.monitor.metrics import metrics_registry
from lockgate.serve.grpc_api import build_grpc_server
from lockgate.serve.http_api import build_http_app
from lockgate.serve.pipeline import Pipeline

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns shutdown for all listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn(app: Any, grace: float) -> _Server:
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting: not needed, and not free
        log_config=None,
        timeout_graceful_shutdown=max(1, int(grace)),
        timeout_keep_alive=30,
        backlog=2048,
    )
    return _Server(config)


class Gateway:
    """Owns the listeners and the pipeline. `ports` is filled once the sockets are bound."""

    def __init__(self, config: ServeConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or Registry(config.home)
        self.state = StateStore(config.home)
        self.monitor = Monitor(config.monitor, config.home) if config.monitor.enabled else None
        self.pipeline = Pipeline(self.registry, config, self.state, self.monitor)
        self.ports: dict[str, int] = {}
        self.admin_app: Any = None
        self.started = asyncio.Event()
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        tokens = TokenCheck(dict(cfg.admin_tokens))
        if not tokens.enabled and not is_loopback(cfg.admin_host):
            raise LockgateError(
                ErrorKind.INVALID,
                f"the admin API would listen on {cfg.admin_host} without a token: configure "
                "tokens (--admin-token-file or LOCKGATE_ADMIN_TOKENS) or bind it to loopback",
            )
        http_sock = bind_socket(cfg.http_host, cfg.http_port)
        admin_sock = bind_socket(cfg.admin_host, cfg.admin_port)
        grpc_server, grpc_port = build_grpc_server(
            self.pipeline, cfg.grpc_host, cfg.grpc_port, max_message_bytes=cfg.max_body_bytes
        )
        self.ports = {
            "http": http_sock.getsockname()[1],
            "grpc": grpc_port,
            "admin": admin_sock.getsockname()[1],
        }
        http = _uvicorn(
            build_http_app(self.pipeline, max_body_bytes=cfg.max_body_bytes), cfg.grace_period
        )
        registry = metrics_registry(self.pipeline, self.monitor)
        self.admin_app = build_admin_app(
            self.state, self.pipeline, tokens, lambda: generate_latest(registry), self.monitor
        )
        admin = _uvicorn(self.admin_app, cfg.grace_period)
        await grpc_server.start()
        tasks = [
            asyncio.create_task(http.serve(sockets=[http_sock]), name="http"),
            asyncio.create_task(admin.serve(sockets=[admin_sock]), name="admin"),
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
        try:
            await self.pipeline.start()
            if self.monitor is not None:
                self.monitor.start()
            # Everything alive now lives as long as the process: keep it out of GC scans.
            gc.collect()
            gc.freeze()
            self.started.set()
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._shutdown(http, admin, grpc_server, tasks)

    async def _shutdown(
        self, http: _Server, admin: _Server, grpc_server: Any, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then exit."""
        log.info(
            "shutting down: finishing in-flight requests (grace %.0fs)", self.config.grace_period
        )
        self.pipeline.begin_shutdown()
        http.should_exit = True
        admin.should_exit = True
        await asyncio.gather(
            grpc_server.stop(self.config.grace_period), *tasks, return_exceptions=True
        )
        finished = await self.pipeline.drain(self.config.grace_period)
        if self.monitor is not None:
            await self.monitor.close()
        log.info(
            "shutdown complete%s", "" if finished else " (some requests did not finish in time)"
        )
