"""`lockgate models evaluate|reproduce`, and who the command-line user is for the audit log.

`evaluate` judges a version with the retrain worker's gates (schema, metric, slices, fairness,
latency) on a labelled file and records the verdict with the version; `reproduce` rebuilds a
retrained version from its lineage and compares the bytes. Both exit 0 on success (every gate
passed; the same sha256) and 1 otherwise.
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from lockgate.cli_flags import state_flag
from lockgate.cli_home import existing_home
from lockgate.errors import ErrorKind, LockgateError


def actor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor", help="who is acting, for the audit log (default: $USER, else the login name)"
    )


def actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    user = os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def add_governance_parsers(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`models evaluate` and `models reproduce` (added to the `models` subcommands)."""
    ev = msub.add_parser(
        "evaluate",
        help="judge a version with the gates on labelled data and record the result",
        description="Run the gates (schema, metric, slices, fairness, latency) on a version and "
        "record the verdict with it (gates.json, once per version; --dry-run records nothing). "
        "Data: .npz with arrays X [rows, features] and y [rows], or .csv with a header whose "
        "label column is y and whose other columns are the features in order. Exit 0 when "
        "every gate passes, 1 otherwise.",
    )
    common(ev)
    state_flag(ev)
    actor_flag(ev)
    ev.add_argument("name")
    ev.add_argument("version")
    ev.add_argument("--data", type=Path, required=True, help="labelled data (.npz or .csv)")
    ev.add_argument("--against", metavar="VERSION", help="the champion version to compare with")
    ev.add_argument("--pipeline", type=Path, help="take task and [gates] from this pipeline file")
    ev.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="default: the pipeline's; else classification when every label is 0 or 1",
    )
    ev.add_argument("--group-by", type=int, metavar="FEATURE", help="fairness groups' feature")
    ev.add_argument("--label-column", default="label", help="the CSV column holding y")
    ev.add_argument("--dry-run", action="store_true", help="report only; record nothing")
    ev.add_argument("--json", action="store_true", help="print the gate record as JSON")
    ev.set_defaults(run=_evaluate)
    rep = msub.add_parser(
        "reproduce",
        help="retrain a version from its lineage and compare the model's sha256",
        description="Retrain a version the retrain worker registered, in a fresh process, from "
        "its recorded data snapshot, trainer, parameters and seed. Exit 0 when the new model's "
        "sha256 equals the registered one, 1 otherwise (with the differences found).",
    )
    common(rep)
    rep.add_argument("name")
    rep.add_argument("version")
    rep.add_argument("--json", action="store_true", help="print JSON")
    rep.set_defaults(run=_reproduce)


def _gates_and_task(args: argparse.Namespace, y: np.ndarray[Any, Any]) -> tuple[Any, str]:
    import dataclasses

    from lockgate.retrain.pipeline import METRICS, GatesSpec, load_pipeline

    if args.pipeline is not None:
        spec = load_pipeline(args.pipeline)
        gates, task = spec.gates, args.task or spec.task
    else:
        task = args.task or ("classification" if np.isin(y, (0.0, 1.0)).all() else "regression")
        gates = GatesSpec(metric=METRICS[task])
    if gates.metric != METRICS[task]:
        gates = dataclasses.replace(gates, metric=METRICS[task])
    if args.group_by is not None:
        gates = dataclasses.replace(gates, group_by=args.group_by)
    return gates, task


def _evaluate(args: argparse.Namespace) -> int:
    from lockgate.control.registry import Registry
    from lockgate.control.state import StateStore
    from lockgate.retrain.dataset import content_hash
    from lockgate.retrain.datastore import load_labelled
    from lockgate.retrain.evaluate import evaluate
    from lockgate.retrain.lineage import gates_record

    home = existing_home(args.home)
    registry = Registry(home)
    info = registry.get(args.name, args.version)
    if not args.dry_run and registry.gates(info) is not None:
        raise LockgateError(
            ErrorKind.CONFLICT,
            f"{info.name} v{info.version} already has recorded gate results; "
            "use --dry-run to evaluate it again without recording",
        )
    x, y = load_labelled(args.data, args.label_column)
    gates, task = _gates_and_task(args, y)
    champion = None
    if args.against is not None:
        champion = registry.get(args.name, args.against).model_path.read_bytes()
    report = evaluate(info.model_path.read_bytes(), champion, x, y, gates, task)
    who = actor(args)
    data = {"file": str(args.data), "hash": content_hash(x, y), "rows": int(y.shape[0])}
    record = gates_record(report, against=args.against, data=data, actor=who)
    if args.json:
        print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(f"{info.name} v{info.version}", record))
    if not args.dry_run:
        registry.write_gates(info, record)
        after = {"passed": record["passed"], "against": args.against, "data": data}
        StateStore(home, args.state).record(
            "version.evaluate", f"{info.name}/{info.version}", after, actor=who
        )
        if not args.json:
            print(f"recorded in {info.path / 'gates.json'}")
    return 0 if report.passed else 1


def format_report(title: str, record: Mapping[str, Any]) -> str:
    """A gate record as text: one line per gate, then the fairness groups."""
    doc = record["report"]
    against = record.get("against")
    data = record.get("data") or {}
    lines = [
        f"{title}: {doc.get('task')} on {data.get('rows')} rows"
        + (f", against v{against}" if against else ", no champion to compare with")
    ]
    for g in doc.get("gates") or []:
        verdict = "pass" if g.get("passed") else "FAIL"
        lines.append(f"  {g.get('name'):<9} {verdict:<5} {g.get('detail')}")
    fairness = doc.get("fairness")
    if fairness:
        metric = doc.get("metric")
        lines.append(f"  groups of input[{fairness['feature']}] ({fairness['kind']}):")
        lines.append(
            f"    {'group':<28} {'rows':>6} {metric:>9} {'champion':>9} {'pos.rate':>9} "
            f"{'champion':>9}"
        )
        for g in fairness["groups"]:
            mark = "" if g["judged"] else "  (too few rows: not judged)"
            cells = [
                g["candidate"],
                g["champion"],
                g["candidate_positive_rate"],
                g["champion_positive_rate"],
            ]
            shown = " ".join(f"{_cell(c):>9}" for c in cells)
            lines.append(f"    {g['group']:<28} {g['rows']:>6} {shown}{mark}")
    failed = [g.get("name") for g in doc.get("gates") or [] if not g.get("passed")]
    lines.append(
        "verdict: all gates passed" if not failed else f"verdict: FAILED ({', '.join(failed)})"
    )
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _reproduce(args: argparse.Namespace) -> int:
    from lockgate.retrain.reproduce import reproduce

    result = reproduce(existing_home(args.home), args.name, args.version)
    if args.json:
        doc = {
            "name": result.name,
            "version": result.version,
            "matched": result.matched,
            "expected": result.expected,
            "actual": result.actual,
            "differences": result.differences,
            "error": result.error,
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0 if result.matched else 1
    title = f"{result.name} v{result.version}"
    if result.matched:
        print(f"{title} reproduced: sha256 {result.expected} matches the registered model")
    elif result.error is not None:
        print(f"{title} could not be rebuilt: {result.error}")
    else:
        print(f"{title} does not reproduce:")
        print(f"  registered sha256 {result.expected}")
        print(f"  rebuilt    sha256 {result.actual}")
    if result.differences:
        print("differences from the recorded build:")
        print("\n".join(f"  - {d}" for d in result.differences))
    elif not result.matched:
        print("the recorded environment and code are the same as now")
    return 0 if result.matched else 1
