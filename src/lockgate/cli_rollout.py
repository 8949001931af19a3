"""`lockgate rollout ...`: watch progressive rollouts and steer them, over the admin API.

Pause, resume, abort and promote are requests: the admin API records them with the operator's
token name and the rollout controller carries them out at its next check, so the answer says
what was requested and `status` shows when it took effect.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lockgate.cli_traffic import admin_command
from lockgate.control.client import AdminClient

ACTIONS = ("pause", "resume", "abort", "promote")


def describe(r: dict[str, Any]) -> list[str]:
    """A rollout in a few human lines."""
    steps = r["plan"]["steps"]
    where = f"step {r['step'] + 1}/{len(steps)} at {r['weight']:g}%" if r["step"] >= 0 else ""
    if r["status"] in ("promoted", "rolled_back", "aborted"):
        where = f"after step {r['step'] + 1}/{len(steps)}" if r["step"] >= 0 else "before traffic"
    champion = f" (champion v{r['champion']})" if r.get("champion") else ""
    head = f"{r['id']}  {r['endpoint']}  {r['model']} v{r['candidate']}{champion}  {r['status']}"
    lines = [f"{head}  {where}".rstrip()]
    if r.get("requested"):
        lines.append(f"  {r['requested']} requested by {r['requested_by']}")
    if r.get("reason"):
        lines.append(f"  reason: {r['reason']}")
    lines.append(f"  updated {r['updated']}  steps {', '.join(f'{s:g}%' for s in steps)}")
    return lines


def _history(r: dict[str, Any]) -> list[str]:
    lines = []
    for h in r["history"]:
        note = f"  {h.get('reason')}" if h.get("reason") else ""
        lines.append(f"  {h['at']}  {h['decision']:<20} {h['weight']:g}%{note}")
    return lines


def _status(client: AdminClient, args: argparse.Namespace) -> Any:
    query = f"?limit={args.limit}" + (f"&endpoint={args.endpoint}" if args.endpoint else "")
    doc = client.call("GET", "/v1/rollouts" + query)
    lines: list[str] = []
    for r in doc["rollouts"]:
        lines += describe(r)
    return doc, lines or ["no rollouts recorded"]


def _show(client: AdminClient, args: argparse.Namespace) -> Any:
    doc = client.call("GET", f"/v1/rollouts/{args.id}")
    lines = describe(doc) + _history(doc)
    for alias, target in sorted(doc.get("aliases", {}).items()):
        lines.append(f"  alias {alias} -> {target['model']} v{target['version']}")
    return doc, lines


def _action(name: str) -> Callable[[AdminClient, argparse.Namespace], Any]:
    def run(client: AdminClient, args: argparse.Namespace) -> Any:
        doc = client.call("POST", f"/v1/rollouts/{args.id}/{name}")
        r = doc["rollout"]
        if r["requested"]:
            line = f"{name} of rollout {r['id']} requested; the controller acts on its next check"
        else:
            line = f"rollout {r['id']}: pending pause withdrawn, it keeps running"
        return doc, [line]

    return run


def add_rollout_parser(sub: Any, flag: Callable[..., None]) -> None:
    """`lockgate rollout status|show|pause|resume|abort|promote`, like `lockgate traffic`."""
    rollout = sub.add_parser("rollout", help="progressive rollouts: status, pause, abort, ...")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)

    def command(name: str, help: str, run: Callable[..., Any]) -> argparse.ArgumentParser:
        return admin_command(rsub, flag, name, help, run)

    p = command("status", "rollouts, newest first (of one endpoint)", _status)
    p.add_argument("endpoint", nargs="?")
    p.add_argument("--limit", type=int, default=10)
    p = command("show", "one rollout with its history and the endpoint's aliases", _show)
    p.add_argument("id")
    helps = {
        "pause": "hold the canary at its current weight",
        "resume": "continue a paused rollout (or withdraw a pending pause)",
        "abort": "roll the canary back and end the rollout",
        "promote": "skip the remaining steps: the candidate takes all traffic",
    }
    for name in ACTIONS:
        p = command(name, helps[name], _action(name))
        p.add_argument("id")
