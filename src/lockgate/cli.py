"""Composition root: parse flags (each with a LOCKGATE_* environment variable) once, build the
configs, start the process."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from lockgate import __version__
from lockgate.cli_flags import common, flag, state_flag
from lockgate.cli_home import existing_home
from lockgate.cli_models import add_models_parser
from lockgate.cli_rollout import add_rollout_parser
from lockgate.cli_serve import add_serve_parser
from lockgate.cli_traffic import add_traffic_parser
from lockgate.errors import LockgateError, invalid
from lockgate.logs import configure_logging
from lockgate.tls import client_context, install_client_tls

log = logging.getLogger("lockgate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockgate", description="ONNX model gateway and online monitor"
    )
    parser.add_argument("--version", action="version", version=f"lockgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_serve_parser(sub)

    add_models_parser(sub, common)
    add_traffic_parser(sub, flag)
    add_rollout_parser(sub, flag)

    retrain = sub.add_parser(
        "retrain",
        help="run the retrain-and-promote worker",
        description="Run the retrain-and-promote worker. SIGUSR1 asks it for a job now; SIGTERM "
        "stops it between steps.",
    )
    common(retrain)
    flag(retrain, "--pipeline", None, "the pipeline file (TOML)", type=Path, required=False)
    state_flag(retrain)
    flag(retrain, "--admin-url", None, "admin API address (overrides rollout.admin_url)")
    flag(
        retrain,
        "--metrics-urls",
        None,
        "comma-separated admin URLs of every gateway replica whose traffic is judged, or "
        "dns+http://name:port for every address of a name (overrides rollout.metrics_urls)",
    )
    flag(
        retrain,
        "--nice",
        19,
        "CPU niceness of the worker: training yields to serving on a shared machine",
        type=int,
    )
    flag(
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
    flag(drift, "--http-address", "127.0.0.1:8000", "the gateway's HTTP address")
    drift.add_argument("--rows", type=int, default=2000, help="single-row requests per round")
    drift.add_argument(
        "--seconds", type=float, default=0.0, help="keep sending rounds this long (0: one round)"
    )
    drift.add_argument("--calm", action="store_true", help="undrifted traffic instead")
    drift.add_argument("--seed", type=int, default=1)
    drift.set_defaults(run=_demo_drift, log_level="warning", log_json=False)
    return parser


def _client_tls() -> None:
    """lockgate's own HTTPS calls (admin API, /metrics) trust LOCKGATE_TLS_CA and present
    LOCKGATE_TLS_CLIENT_CERT (+ _KEY) for mutual TLS, when set."""
    ca, cert, key = (
        os.environ.get(f"LOCKGATE_TLS_{n}") for n in ("CA", "CLIENT_CERT", "CLIENT_KEY")
    )
    if ca or cert:
        install_client_tls(client_context(ca, cert, key))


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
