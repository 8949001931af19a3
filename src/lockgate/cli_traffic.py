"""`lockgate traffic ...`: the operator's commands, spoken to the admin API over HTTP.

Each write sends the state revision it is based on (`--revision`, else the one just read) as
`If-Match`, so two operators editing at once get a clear conflict instead of a lost update.
Changes that move traffic take `--force --reason TEXT`: an admin's audited override of the gate
policy (docs/governance.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from lockgate.control.client import DEFAULT_ADMIN, AdminClient, EndpointView
from lockgate.errors import invalid
from lockgate.specs import EndpointSpec, ShadowSpec, VariantSpec


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise invalid(f"expected {what}, got {item!r}")
        out[key] = value
    return out


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise invalid(f"{what} must be a number, got {text!r}") from None


def _describe_endpoint(doc: dict[str, Any]) -> list[str]:
    endpoint = EndpointView.from_doc(doc)
    kind = " (implicit: newest version the gate policy allows)" if endpoint.implicit else ""
    lines = [f"{endpoint.name}{kind}"]
    for v in endpoint.spec.variants:
        lines.append(f"  {v.weight:6.2f}%  {v.name:<14} {v.model} v{v.version}")
    for s in endpoint.spec.shadows:
        lines.append(f"  shadow   {s.name:<14} {s.model} v{s.version}")
    return lines


def _show(client: AdminClient, args: argparse.Namespace) -> Any:
    if args.endpoint:
        doc = client.call("GET", f"/v1/endpoints/{args.endpoint}")
        return doc, _describe_endpoint(doc)
    doc = client.call("GET", "/v1/state")
    lines = [f"state revision {doc['revision']}"]
    for endpoint in doc["endpoints"]:
        lines += _describe_endpoint(endpoint)
    for p in doc["pins"]:
        lines.append(f"pinned {p['model']} v{p['version']}")
    for f in doc["serving"]["failed"]:
        lines.append(f"FAILED {f['model']} v{f['version']}: {f['reason']}")
    return doc, lines


def _history(client: AdminClient, args: argparse.Namespace) -> Any:
    query = f"?limit={args.limit}" + (f"&target={args.endpoint}" if args.endpoint else "")
    doc = client.call("GET", "/v1/audit" + query)
    lines = [
        f"{r['at']}  rev {r['revision']:<5} {r['actor']:<12} {r['action']:<16} {r['target']}"
        + (f"  FORCED: {r['forced']['reason']}" if r.get("forced") else "")
        for r in doc["records"]
    ]
    return doc, lines or ["no changes recorded"]


def _write(path: str, method: str = "POST") -> Callable[..., Any]:
    """A command that sends one change; `body(args)` builds the JSON body."""

    def run(client: AdminClient, args: argparse.Namespace, body: Any = None) -> Any:
        revision = args.revision if args.revision is not None else client.revision()
        if getattr(args, "force", False):
            if not args.reason:
                raise invalid("--force needs --reason TEXT (it is recorded in the audit log)")
            body = {**(body or {}), "force": True, "reason": args.reason}
        doc = client.call(method, path.format(**vars(args)), body, revision)
        lines = [f"{doc['action']} {doc['target']}: now at state revision {doc['revision']}"]
        if doc.get("forced"):
            lines.append(f"forced past the gate policy: {doc['forced']['reason']}")
        return doc, lines

    return run


def _create(client: AdminClient, args: argparse.Namespace) -> Any:
    """The endpoint is built (and checked) here; the admin API checks the versions exist."""
    variants = []
    for name, value in _pairs(args.variants, "VARIANT=MODEL:VERSION:WEIGHT").items():
        parts = value.split(":")
        if len(parts) != 3:
            raise invalid(f"expected VARIANT=MODEL:VERSION:WEIGHT, got {name}={value}")
        variants.append(VariantSpec(name, parts[0], parts[1], _number(parts[2], "weight")))
    shadows = []
    for name, value in _pairs(args.shadow, "VARIANT=MODEL:VERSION").items():
        model, _, version = value.partition(":")
        shadows.append(ShadowSpec(name, model, version))
    body = EndpointSpec(tuple(variants), tuple(shadows)).to_doc()
    return _write("/v1/endpoints/{endpoint}", "PUT")(client, args, body)


def _set(client: AdminClient, args: argparse.Namespace) -> Any:
    weights = {k: _number(v, "weight") for k, v in _pairs(args.weights, "VARIANT=WEIGHT").items()}
    return _write("/v1/endpoints/{endpoint}/weights")(client, args, {"weights": weights})


def _switch(client: AdminClient, args: argparse.Namespace) -> Any:
    return _write("/v1/endpoints/{endpoint}/switch")(client, args, {"variant": args.variant})


def _canary(client: AdminClient, args: argparse.Namespace) -> Any:
    if args.promote or args.rollback:
        action = "promote" if args.promote else "rollback"
        return _write(f"/v1/endpoints/{{endpoint}}/canary/{action}")(client, args)
    if args.weight is None:
        raise invalid(
            "a canary needs --weight (and --version to start one), or --promote / --rollback"
        )
    body = {"model": args.model, "version": args.version, "weight": args.weight}
    return _write("/v1/endpoints/{endpoint}/canary")(client, args, body)


def _shadow(client: AdminClient, args: argparse.Namespace) -> Any:
    if args.action == "remove":
        return _write("/v1/endpoints/{endpoint}/shadows/{variant}", "DELETE")(client, args)
    if args.version is None:
        raise invalid("adding a shadow needs --version")
    body = {"variant": args.variant, "model": args.model, "version": args.version}
    return _write("/v1/endpoints/{endpoint}/shadows")(client, args, body)


def add_traffic_parser(sub: Any, flag: Callable[..., None]) -> None:
    traffic = sub.add_parser("traffic", help="traffic splits, switches, canaries, shadows")
    tsub = traffic.add_subparsers(dest="traffic_command", required=True)

    def command(
        name: str, help: str, run: Callable[..., Any], *, forcible: bool = False
    ) -> argparse.ArgumentParser:
        p = admin_command(tsub, flag, name, help, run)
        p.add_argument("--revision", type=int, help="state revision the change is based on")
        if forcible:
            p.add_argument(
                "--force",
                action="store_true",
                help="admin only: go past the gate policy (--ungated-max-percent), audited",
            )
            p.add_argument("--reason", help="why the change is forced (required with --force)")
        return p

    p = command("show", "show endpoints (or one), pins and load failures", _show)
    p.add_argument("endpoint", nargs="?")
    p = command("history", "the audit log, newest first", _history)
    p.add_argument("endpoint", nargs="?")
    p.add_argument("--limit", type=int, default=20)
    p = command("create", "create or replace an endpoint", _create, forcible=True)
    p.add_argument("endpoint")
    p.add_argument("variants", nargs="+", metavar="VARIANT=MODEL:VERSION:WEIGHT")
    p.add_argument("--shadow", action="append", default=[], metavar="VARIANT=MODEL:VERSION")
    p = command("delete", "delete a stored endpoint", _write("/v1/endpoints/{endpoint}", "DELETE"))
    p.add_argument("endpoint")
    p = command("set", "set variant weights (percent, summing to 100)", _set, forcible=True)
    p.add_argument("endpoint")
    p.add_argument("weights", nargs="+", metavar="VARIANT=WEIGHT")
    p = command("switch", "blue-green: all traffic to one variant", _switch, forcible=True)
    p.add_argument("endpoint")
    p.add_argument("variant")
    p = command("canary", "start, ramp, promote or roll back the canary", _canary, forcible=True)
    p.add_argument("endpoint")
    p.add_argument("--model", help="default: the endpoint's model")
    p.add_argument("--version", help="the canary's version; omit it to ramp the current canary")
    p.add_argument("--weight", type=float, help="percent of traffic for the canary")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--promote", action="store_true")
    group.add_argument("--rollback", action="store_true")
    p = command("shadow", "add or remove a shadow variant", _shadow)
    p.add_argument("endpoint")
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("variant")
    p.add_argument("--model", help="default: the endpoint's model")
    p.add_argument("--version")
    for action in ("load", "unload"):
        path = f"/v1/models/{{model}}/versions/{{version}}/{action}"
        help = "pin a version: keep it loaded and warm" if action == "load" else "unpin a version"
        p = command(action, help, _write(path))
        p.add_argument("model")
        p.add_argument("version")


def admin_command(
    subparsers: Any, flag: Callable[..., None], name: str, help: str, run: Callable[..., Any]
) -> argparse.ArgumentParser:
    """A subcommand that calls the admin API: `run(client, args) -> (json, lines)`."""
    p: argparse.ArgumentParser = subparsers.add_parser(name, help=help)
    flag(p, "--admin-url", DEFAULT_ADMIN, "admin API address")
    flag(p, "--admin-token", None, "bearer token for the admin API")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.set_defaults(run=lambda args: _run(run, args), log_level="warning", log_json=False)
    return p


def _run(run: Callable[..., Any], args: argparse.Namespace) -> int:
    doc, lines = run(AdminClient(args.admin_url, args.admin_token), args)
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(lines))
    sys.stdout.flush()
    return 0
