"""The flags every command shares, and flag types: each flag's default comes from its
LOCKGATE_* environment variable when set."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any


def flag(parser: argparse.ArgumentParser, name: str, default: Any, help: str, **kw: Any) -> None:
    """A flag whose default comes from LOCKGATE_<FLAG> when set."""
    env = "LOCKGATE_" + name.lstrip("-").replace("-", "_").upper()
    if kw.get("action") in ("store_true", argparse.BooleanOptionalAction):
        env_value = os.environ.get(env)
        default = env_value.lower() in ("1", "true", "yes", "on") if env_value else default
        parser.add_argument(name, default=default, help=f"{help} [env {env}]", **kw)
        return
    parser.add_argument(
        name,
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


def percent(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"expected a percent from 0 to 100, got {value!r}")
    return number


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def state_flag(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--state",
        None,
        "state database: postgresql://user@host/db shared by replicas "
        "(default: SQLite state.db in --home)",
    )


def common(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--home",
        "lockgate-home",
        "state directory: registry, state database, prediction log; a relative path is taken "
        "from the working directory, and a home that does not exist is an error",
        type=Path,
    )
    flag(parser, "--log-level", "info", "debug, info, warning or error")
    flag(parser, "--log-json", False, "log JSON lines instead of text", action="store_true")
