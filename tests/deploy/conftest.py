"""Shared helpers for the deploy/ tests: where the files are, the Prometheus tools they need,
the PromQL expressions of the alert rules and the dashboard, and the metric names in them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "lockgate-dashboard.json"
INSTALL_HINT = (
    "install Debian's prometheus package (`apt-get install -y prometheus`, as .ci/run does): "
    "the deploy tests run prometheus and promtool"
)
# Series that Prometheus itself provides (allowed in rules and panels, never exported): `up` for
# every target, `ALERTS` for the alert rules' state.
PROMETHEUS_SERIES = {"up", "ALERTS"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LOCKGATE = re.compile(r"(?<![A-Za-z0-9_:])lockgate_[a-z0-9_]+")
_SELECTED = re.compile(r"(?<![A-Za-z0-9_:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")
_BLOCK_SCALAR = {"|", "|-", "|+", ">", ">-", ">+"}


def tool(name: str) -> str:
    """The path of a Prometheus tool, or a failed test saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def metric_names(expr: str) -> set[str]:
    """lockgate metric names in a PromQL expression (string literals are ignored)."""
    return set(_LOCKGATE.findall(_STRING.sub('""', expr)))


def selected_names(expr: str) -> set[str]:
    """Every identifier directly followed by a selector `{` or a range `[`: the metric names
    written with a selector, whatever their prefix (``by (...)`` lists are never followed by
    either)."""
    return set(_SELECTED.findall(_STRING.sub('""', expr)))


def alert_rules(path: Path = PROMETHEUS_DIR / "alerts.yml") -> dict[str, str]:
    """Alert name -> expression, read from the rules file.

    No YAML parser is a dependency, so this reads the subset the file uses: ``- alert: NAME``
    followed by ``expr:`` with a one-line value or a block scalar (``|``, ``>-``, ...). The
    Prometheus test checks the result against Prometheus's own parse of the file.
    """
    rules: dict[str, str] = {}
    lines = path.read_text().splitlines()
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"\s*- alert:\s*(\S+)\s*$", line):
            name = m.group(1)
        elif m := re.match(r"(\s*)expr:\s*(.*?)\s*$", line):
            assert name is not None and name not in rules, f"expr without its own alert: {line}"
            indent, value = len(m.group(1)), m.group(2)
            if value in _BLOCK_SCALAR:
                block = []
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip()
                    or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    block.append(lines[i].strip())
                value = "\n".join(block).strip()
            elif value[:1] in "'\"":
                value = value[1:-1]
            rules[name] = value
        i += 1
    return rules


def _collect_exprs(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append(value)
            else:
                _collect_exprs(value, out)
    elif isinstance(node, list):
        for item in node:
            _collect_exprs(item, out)


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> list[str]:
    """Every `expr` in the dashboard (recursively), plus its variables' PromQL queries."""
    doc = dashboard()
    out: list[str] = []
    _collect_exprs(doc["panels"], out)
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def infer(
    client: httpx.Client, endpoint: str, rows: np.ndarray, request_id: str, key: str | None = None
) -> dict[str, Any]:
    """One successful inference request with FP32 rows (JSON tensors), routed by `key` when
    given; returns the answer."""
    doc = {
        "id": request_id,
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.astype(np.float32).ravel().tolist(),
            }
        ],
    }
    headers = {"x-lockgate-key": key} if key is not None else None
    r = client.post(f"/v2/models/{endpoint}/infer", json=doc, headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer.get("id") == request_id, answer
    return answer
