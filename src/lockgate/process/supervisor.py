"""`lockgate serve --workers N`: one supervisor process and N gateway worker processes.

The supervisor owns everything that must exist once per host: the HTTP listening sockets, the
admin listener (traffic changes, `/metrics`) and the workers' lives. It binds one SO_REUSEPORT
listening socket per worker *slot* and hands it to the slot's worker, so the kernel spreads
connections over the workers, and a slot's socket, with its queue of not-yet-accepted
connections, outlives the worker: a restarted worker (crash or rolling restart) picks up the
same queue and no connection is reset. gRPC listeners are bound by each worker on the shared
port (grpc's own SO_REUSEPORT); a worker replaced by a rolling restart hands its gRPC clients
over to the others before it stops (:mod:`lockgate.process.handover`). Workers are started with
the `spawn` context.

The admin API talks to the workers through :class:`~lockgate.process.pool.WorkerPool`, which
implements the same interfaces as one in-process controller and monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass

from lockgate.config import ServeConfig
from lockgate.control.admin_api import build_admin_app
from lockgate.control.auth import TokenCheck
from lockgate.control.policy import GatePolicy
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.process.gateway import (
    WorkerRole,
    check_admin_binding,
    collect_registry_garbage,
    handover_seconds,
    log_client_keys,
    log_tokens,
    reread_client_keys,
)
from lockgate.process.http_server import bind_socket, http_server
from lockgate.process.pool import Slot, Worker, WorkerPool

log = logging.getLogger(__name__)
Key = tuple[str, str]
START_TIMEOUT = 300.0  # seconds for a worker to load and warm its models
MAX_BACKOFF = 30.0  # seconds between restarts of a worker that keeps dying at once
CHECK_INTERVAL = 0.25


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a spawned worker needs (pickled to the child)."""

    config: ServeConfig
    role: WorkerRole
    log_level: str
    log_json: bool


def worker_main(spec: WorkerSpec) -> None:
    """A worker process: one Gateway in worker mode until SIGTERM. Ctrl-C and a terminal
    hang-up go to the whole process group; the supervisor alone acts on them."""
    from lockgate.logs import configure_logging
    from lockgate.process.gateway import Gateway

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(spec.log_level, json_lines=spec.log_json, worker=spec.role.index)
    spec.role.http_socket.setblocking(False)

    async def run() -> None:
        gateway = Gateway(spec.config, Registry(spec.config.home), spec.role)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, gateway.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, gateway.request_handover)
        await gateway.run()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(run())


class Supervisor:
    """Runs the workers and the admin listener until asked to stop."""

    def __init__(
        self,
        config: ServeConfig,
        workers: int,
        *,
        log_level: str = "info",
        log_json: bool = False,
    ) -> None:
        if workers < 1:
            raise LockgateError(ErrorKind.INVALID, "--workers must be at least 1")
        self.config = config
        self.workers = workers
        self.log_level = log_level
        self.log_json = log_json
        self.ports: dict[str, int] = {}
        self.started = asyncio.Event()
        self.pool = WorkerPool([])
        self._stop = asyncio.Event()
        self._rolling: asyncio.Task[None] | None = None
        self._context = multiprocessing.get_context("spawn")
        self._run_dir = ""
        self._held: list[socket.socket] = []

    def request_stop(self) -> None:
        self._stop.set()

    def request_rolling_restart(self) -> None:
        """Replace every worker, one at a time, each only after its successor is serving."""
        if self._rolling is None or self._rolling.done():
            self._rolling = asyncio.get_running_loop().create_task(self._rolling_restart())

    async def run(self) -> None:
        cfg = self.config
        tokens = TokenCheck(dict(cfg.admin_tokens))
        check_admin_binding(tokens, cfg.admin_host)
        log_tokens(tokens)
        log_client_keys(cfg)
        await collect_registry_garbage(Registry(cfg.home))
        self._run_dir = tempfile.mkdtemp(prefix="lockgate-workers-")
        try:
            await self._run(cfg, tokens)
        finally:
            for sock in self._held:
                sock.close()
            shutil.rmtree(self._run_dir, ignore_errors=True)

    async def _run(self, cfg: ServeConfig, tokens: TokenCheck) -> None:
        first = bind_socket(cfg.http_host, cfg.http_port, reuse_port=True)
        http_port = first.getsockname()[1]
        socks = [first] + [
            bind_socket(cfg.http_host, http_port, reuse_port=True) for _ in range(self.workers - 1)
        ]
        self._held += socks
        grpc_port = cfg.grpc_port or self._reserve_port(cfg.grpc_host)
        admin_sock = bind_socket(cfg.admin_host, cfg.admin_port)
        self._held.append(admin_sock)
        self.worker_config = dataclasses.replace(cfg, http_port=http_port, grpc_port=grpc_port)
        self.pool.slots = [Slot(i, sock) for i, sock in enumerate(socks)]
        self.ports = {"http": http_port, "grpc": grpc_port, "admin": admin_sock.getsockname()[1]}
        try:
            workers = await asyncio.gather(*(self._start(slot) for slot in self.pool.slots))
            for slot, worker in zip(self.pool.slots, workers, strict=True):
                slot.current = worker
            await asyncio.gather(*(self._wait_ready(s, w) for s, w in self.pool.live()))
            store = StateStore(cfg.home, cfg.state_url)
            policy = GatePolicy(cfg.ungated_max_percent)
            admin_app = build_admin_app(store, self.pool, tokens, self.pool, policy)
            admin = http_server(admin_app, cfg)
            admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]), name="admin")
            log.info(
                "%d workers serving: http %s:%d, grpc %s:%d, admin %s:%d",
                self.workers,
                cfg.http_host,
                http_port,
                cfg.grpc_host,
                grpc_port,
                cfg.admin_host,
                self.ports["admin"],
            )
            self.started.set()
            try:
                await self._supervise()
            finally:
                admin.should_exit = True
                await self._stop_all()
                await asyncio.gather(admin_task, return_exceptions=True)
        finally:
            for slot in self.pool.slots:
                for worker in slot.workers():
                    if worker.process.is_alive():
                        worker.process.kill()

    def _reserve_port(self, host: str) -> int:
        """Hold an ephemeral port for the workers' gRPC listeners: bound with SO_REUSEPORT but
        never listening, so the kernel sends it no connections."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        self._held.append(sock)
        return int(sock.getsockname()[1])

    async def _start(self, slot: Slot) -> Worker:
        slot.incarnation += 1
        base = os.path.join(self._run_dir, f"w{slot.index}-{slot.incarnation}")
        role = WorkerRole(slot.index, slot.sock, base + ".sock", base + ".final")
        spec = WorkerSpec(self.worker_config, role, self.log_level, self.log_json)
        process = self._context.Process(
            target=worker_main, args=(spec,), name=f"lockgate-worker-{slot.index}", daemon=False
        )
        await asyncio.to_thread(process.start)
        log.info("worker %d started (pid %s)", slot.index, process.pid)
        return Worker(process, role, time.monotonic())

    async def _wait_ready(self, slot: Slot, worker: Worker, timeout: float = START_TIMEOUT) -> None:
        """Until the worker says it serves; a worker that dies first is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.process.is_alive():
                raise LockgateError(
                    ErrorKind.UNAVAILABLE,
                    f"worker {slot.index} exited with code {worker.process.exitcode} "
                    "while starting",
                )
            with contextlib.suppress(OSError, TimeoutError, LockgateError):
                hello = await worker.channel.hello(timeout=2.0)
                if hello.ready:
                    return
            await asyncio.sleep(0.1)
        raise LockgateError(ErrorKind.UNAVAILABLE, f"worker {slot.index} did not start in time")

    async def _supervise(self) -> None:
        """Restart workers that die, with a growing pause for one that keeps dying at once."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CHECK_INTERVAL)
            if self._stop.is_set():
                break
            now = time.monotonic()
            for slot in self.pool.slots:
                if slot.handover:
                    continue
                if slot.current is not None and not slot.current.process.is_alive():
                    self._on_death(slot, slot.current, now)
                if slot.current is None and now >= slot.restart_at:
                    slot.restarts += 1
                    slot.current = await self._start(slot)
            self.pool.reap()

    def _on_death(self, slot: Slot, worker: Worker, now: float) -> None:
        quick = now - worker.started_at < 10.0
        slot.quick_failures = slot.quick_failures + 1 if quick else 0
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (slot.quick_failures - 1)) if quick else 0.0
        log.error(
            "worker %d (pid %s) died with exit code %s; restarting it in %.1fs (restart #%d)",
            slot.index,
            worker.process.pid,
            worker.process.exitcode,
            delay,
            slot.restarts + 1,
        )
        self.pool.retire(worker)
        slot.current, slot.restart_at = None, now + delay

    async def _rolling_restart(self) -> None:
        if self.pool.slots:  # started (worker_config is set): new workers get the keys as now
            reread = await reread_client_keys(self.worker_config)
            self.worker_config = reread or self.worker_config
        log.info("rolling restart of %d workers", len(self.pool.slots))
        for slot in self.pool.slots:
            old = slot.current
            if self._stop.is_set() or old is None:
                continue
            slot.handover = True
            try:
                new = await self._start(slot)
                try:
                    await self._wait_ready(slot, new)
                except LockgateError as exc:
                    log.error("rolling restart stopped: %s; the old worker stays", exc)
                    new.process.kill()
                    self.pool.retire(new)
                    return
                slot.current = new
                slot.retiring.append(old)
                # Hand over: move its gRPC clients away, finish in-flight requests, then exit.
                os.kill(old.process.pid, signal.SIGUSR1)  # type: ignore[arg-type]
                grace = self.config.grace_period  # the stop after the handover has one too
                await asyncio.to_thread(old.process.join, handover_seconds(grace) + grace + 10)
                self.pool.reap()
            finally:
                slot.handover = False
        log.info("rolling restart complete")

    async def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them to drain, then kill what is left."""
        if self._rolling is not None:
            self._rolling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rolling
        processes = [w.process for s in self.pool.slots for w in s.workers()]
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
        deadline = time.monotonic() + self.config.grace_period + 10
        for process in processes:
            await asyncio.to_thread(process.join, max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
        log.info("all workers stopped")
