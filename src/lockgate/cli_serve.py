"""`lockgate serve`: the gateway's flags, its config, and the process (a lone gateway or a
supervisor of workers, with the retrain worker beside it when asked)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from lockgate.cli_flags import (
    common,
    flag,
    host_port,
    percent,
    positive,
    positive_int,
    state_flag,
)
from lockgate.cli_home import serve_home
from lockgate.config import (
    MAX_REQUEST_ELEMENTS,
    BatchConfig,
    MonitorConfig,
    RunnerConfig,
    ServeConfig,
    default_intra_op_threads,
)
from lockgate.control.auth import load_tokens
from lockgate.control.policy import DEFAULT_UNGATED_MAX_PERCENT
from lockgate.serve.transport.client_keys import ENV as API_KEYS_ENV
from lockgate.serve.transport.client_keys import load_keys
from lockgate.tls import tls_config

log = logging.getLogger("lockgate")
_BATCH = BatchConfig()
_SERVE = ServeConfig()
_MONITOR = MonitorConfig()
# The drain thread unless asked: on a quiet host the monitor process measured the same tail and
# throughput as the thread and held 190 MB more; it helps where other jobs load the host
# (docs/design/monitor-tail-cost.md#monitor-process).
MONITOR_PROCESS = False


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the gateway (HTTP, gRPC, admin)")
    common(serve)
    flag(serve, "--http", "0.0.0.0:8000", "HTTP listen address", type=host_port)
    flag(serve, "--grpc", "0.0.0.0:8001", "gRPC listen address", type=host_port)
    flag(
        serve, "--admin", "127.0.0.1:8002", "admin API and /metrics listen address", type=host_port
    )
    flag(
        serve,
        "--init",
        False,
        "create --home as a new empty home when it does not exist (its parent folder must "
        "exist); without it a missing home is refused",
        action="store_true",
    )
    flag(
        serve,
        "--demo",
        False,
        "build and register the demo models when missing (creates --home like --init)",
        action="store_true",
    )
    flag(serve, "--max-batch-rows", _BATCH.max_batch_rows, "rows per model run", type=int)
    flag(serve, "--max-queue-delay-ms", 0.0, "busy-period wait for a fuller batch", type=float)
    flag(
        serve,
        "--gather-delay-ms",
        _BATCH.gather_delay * 1000,
        "longest wait of a gRPC request for batch-mates at an idle model (0 = none)",
        type=float,
    )
    flag(
        serve,
        "--max-queue-rows",
        _BATCH.max_queue_rows,
        "queued rows per version before shedding",
        type=int,
    )
    flag(
        serve,
        "--max-queue-wait-ms",
        _BATCH.max_queue_wait * 1000,
        "longest wait for the model, per version (0 = no bound): a request expected to wait "
        "longer is refused at once (503 + Retry-After), a queued one that did is shed without "
        "running, and while the oldest queued request has waited over half of it the queue is "
        "served newest first. A request that could not finish before its deadline is refused "
        "(504 / DEADLINE_EXCEEDED) before it runs",
        type=float,
    )
    flag(
        serve,
        "--max-in-flight",
        _SERVE.max_in_flight,
        "infer requests admitted and not yet answered, per worker process, HTTP and gRPC "
        "together; beyond it a request is refused before its body is read (503 + Retry-After / "
        "RESOURCE_EXHAUSTED). An HTTP connection refused for overload that comes straight back "
        "(within the Retry-After it was given) is read again only after a pause (10 ms, doubling "
        "while it keeps coming back, at most 1 s, and long enough that a worker answers at most "
        "about 1000 such 503s a second), so clients that retry at once cannot take the event "
        "loop from the requests being served",
        type=positive_int,
    )
    flag(serve, "--timeout", 30.0, "default request deadline in seconds", type=float)
    flag(serve, "--max-body-mb", 64.0, "largest request body accepted", type=float)
    flag(
        serve,
        "--max-buffered-body-mb",
        256.0,
        "request-body bytes held at once for bodies still arriving; beyond it new bodies get 503",
        type=positive,
    )
    flag(serve, "--header-timeout", 10.0, "seconds to send a request's headers", type=positive)
    flag(serve, "--body-timeout", 30.0, "seconds between two reads of a body", type=positive)
    flag(serve, "--idle-timeout", 30.0, "seconds a connection may idle", type=positive)
    flag(
        serve,
        "--max-request-elements",
        MAX_REQUEST_ELEMENTS,
        "most tensor elements an infer request may declare, all inputs together (413 beyond)",
        type=positive_int,
    )
    flag(
        serve,
        "--intra-op-threads",
        default_intra_op_threads(),
        "onnxruntime threads per session",
        type=int,
    )
    flag(serve, "--grace", 20.0, "seconds to finish in-flight work on SIGTERM", type=float)
    flag(serve, "--tls-cert", None, "PEM certificate: HTTP, gRPC and admin speak TLS")
    flag(serve, "--tls-key", None, "PEM private key of --tls-cert")
    flag(serve, "--tls-client-ca", None, "PEM CA: clients must present a certificate it signed")
    state_flag(serve)
    flag(
        serve,
        "--replica-id",
        socket.gethostname(),
        "this gateway's name among replicas (in its prediction-log file names)",
    )
    flag(
        serve,
        "--workers",
        1,
        "gateway processes sharing the HTTP and gRPC ports (about one per core); the admin "
        "API and /metrics stay one per host; SIGHUP restarts them one at a time",
        type=positive_int,
    )
    flag(
        serve,
        "--worker",
        None,
        "also run the retrain worker with this pipeline file (stopped with the gateway)",
        type=Path,
    )
    flag(
        serve,
        "--ungated-max-percent",
        DEFAULT_UNGATED_MAX_PERCENT,
        "most of an endpoint's traffic a version without passed gates may take (0: none; "
        "100: no limit); shadows are always allowed; an admin may force past it, audited",
        type=percent,
    )
    flag(serve, "--no-monitor", False, "turn the online monitor off", action="store_true")
    flag(serve, "--no-predlog", False, "keep no prediction log on disk", action="store_true")
    flag(
        serve,
        "--monitor-process",
        MONITOR_PROCESS,
        "run the monitor's drain and statistics in a child process fed through shared memory "
        "(Linux; about 190 MB more; the event loop never hands the GIL to a drain: for hosts "
        "whose cores other jobs share)",
        action=argparse.BooleanOptionalAction,
    )
    flag(
        serve,
        "--ring-rows",
        _MONITOR.ring_rows,
        "rows per set of monitor ring columns (two sets per loaded version)",
        type=int,
    )
    flag(
        serve,
        "--drain-interval",
        _MONITOR.drain_interval,
        "seconds between the monitor's drains (sooner when a ring is half full): how fresh "
        "its metrics are",
        type=positive,
    )
    flag(
        serve,
        "--drift-window-rows",
        _MONITOR.drift_window_rows,
        "rows per drift window",
        type=int,
    )
    flag(
        serve,
        "--drift-window-seconds",
        _MONITOR.drift_window_seconds,
        "longest drift window in seconds",
        type=float,
    )
    flag(
        serve,
        "--predlog-retention-gb",
        _MONITOR.retention_bytes / 2**30,
        "prediction log size cap (oldest segments deleted)",
        type=float,
    )
    flag(
        serve,
        "--admin-token-file",
        None,
        "admin API bearer tokens, one `name:token` per line (also: LOCKGATE_ADMIN_TOKENS="
        "name:token,...); without tokens the admin API binds only to loopback",
        type=Path,
    )
    flag(
        serve,
        "--api-keys-file",
        None,
        "data-plane API keys, one `name:key[:scope]` per line, scope infer, feedback or all "
        "(also: LOCKGATE_API_KEYS=name:key,...); without keys the inference listeners are open",
        type=Path,
    )
    serve.set_defaults(run=_serve)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        home=Path(args.home),
        http_host=args.http[0],
        http_port=args.http[1],
        grpc_host=args.grpc[0],
        grpc_port=args.grpc[1],
        admin_host=args.admin[0],
        admin_port=args.admin[1],
        default_timeout=float(args.timeout),
        max_body_bytes=int(float(args.max_body_mb) * 1024 * 1024),
        max_buffered_body_bytes=int(float(args.max_buffered_body_mb) * 1024 * 1024),
        header_timeout=float(args.header_timeout),
        body_timeout=float(args.body_timeout),
        idle_timeout=float(args.idle_timeout),
        max_request_elements=int(args.max_request_elements),
        max_in_flight=int(args.max_in_flight),
        grace_period=float(args.grace),
        ungated_max_percent=float(args.ungated_max_percent),
        demo=bool(args.demo),
        state_url=args.state or None,
        replica=str(args.replica_id),
        tls=tls_config(args.tls_cert, args.tls_key, args.tls_client_ca),
        admin_tokens=tuple(
            load_tokens(
                Path(args.admin_token_file) if args.admin_token_file else None,
                os.environ.get("LOCKGATE_ADMIN_TOKENS"),
            ).items()
        ),
        client_keys=load_keys(
            Path(args.api_keys_file) if args.api_keys_file else None,
            os.environ.get(API_KEYS_ENV),
        ),
        client_keys_file=Path(args.api_keys_file) if args.api_keys_file else None,
        batch=BatchConfig(
            max_batch_rows=int(args.max_batch_rows),
            max_queue_delay=float(args.max_queue_delay_ms) / 1000,
            max_queue_rows=int(args.max_queue_rows),
            max_queue_wait=float(args.max_queue_wait_ms) / 1000,
            gather_delay=float(args.gather_delay_ms) / 1000,
        ),
        runner=RunnerConfig(intra_op_threads=int(args.intra_op_threads)),
        monitor=MonitorConfig(
            enabled=not args.no_monitor,
            predlog=not args.no_predlog,
            ring_rows=int(args.ring_rows),
            drain_interval=float(args.drain_interval),
            process=bool(args.monitor_process),
            drift_window_rows=int(args.drift_window_rows),
            drift_window_seconds=float(args.drift_window_seconds),
            retention_bytes=int(float(args.predlog_retention_gb) * 2**30),
        ),
    )


def _serve(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry
    from lockgate.process.gateway import Gateway
    from lockgate.process.supervisor import Supervisor

    home = serve_home(Path(args.home), create=bool(args.init or args.demo))
    config = dataclasses.replace(serve_config(args), home=home)
    registry = Registry(config.home)
    if config.demo:
        from lockgate.demo import ensure_demo_models

        for info in ensure_demo_models(registry):
            log.info("demo model %s v%s registered", info.name, info.version)
        _pin_demo_versions(config.home, registry, config.state_url)

    async def run() -> None:
        gateway: Gateway | Supervisor
        loop = asyncio.get_running_loop()
        if int(args.workers) > 1:
            gateway = Supervisor(
                config, int(args.workers), log_level=args.log_level, log_json=args.log_json
            )
            loop.add_signal_handler(signal.SIGHUP, gateway.request_rolling_restart)
        else:
            gateway = Gateway(config, registry)
            loop.add_signal_handler(signal.SIGHUP, gateway.request_key_reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gateway.request_stop)
        task = asyncio.create_task(gateway.run())
        started = asyncio.create_task(gateway.started.wait())
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        worker = None
        if gateway.started.is_set() and args.worker is not None:
            scheme = "https" if config.tls is not None else "http"
            admin_url = f"{scheme}://127.0.0.1:{gateway.ports['admin']}"
            worker = _start_worker(config.home, Path(args.worker), admin_url, config.state_url)
        if config.demo and gateway.started.is_set():
            print(demo_banner(gateway.ports, args.worker), flush=True)
        try:
            await task
        finally:
            if worker is not None:
                worker.terminate()
                await asyncio.to_thread(worker.wait, 30)

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    except OSError as exc:
        log.error("%s", exc)
        return 2
    return 0


def _pin_demo_versions(home: Path, registry: Any, state_url: str | None) -> None:
    """Keep classifier v1 warm beside v2 (latest), so explicit-version calls and a blue-green
    switch work in the demo at once."""
    from lockgate.control import traffic
    from lockgate.control.state import StateStore

    store = StateStore(home, state_url)
    if ("classifier", "1") not in store.read().pins:
        versions = {
            n: frozenset(v.version for v in registry.versions(n)) for n in registry.models()
        }
        mutation = traffic.pin("classifier", "1", traffic.Catalog(versions))
        store.apply(mutation, actor="demo", expected_revision=None)
    store.close()


def _start_worker(
    home: Path, pipeline: Path, admin_url: str, state_url: str | None
) -> subprocess.Popen[bytes]:
    """The retrain worker as its own process (it never shares the gateway's event loop). With
    TLS, it reaches the admin API at https://127.0.0.1 (the certificate must name that address)
    and trusts LOCKGATE_TLS_CA, which it inherits."""
    cmd = [sys.executable, "-m", "lockgate.cli", "retrain", "--home", str(home)]
    cmd += ["--pipeline", str(pipeline), "--admin-url", admin_url]
    log.info("starting the retrain worker: %s", " ".join(cmd))
    env = {**os.environ, "LOCKGATE_STATE": state_url} if state_url else None  # not in argv
    return subprocess.Popen(cmd, env=env)


def demo_banner(ports: dict[str, int], worker: Path | None = None) -> str:
    http, grpc, admin = ports["http"], ports["grpc"], ports["admin"]
    row = ", ".join(["0.5"] * 16)
    loop = ""
    if worker is not None:
        loop = f"""
  # the retrain loop ({worker}): drift the classifier's traffic (with true labels) ...
  .venv/bin/lockgate demo drift --http-address localhost:{http} --seconds 180
  # ... then watch the drift alert, the retrain and the canary steps:
  curl -s localhost:{admin}/metrics | grep 'lockgate_drift_alert.*input'
  .venv/bin/lockgate rollout status --admin-url http://localhost:{admin}
"""
    return f"""
lockgate is serving the demo models (classifier v1+v2, regressor, mlp), monitoring on.

  curl -s localhost:{http}/v2/models/classifier/infer -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,16],"data":[{row}]}}]}}'

  # the stock tritonclient, over HTTP and gRPC:
  .venv/bin/python examples/client.py --http-port {http} --grpc-port {grpc}
{loop}
Ctrl-C stops the gateway (in-flight requests finish first).
"""


# Thread-pool sizes read by numpy's OpenBLAS, OpenMP and MKL when they load.
