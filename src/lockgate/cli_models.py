"""`lockgate models register|list|show`: the registry from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from lockgate.cli_home import existing_home
from lockgate.errors import invalid


def add_models_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `models` subcommands; `common` adds the flags every command has (--home, logging)."""
    models = sub.add_parser("models", help="the model registry")
    msub = models.add_subparsers(dest="models_command", required=True)
    reg = msub.add_parser("register", help="publish an ONNX file as a new immutable version")
    common(reg)
    reg.add_argument("file", type=Path, help="the .onnx file")
    reg.add_argument("--name", required=True, help="model name")
    reg.add_argument(
        "--reference", type=Path, help="reference data (.npy or .csv) for drift profiles"
    )
    reg.add_argument(
        "--categorical",
        type=_indices,
        default=[],
        metavar="I,J,...",
        help="input feature indices (reference columns) to monitor per category; integer "
        "columns with at most 20 values are found without it",
    )
    reg.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="free metadata"
    )
    reg.add_argument("--json", action="store_true", help="print JSON")
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


def _indices(raw: str) -> list[int]:
    """``3,5`` -> [3, 5]: comma-separated non-negative integers (ASCII digits only)."""
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected indices like 3,5, got {raw!r}")
    return [int(p) for p in parts]


def _register(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry

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
    )
    if args.json:
        print(orjson.dumps(info.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"registered {info.name} version {info.version} (sha256 {info.sha256[:12]}...)")
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
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{info.name} version {info.version}")
    print(f"  created  {info.created}")
    print(f"  sha256   {info.sha256}")
    for kind, tensors in (("input ", info.spec.inputs), ("output", info.spec.outputs)):
        for t in tensors:
            print(f"  {kind}   {t.name} {t.datatype} {list(t.shape)}")
    for key, value in (info.metadata or {}).items():
        print(f"  meta     {key} = {value}")
    for key, value in (info.lineage or {}).items():
        shown = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
        print(f"  lineage  {key} = {shown}")
    if info.card_path is not None:
        print(f"  card     {info.card_path}")
    return 0
