"""`lockgate models register|list|show|config|evaluate|reproduce`: the registry from the
command line. A registration is recorded in the state database's audit log (`version.register`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from lockgate.cli_flags import state_flag
from lockgate.cli_governance import actor, actor_flag, add_governance_parsers
from lockgate.cli_home import existing_home
from lockgate.errors import invalid
from lockgate.model_config import ModelConfig


def add_models_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `models` subcommands; `common` adds the flags every command has (--home, logging)."""
    models = sub.add_parser("models", help="the model registry")
    msub = models.add_subparsers(dest="models_command", required=True)
    reg = msub.add_parser("register", help="publish an ONNX file as a new immutable version")
    common(reg)
    reg.add_argument("file", type=Path, help="the .onnx file")
    reg.add_argument("--name", required=True, help="model name")
    reg.add_argument(
        "--reference",
        type=Path,
        help="reference data for drift profiles: a table (.npy, .csv) of the numeric inputs' "
        "values, or an .npz with one array per input (string inputs need it)",
    )
    reg.add_argument(
        "--categorical",
        type=_indices,
        default=[],
        metavar="I,J,...",
        help="input feature indices (reference columns; with wide or string inputs, monitored "
        "features) to monitor per category; integer "
        "columns with at most 20 values are found without it",
    )
    reg.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="free metadata"
    )
    reg.add_argument(
        "--warmup",
        type=Path,
        metavar="FILE.npz",
        help="warm-up inputs, one array per input name (the model must run on them); "
        "gateways warm the version on them instead of made-up data",
    )
    reg.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="the version's serving configuration (see `lockgate models config`)",
    )
    reg.add_argument("--json", action="store_true", help="print JSON")
    state_flag(reg)
    actor_flag(reg)
    reg.set_defaults(run=_register)
    lst = msub.add_parser("list", help="list models and versions")
    common(lst)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(run=_list)
    show = msub.add_parser("show", help="show one version (latest when omitted)")
    common(show)
    show.add_argument("name")
    show.add_argument("version", nargs="?")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_show)
    cfg = msub.add_parser(
        "config",
        help="show or change a version's serving configuration",
        description="Keys: " + ", ".join(f.name for f in fields(ModelConfig)) + ". Running "
        "gateways reload the version with the new configuration within a few seconds (the "
        "admin API's POST /v1/models/NAME/versions/VERSION/config does it at once, audited).",
    )
    common(cfg)
    cfg.add_argument("name")
    cfg.add_argument("version")
    cfg.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="change one key"
    )
    cfg.add_argument("--json", action="store_true", help="print JSON")
    cfg.set_defaults(run=_config)
    add_governance_parsers(msub, common)


def _indices(raw: str) -> list[int]:
    """``3,5`` -> [3, 5]: comma-separated non-negative integers (ASCII digits only)."""
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected indices like 3,5, got {raw!r}")
    return [int(p) for p in parts]


def _register(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry
    from lockgate.control.state import StateStore

    meta = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise invalid(f"--meta expects KEY=VALUE, got {item!r}")
        meta[key] = value
    info = Registry(Path(args.home)).register(
        args.file,
        args.name,
        metadata=meta,
        reference=args.reference,
        categorical=args.categorical,
        warmup=args.warmup,
        config=args.config,
    )
    after = {"sha256": info.sha256, "file": str(args.file), "metadata": meta}
    StateStore(Path(args.home), args.state).record(
        "version.register", f"{info.name}/{info.version}", after, actor=actor(args)
    )
    if args.json:
        print(orjson.dumps(info.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"registered {info.name} version {info.version} (sha256 {info.sha256[:12]}...)")
        for note in info.conversions:
            print(f"  converted: {note}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry

    home = existing_home(args.home)
    registry = Registry(home)
    rows = [(name, [v.version for v in registry.versions(name)]) for name in registry.models()]
    if args.json:
        print(orjson.dumps({name: versions for name, versions in rows}).decode())
        return 0
    if not rows:
        print(f"no models registered in {home}")
    for name, versions in rows:
        print(f"{name:24s} versions {', '.join(versions)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry

    registry = Registry(existing_home(args.home))
    info = registry.get(args.name, args.version) if args.version else registry.latest(args.name)
    doc = info.to_json()
    gates = registry.gates(info)
    doc["gates"] = gates
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{info.name} version {info.version}")
    print(f"  created  {info.created}")
    print(f"  sha256   {info.sha256}")
    for kind, tensors in (("input ", info.spec.inputs), ("output", info.spec.outputs)):
        for t in tensors:
            labels = f" labels {list(t.labels)}" if t.labels else ""
            print(f"  {kind}   {t.name} {t.datatype} {list(t.shape)}{labels}")
    for note in info.conversions:
        print(f"  converted {note}")
    print(f"  warm-up  {'warmup.npz' if info.warmup_path else 'reference or synthetic data'}")
    for key, value in (info.metadata or {}).items():
        print(f"  meta     {key} = {value}")
    for key, value in (info.lineage or {}).items():
        shown = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
        print(f"  lineage  {key} = {shown}")
    if gates is not None:
        verdict = "passed" if gates.get("passed") else "FAILED"
        against = f"against v{gates['against']}" if gates.get("against") else "no champion"
        print(
            f"  gates    {verdict} ({against}, by {gates.get('actor')}, {gates.get('evaluated')})"
        )
    if info.card_path is not None:
        print(f"  card     {info.card_path}")
    for key, value in info.config.to_json().items():
        print(f"  config   {key} = {value}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry

    registry = Registry(Path(args.home))
    info = registry.get(args.name, args.version)
    config = info.config
    for item in args.set:
        config = config.with_setting(item)
    if args.set and config != info.config:
        info = registry.set_config(info.name, info.version, config)
    if args.json:
        doc = {"model": info.name, "version": info.version, **info.config.to_json()}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{info.name} version {info.version} ({info.path / 'config.toml'})")
    print(info.config.to_toml(), end="")
    return 0
