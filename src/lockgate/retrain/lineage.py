"""Where a retrained version came from, stored with it in the registry: `lineage` in `meta.json`
(data hash, parent version, trainer, parameters, metrics, gate results, code version) and a
human-readable model card (`card.md`). Both are built from plain dicts so they can be written
as JSON and re-read without this package's classes.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.retrain.evaluate import EvaluationReport

LINEAGE_SCHEMA = 2  # 2: seed, code, environment and data snapshots (reproducible)
GATES_SCHEMA = 1


def jsonable(value: Any) -> Any:
    """Plain JSON types only (numpy scalars and arrays, tuples, non-finite floats -> None): the
    registry writes lineage with orjson, which refuses numpy values."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PACKAGES = ("numpy", "onnx", "onnxruntime", "lockgate")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def trainer_distribution(trainer: str) -> str | None:
    """The installed distribution that provides the trainer's top-level package (None: a
    module that no installed distribution owns, e.g. a file on the path)."""
    top = trainer.partition(":")[0].split(".")[0]
    owners = metadata.packages_distributions().get(top, [])
    return owners[0] if owners else None


def environment(trainer: str) -> dict[str, Any]:
    """What a model's bytes may depend on besides data, code and seed: the interpreter, the
    platform, the exact versions of the packages in the path from data to ONNX, and the sizes
    of the BLAS/OpenMP thread pools (a sum's order can depend on them)."""
    packages = {name: _version(name) for name in PACKAGES}
    owner = trainer_distribution(trainer)
    if owner is not None:
        packages[owner] = _version(owner)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
        "trainer_distribution": owner,
        "threads": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def code_identity(trainer: str) -> dict[str, Any]:
    """Which code trained the model: the trainer module's file and its sha256, and when that
    file is in a git work tree, the commit checked out and whether the tree had changes."""
    module_name = trainer.partition(":")[0]
    module = importlib.import_module(module_name)
    source = Path(inspect.getfile(module)).resolve()
    identity: dict[str, Any] = {
        "module": module_name,
        "file": str(source),
        "file_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "git": None,
    }
    commit = _git(source.parent, "rev-parse", "HEAD")
    if commit is not None and commit.strip():
        status = _git(source.parent, "status", "--porcelain", "--untracked-files=no")
        identity["git"] = {"commit": commit.strip(), "dirty": bool(status and status.strip())}
    return identity


def code_version(identity: Mapping[str, Any]) -> str:
    """One string for the code: `git:<commit>` (`+dirty` with uncommitted changes), else
    `sha256:<hash of the trainer's file>`."""
    git = identity.get("git")
    if git:
        return f"git:{git['commit']}" + ("+dirty" if git.get("dirty") else "")
    return f"sha256:{identity['file_sha256']}"


def lineage_record(
    dataset_manifest: Mapping[str, Any],
    parent: str | None,
    trainer: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    gates: Mapping[str, Any],
    *,
    seed: int,
    code: Mapping[str, Any],
    environment: Mapping[str, Any],
    snapshot: Mapping[str, str],
) -> dict[str, Any]:
    """The registry's `lineage` for a retrained version (JSON-ready): enough to rebuild it
    (`lockgate models reproduce`): the data snapshots' hashes (`snapshot`: train, holdout),
    the trainer, its parameters and seed, the code and the environment."""
    record: dict[str, Any] = jsonable(
        {
            "schema": LINEAGE_SCHEMA,
            "data_hash": dataset_manifest.get("hash"),
            "data": dict(dataset_manifest),
            "snapshot": dict(snapshot),
            "parent": parent,
            "trainer": trainer,
            "params": dict(params),
            "seed": seed,
            "metrics": dict(metrics),
            "gates": dict(gates),
            "code_version": code_version(code),
            "code": dict(code),
            "environment": dict(environment),
        }
    )
    return record


def gates_record(
    report: EvaluationReport | Mapping[str, Any],
    *,
    against: str | None,
    data: Mapping[str, Any],
    actor: str,
) -> dict[str, Any]:
    """What the registry keeps as a version's gate results (`gates.json`): the verdict, whom
    and what it was judged against (champion version, data hash and rows), by whom, and the
    whole report."""
    doc = report.to_dict() if isinstance(report, EvaluationReport) else jsonable(report)
    record: dict[str, Any] = jsonable(
        {
            "schema": GATES_SCHEMA,
            "passed": bool(doc.get("passed")),
            "evaluated": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "against": against,
            "data": dict(data),
            "report": doc,
        }
    )
    return record


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def model_card(
    name: str,
    version: str,
    task: str,
    manifest: Mapping[str, Any],
    report: EvaluationReport | Mapping[str, Any],
    intended_use: str,
    limitations: list[str],
    *,
    parent: str | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> str:
    """A markdown model card: intended use, data, metrics against the champion (`parent`, the
    champion version it was compared with), slices, fairness, gates, how to rebuild it (from
    `lineage`, when given) and limitations."""
    doc = report.to_dict() if isinstance(report, EvaluationReport) else jsonable(report)
    metric = doc.get("metric", "metric")
    candidate = doc.get("candidate") or {}
    champion = doc.get("champion") or {}
    lo, hi = [*(manifest.get("time_range") or []), None, None][:2]
    lines = [f"# {name} v{version}", "", f"Task: {task}."]
    if parent is not None:
        lines.append(f"Retrained from champion v{parent}.")
    lines += ["", "## Intended use", "", intended_use]
    lines += ["", "## Data", ""]
    lines += [
        f"- rows: {manifest.get('rows')} (holdout: {doc.get('rows', '—')})",
        f"- time range: {_fmt(lo, 3)} .. {_fmt(hi, 3)} (unix seconds)",
        f"- content hash (sha256): `{manifest.get('hash')}`",
    ]
    if "versions" in manifest:
        versions = ", ".join(str(v) for v in manifest["versions"])
        lines.append(f"- logged by {manifest.get('model', name)} versions: {versions}")
    if "features" in manifest:
        lines.append(f"- input features: {manifest['features']}")
    lines += ["", "## Metrics (holdout)", ""]
    rows = [[key, candidate.get(key), champion.get(key)] for key in (metric, "p99_latency_ms")]
    champion_column = f"champion v{parent}" if parent is not None else "champion"
    lines += _table(["metric", f"v{version}", champion_column], rows)
    slices = doc.get("slices") or []
    if slices:
        lines += ["", f"## Slices (groups of input[{slices[0].get('feature')}])", ""]
        header = ["bin", "range", "rows", "candidate", "champion", "worse by"]
        body = [
            [
                s.get("bin"),
                f"{_fmt(s.get('lo'), 4)} .. {_fmt(s.get('hi'), 4)}",
                s.get("rows"),
                s.get("candidate"),
                s.get("champion"),
                s.get("gap"),
            ]
            for s in slices
        ]
        lines += _table(header, body)
    lines += ["", "## Gates", ""]
    gates = doc.get("gates") or []
    body = [
        [g.get("name"), "pass" if g.get("passed") else "FAIL", g.get("value"), g.get("threshold")]
        for g in gates
    ]
    lines += _table(["gate", "result", "value", "threshold"], body)
    lines += [""] + [f"- {g.get('name')}: {g.get('detail')}" for g in gates]
    verdict = "passed" if doc.get("passed", all(g.get("passed") for g in gates)) else "failed"
    lines += ["", f"All gates {verdict}."]
    lines += _fairness_lines(doc.get("fairness"), metric)
    if lineage is not None:
        lines += _reproduce_lines(name, version, lineage)
    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in limitations] or ["- none stated"]
    return "\n".join(lines) + "\n"


def _fairness_lines(fairness: Mapping[str, Any] | None, metric: str) -> list[str]:
    """The fairness gate's groups: per group the metric and the positive rate of both models."""
    if not fairness:
        return []
    kind = "exact values" if fairness.get("kind") == "values" else "quantile bins"
    lines = ["", f"## Fairness (groups of input[{fairness.get('feature')}], {kind})", ""]
    header = ["group", "rows", "judged", f"{metric} v.", f"{metric} champion"]
    header += ["positive rate", "positive rate champion"]
    body = [
        [
            g.get("group"),
            g.get("rows"),
            g.get("judged"),
            g.get("candidate"),
            g.get("champion"),
            g.get("candidate_positive_rate"),
            g.get("champion_positive_rate"),
        ]
        for g in fairness.get("groups") or []
    ]
    lines += _table(header, body)
    mine = fairness.get("candidate_gaps") or {}
    theirs = fairness.get("champion_gaps") or {}
    lines += [
        "",
        f"- between-group gap of {metric}: {_fmt(mine.get('metric'))} "
        f"(champion {_fmt(theirs.get('metric'))})",
        f"- between-group gap of the positive rate: {_fmt(mine.get('positive_rate'))} "
        f"(champion {_fmt(theirs.get('positive_rate'))})",
        f"- groups with fewer than {fairness.get('min_group_rows')} holdout rows are reported, "
        "not judged",
    ]
    return lines


def _reproduce_lines(name: str, version: str, lineage: Mapping[str, Any]) -> list[str]:
    env = lineage.get("environment") or {}
    packages = env.get("packages") or {}
    snapshot = lineage.get("snapshot") or {}
    lines = ["", "## Reproducibility", ""]
    lines += [
        f"- trainer: `{lineage.get('trainer')}`, seed {lineage.get('seed')}, "
        f"params `{lineage.get('params')}`",
        f"- code: `{lineage.get('code_version')}`",
        f"- Python {env.get('python')} on {env.get('platform')}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())),
        f"- training data snapshot: `{snapshot.get('train')}`; holdout: "
        f"`{snapshot.get('holdout')}`",
        f"- rebuild and compare: `lockgate models reproduce {name} {version}`",
    ]
    return lines
