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
from lockgate.control.rollouts import CHAMPION, FINAL, Rollout
from lockgate.specs import VersionKey

ACTIONS = ("pause", "resume", "abort", "promote")


def _aliases(doc: dict[str, Any]) -> dict[str, VersionKey]:
    return {a: VersionKey(t["model"], t["version"]) for a, t in doc.get("aliases", {}).items()}


def describe(r: Rollout, aliases: dict[str, VersionKey]) -> list[str]:
    """A rollout in a few human lines. The champion shown is the endpoint's champion now (from
    its aliases); the one the rollout started against follows when they differ."""
    steps = r.plan.steps
    where = f"step {r.step + 1}/{len(steps)} at {r.weight:g}%" if r.step >= 0 else ""
    if r.status in FINAL:
        where = f"after step {r.step + 1}/{len(steps)}" if r.step >= 0 else "before traffic"
    now = aliases.get(CHAMPION)
    champion = ""
    if now is not None:
        named = f"v{now.version}" if now.model == r.model else f"{now.model} v{now.version}"
        was = f", was v{r.champion}" if r.champion and now != (r.model, r.champion) else ""
        champion = f" (champion {named}{was})"
    elif r.champion:
        champion = f" (champion v{r.champion})"
    head = f"{r.id}  {r.endpoint}  {r.model} v{r.candidate}{champion}  {r.status}"
    lines = [f"{head}  {where}".rstrip()]
    if r.requested:
        lines.append(f"  {r.requested} requested by {r.requested_by}")
    if r.reason:
        lines.append(f"  reason: {r.reason}")
    lines.append(f"  updated {r.updated}  steps {', '.join(f'{s:g}%' for s in steps)}")
    return lines


def _history(r: Rollout) -> list[str]:
    lines = []
    for h in r.history:
        note = f"  {h.get('reason')}" if h.get("reason") else ""
        lines.append(f"  {h['at']}  {h['decision']:<20} {h['weight']:g}%{note}")
    return lines


def _status(client: AdminClient, args: argparse.Namespace) -> Any:
    query = f"?limit={args.limit}" + (f"&endpoint={args.endpoint}" if args.endpoint else "")
    doc = client.call("GET", "/v1/rollouts" + query)
    lines: list[str] = []
    for r in doc["rollouts"]:
        lines += describe(Rollout.from_json(r), _aliases(r))
    return doc, lines or ["no rollouts recorded"]


def _show(client: AdminClient, args: argparse.Namespace) -> Any:
    doc = client.call("GET", f"/v1/rollouts/{args.id}")
    rollout, aliases = Rollout.from_json(doc), _aliases(doc)
    lines = describe(rollout, aliases) + _history(rollout)
    for alias, target in sorted(aliases.items()):
        lines.append(f"  alias {alias} -> {target.model} v{target.version}")
    return doc, lines


def _action(name: str) -> Callable[[AdminClient, argparse.Namespace], Any]:
    def run(client: AdminClient, args: argparse.Namespace) -> Any:
        doc = client.call("POST", f"/v1/rollouts/{args.id}/{name}")
        r = Rollout.from_json(doc["rollout"])
        if r.requested:
            line = f"{name} of rollout {r.id} requested; the controller acts on its next check"
        else:
            line = f"rollout {r.id}: pending pause withdrawn, it keeps running"
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
