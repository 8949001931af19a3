"""Composition root: parse flags (each with a LOCKGATE_* environment variable) once, build the
configs, start the process."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from lockgate import __version__
from lockgate.cli_home import existing_home, serve_home
from lockgate.cli_models import add_models_parser
from lockgate.cli_rollout import add_rollout_parser
from lockgate.cli_traffic import add_traffic_parser
from lockgate.config import (
    MAX_REQUEST_ELEMENTS,
    BatchConfig,
    MonitorConfig,
    RunnerConfig,
    ServeConfig,
    default_intra_op_threads,
)
from lockgate.control.auth import load_tokens
from lockgate.errors import LockgateError, invalid
from lockgate.logs import configure_logging
from lockgate.tls import client_context, install_client_tls, tls_config

log = logging.getLogger("lockgate")
_BATCH = BatchConfig()
_MONITOR = MonitorConfig()


def _flag(parser: argparse.ArgumentParser, flag: str, default: Any, help: str, **kw: Any) -> None:
    """A flag whose default comes from LOCKGATE_<FLAG> when set."""
    env = "LOCKGATE_" + flag.lstrip("-").replace("-", "_").upper()
    if kw.get("action") == "store_true":
        env_value = os.environ.get(env)
        default = env_value.lower() in ("1", "true", "yes", "on") if env_value else default
        parser.add_argument(flag, default=default, help=f"{help} [env {env}]", **kw)
        return
    parser.add_argument(
        flag,
        default=os.environ.get(env, default),
        help=f"{help} (default: {default}) [env {env}]",
        **kw,
    )


def positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number > 0 or math.isinf(number):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _state_flag(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--state",
        None,
        "state database: postgresql://user@host/db shared by replicas "
        "(default: SQLite state.db in --home)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--home",
        "lockgate-home",
        "state directory: registry, state database, prediction log; a relative path is taken "
        "from the working directory, and a home that does not exist is an error",
        type=Path,
    )
    _flag(parser, "--log-level", "info", "debug, info, warning or error")
    _flag(parser, "--log-json", False, "log JSON lines instead of text", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockgate", description="ONNX model gateway and online monitor"
    )
    parser.add_argument("--version", action="version", version=f"lockgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (HTTP, gRPC, admin)")
    _common(serve)
    _flag(serve, "--http", "0.0.0.0:8000", "HTTP listen address", type=host_port)
    _flag(serve, "--grpc", "0.0.0.0:8001", "gRPC listen address", type=host_port)
    _flag(
        serve, "--admin", "127.0.0.1:8002", "admin API and /metrics listen address", type=host_port
    )
    _flag(
        serve,
        "--init",
        False,
        "create --home as a new empty home when it does not exist (its parent folder must "
        "exist); without it a missing home is refused",
        action="store_true",
    )
    _flag(
        serve,
        "--demo",
        False,
        "build and register the demo models when missing (creates --home like --init)",
        action="store_true",
    )
    _flag(serve, "--max-batch-rows", _BATCH.max_batch_rows, "rows per model run", type=int)
    _flag(serve, "--max-queue-delay-ms", 0.0, "busy-period wait for a fuller batch", type=float)
    _flag(
        serve,
        "--gather-delay-ms",
        _BATCH.gather_delay * 1000,
        "longest wait of a gRPC request for batch-mates at an idle model (0 = none)",
        type=float,
    )
    _flag(
        serve,
        "--max-queue-rows",
        _BATCH.max_queue_rows,
        "queued rows per version before shedding",
        type=int,
    )
    _flag(serve, "--timeout", 30.0, "default request deadline in seconds", type=float)
    _flag(serve, "--max-body-mb", 64.0, "largest request body accepted", type=float)
    _flag(
        serve,
        "--max-buffered-body-mb",
        256.0,
        "request-body bytes held at once for bodies still arriving; beyond it new bodies get 503",
        type=positive,
    )
    _flag(serve, "--header-timeout", 10.0, "seconds to send a request's headers", type=positive)
    _flag(serve, "--body-timeout", 30.0, "seconds between two reads of a body", type=positive)
    _flag(serve, "--idle-timeout", 30.0, "seconds a connection may idle", type=positive)
    _flag(
        serve,
        "--max-request-elements",
        MAX_REQUEST_ELEMENTS,
        "most tensor elements an infer request may declare, all inputs together (413 beyond)",
        type=_positive_int,
    )
    _flag(
        serve,
        "--intra-op-threads",
        default_intra_op_threads(),
        "onnxruntime threads per session",
        type=int,
    )
    _flag(serve, "--grace", 20.0, "seconds to finish in-flight work on SIGTERM", type=float)
    _flag(serve, "--tls-cert", None, "PEM certificate: HTTP, gRPC and admin speak TLS")
    _flag(serve, "--tls-key", None, "PEM private key of --tls-cert")
    _flag(serve, "--tls-client-ca", None, "PEM CA: clients must present a certificate it signed")
    _state_flag(serve)
    _flag(
        serve,
        "--replica-id",
        socket.gethostname(),
        "this gateway's name among replicas (in its prediction-log file names)",
    )
    _flag(
        serve,
        "--workers",
        1,
        "gateway processes sharing the HTTP and gRPC ports (about one per core); the admin "
        "API and /metrics stay one per host; SIGHUP restarts them one at a time",
        type=_positive_int,
    )
    _flag(
        serve,
        "--worker",
        None,
        "also run the retrain worker with this pipeline file (stopped with the gateway)",
        type=Path,
    )
    _flag(serve, "--no-monitor", False, "turn the online monitor off", action="store_true")
    _flag(serve, "--no-predlog", False, "keep no prediction log on disk", action="store_true")
    _flag(
        serve,
        "--ring-rows",
        _MONITOR.ring_rows,
        "rows per set of monitor ring columns (two sets per loaded version)",
        type=int,
    )
    _flag(
        serve,
        "--drift-window-rows",
        _MONITOR.drift_window_rows,
        "rows per drift window",
        type=int,
    )
    _flag(
        serve,
        "--drift-window-seconds",
        _MONITOR.drift_window_seconds,
        "longest drift window in seconds",
        type=float,
    )
    _flag(
        serve,
        "--predlog-retention-gb",
        _MONITOR.retention_bytes / 2**30,
        "prediction log size cap (oldest segments deleted)",
        type=float,
    )
    _flag(
        serve,
        "--admin-token-file",
        None,
        "admin API bearer tokens, one `name:token` per line (also: LOCKGATE_ADMIN_TOKENS="
        "name:token,...); without tokens the admin API binds only to loopback",
        type=Path,
    )
    serve.set_defaults(run=_serve)

    add_models_parser(sub, _common)
    add_traffic_parser(sub, _flag)
    add_rollout_parser(sub, _flag)

    retrain = sub.add_parser(
        "retrain",
        help="run the retrain-and-promote worker",
        description="Run the retrain-and-promote worker. SIGUSR1 asks it for a job now; SIGTERM "
        "stops it between steps.",
    )
    _common(retrain)
    _flag(retrain, "--pipeline", None, "the pipeline file (TOML)", type=Path, required=False)
    _state_flag(retrain)
    _flag(retrain, "--admin-url", None, "admin API address (overrides rollout.admin_url)")
    _flag(
        retrain,
        "--metrics-urls",
        None,
        "comma-separated admin URLs of every gateway replica whose traffic is judged, or "
        "dns+http://name:port for every address of a name (overrides rollout.metrics_urls)",
    )
    _flag(
        retrain,
        "--nice",
        19,
        "CPU niceness of the worker: training yields to serving on a shared machine",
        type=int,
    )
    _flag(
        retrain,
        "--threads",
        1,
        "compute threads for training (BLAS and OpenMP pools); more take cores from serving",
        type=int,
    )
    retrain.add_argument("--now", action="store_true", help="run one job at once, then go on")
    retrain.add_argument("--once", action="store_true", help="exit after one job (or none due)")
    retrain.set_defaults(run=_retrain)

    demo = sub.add_parser("demo", help="demo helpers")
    dsub = demo.add_subparsers(dest="demo_command", required=True)
    drift = dsub.add_parser(
        "drift", help="send drifted traffic with true labels (the retrain loop's trigger)"
    )
    _flag(drift, "--http-address", "127.0.0.1:8000", "the gateway's HTTP address")
    drift.add_argument("--rows", type=int, default=2000, help="single-row requests per round")
    drift.add_argument(
        "--seconds", type=float, default=0.0, help="keep sending rounds this long (0: one round)"
    )
    drift.add_argument("--calm", action="store_true", help="undrifted traffic instead")
    drift.add_argument("--seed", type=int, default=1)
    drift.set_defaults(run=_demo_drift, log_level="warning", log_json=False)
    return parser


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
        grace_period=float(args.grace),
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
        batch=BatchConfig(
            max_batch_rows=int(args.max_batch_rows),
            max_queue_delay=float(args.max_queue_delay_ms) / 1000,
            max_queue_rows=int(args.max_queue_rows),
            gather_delay=float(args.gather_delay_ms) / 1000,
        ),
        runner=RunnerConfig(intra_op_threads=int(args.intra_op_threads)),
        monitor=MonitorConfig(
            enabled=not args.no_monitor,
            predlog=not args.no_predlog,
            ring_rows=int(args.ring_rows),
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


def _client_tls() -> None:
    """lockgate's own HTTPS calls (admin API, /metrics) trust LOCKGATE_TLS_CA and present
    LOCKGATE_TLS_CLIENT_CERT (+ _KEY) for mutual TLS, when set."""
    ca, cert, key = (
        os.environ.get(f"LOCKGATE_TLS_{n}") for n in ("CA", "CLIENT_CERT", "CLIENT_KEY")
    )
    if ca or cert:
        install_client_tls(client_context(ca, cert, key))


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
_POOL_SIZE_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _retrain(args: argparse.Namespace) -> int:
    # Both before the imports: they alone take 0.3 s of CPU, and numpy sizes its BLAS pool as
    # it loads. Idle pool threads spin-wait after each call; with a pool per core, a job slowed
    # the gateway's p99 visibly more (benchmarks/retrain_impact.py, README).
    if int(args.nice) > 0:
        os.nice(int(args.nice))
    if int(args.threads) < 1:
        raise invalid(f"--threads must be >= 1, got {args.threads}")
    os.environ.update(dict.fromkeys(_POOL_SIZE_VARIABLES, str(int(args.threads))))
    from lockgate.control.client import AdminClient
    from lockgate.retrain.pipeline import check_url, load_pipeline
    from lockgate.retrain.worker import RetrainWorker

    if args.pipeline is None:
        raise invalid("--pipeline FILE is required (or LOCKGATE_PIPELINE)")
    spec = load_pipeline(Path(args.pipeline))
    if args.admin_url:
        spec = dataclasses.replace(
            spec, rollout=dataclasses.replace(spec.rollout, admin_url=args.admin_url)
        )
    if args.metrics_urls:
        urls = tuple(u.strip().rstrip("/") for u in args.metrics_urls.split(",") if u.strip())
        for url in urls:
            check_url(url, "--metrics-urls", invalid, dns=True)
        spec = dataclasses.replace(
            spec, rollout=dataclasses.replace(spec.rollout, metrics_urls=urls)
        )
    token = os.environ.get(spec.rollout.token_env)
    admin = AdminClient(spec.rollout.admin_url, token)
    worker = RetrainWorker(spec, existing_home(args.home), admin, args.state)
    worker.run_forever(now=args.now, once=args.once)
    return 0


def _demo_drift(args: argparse.Namespace) -> int:
    from lockgate.demo import send_traffic

    deadline = time.monotonic() + args.seconds
    seed = args.seed
    while True:
        result = send_traffic(args.http_address, args.rows, drifted=not args.calm, seed=seed)
        print(orjson.dumps(result).decode(), flush=True)
        seed += 1
        if time.monotonic() >= deadline:
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, json_lines=args.log_json)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        _client_tls()
        return run(args)
    except LockgateError as exc:
        print(f"lockgate: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
