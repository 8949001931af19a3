"""Where a retrained version came from, stored with it in the registry: `lineage` in `meta.json`
(data hash, parent version, trainer, parameters, metrics, gate results, code version) and a
human-readable model card (`card.md`). Both are built from plain dicts so they can be written
as JSON and re-read without this package's classes.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.retrain.evaluate import EvaluationReport

LINEAGE_SCHEMA = 1


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


def code_version() -> str:
    """lockgate's package version, plus the git commit when running from a checkout."""
    from lockgate import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


def lineage_record(
    dataset_manifest: Mapping[str, Any],
    parent: str | None,
    trainer: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    gates: Mapping[str, Any],
    code_version: str,
) -> dict[str, Any]:
    """The registry's `lineage` for a retrained version (JSON-ready)."""
    record: dict[str, Any] = jsonable(
        {
            "schema": LINEAGE_SCHEMA,
            "data_hash": dataset_manifest.get("hash"),
            "data": dict(dataset_manifest),
            "parent": parent,
            "trainer": trainer,
            "params": dict(params),
            "metrics": dict(metrics),
            "gates": dict(gates),
            "code_version": code_version,
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
) -> str:
    """A markdown model card: intended use, data, metrics against the champion (`parent`, the
    champion version it was compared with), slices, gates and limitations."""
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
        lines += ["", f"## Slices (quantile bins of input[{slices[0].get('feature')}])", ""]
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
    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in limitations] or ["- none stated"]
    return "\n".join(lines) + "\n"
