"""Rebuild a retrained version from its lineage and compare it with the registered model, byte
for byte (`lockgate models reproduce NAME VERSION`).

The rebuild runs in a fresh process (`python -m lockgate.retrain.reproduce`, the request on
stdin): the recorded trainer, its parameters and seed on the training data snapshot the lineage
names, with the BLAS/OpenMP pool sizes the version was trained with. The child answers with the
sha256 of the ONNX bytes it produced and the environment and code it ran with; every difference
from the recorded ones is listed, so a mismatch says where to look (a numpy upgrade, a changed
trainer, uncommitted code).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.retrain.datastore import DataStore


@dataclass(frozen=True, slots=True)
class Reproduction:
    name: str
    version: str
    expected: str  # the registered model's sha256
    actual: str | None  # the rebuilt model's; None when the rebuild failed
    differences: list[str] = field(default_factory=list)  # environment and code, recorded vs now
    error: str | None = None

    @property
    def matched(self) -> bool:
        return self.actual == self.expected


def recipe(lineage: Mapping[str, Any], name: str, version: str) -> dict[str, Any]:
    """What the rebuild needs from the lineage; INVALID when the version does not have it (a
    hand-registered version, or one registered before lineage recorded it)."""
    snapshot = lineage.get("snapshot") or {}
    missing = [k for k in ("trainer", "params", "seed") if k not in lineage]
    if "train" not in snapshot:
        missing.append("snapshot.train")
    if missing:
        raise invalid(
            f"{name} v{version} cannot be reproduced: its lineage lacks {', '.join(missing)} "
            "(only versions the retrain worker registered record their data, seed and code)"
        )
    return {
        "trainer": lineage["trainer"],
        "params": lineage["params"],
        "seed": int(lineage["seed"]),
        "snapshot": snapshot["train"],
    }


def reproduce(home: Path, name: str, version: str, *, timeout: float = 900.0) -> Reproduction:
    """Retrain `name` `version` from its lineage in a subprocess and compare the bytes."""
    info = Registry(home).get(name, version)
    request = recipe(info.lineage, name, info.version)
    if not DataStore(home).path(request["snapshot"]).exists():
        raise not_found(
            f"{name} v{info.version}: its training data snapshot {request['snapshot']} is gone "
            f"from {DataStore(home).root}"
        )
    recorded = info.lineage.get("environment") or {}
    env = dict(os.environ)
    for variable, value in (recorded.get("threads") or {}).items():
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = str(value)
    with tempfile.TemporaryDirectory(prefix="lockgate-reproduce-") as tmp:
        request |= {"home": str(home), "out": str(Path(tmp) / "model.onnx")}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "lockgate.retrain.reproduce"],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"the rebuild of {name} v{info.version} took over {timeout} s",
            ) from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return Reproduction(name, info.version, info.sha256, None, [], why[:500])
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    differences = compare_environment(recorded, answer["environment"])
    differences += compare_code(info.lineage.get("code") or {}, answer["code"])
    return Reproduction(name, info.version, info.sha256, answer["sha256"], differences)


def compare_environment(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`what: recorded -> now` for every figure of the environment that differs."""
    out = []
    for key in ("python", "implementation", "platform", "machine"):
        if recorded.get(key) != now.get(key):
            out.append(f"{key}: {recorded.get(key)} recorded, {now.get(key)} now")
    for kind in ("packages", "threads"):
        before, after = recorded.get(kind) or {}, now.get(kind) or {}
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                out.append(f"{key}: {before.get(key)} recorded, {after.get(key)} now")
    return out


def compare_code(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """How the trainer's code differs from the recorded code (commit, dirty tree, file)."""
    out = []
    old_git, new_git = recorded.get("git") or {}, now.get("git") or {}
    if old_git.get("commit") != new_git.get("commit"):
        out.append(f"git commit: {old_git.get('commit')} recorded, {new_git.get('commit')} now")
    if new_git.get("dirty"):
        out.append("the trainer's git work tree has uncommitted changes now")
    if recorded.get("file_sha256") != now.get("file_sha256"):
        out.append(
            f"trainer source {now.get('file')}: sha256 {recorded.get('file_sha256')} recorded, "
            f"{now.get('file_sha256')} now"
        )
    return out


def _rebuild(request: Mapping[str, Any]) -> dict[str, Any]:
    """The child's work: train on the snapshot and write the model; returns its answer."""
    from lockgate.retrain.lineage import code_identity, environment
    from lockgate.retrain.train import run_trainer

    trainer = str(request["trainer"])
    x, y = DataStore(Path(request["home"])).get(str(request["snapshot"]))
    model = run_trainer(trainer, x, y, dict(request["params"]), int(request["seed"]))
    Path(request["out"]).write_bytes(model.onnx)
    return {
        "sha256": hashlib.sha256(model.onnx).hexdigest(),
        "environment": environment(trainer),
        "code": code_identity(trainer),
    }


def main() -> int:
    """Entry point of the rebuild process: the request on stdin, the answer as the last line
    of stdout."""
    try:
        answer = _rebuild(json.loads(sys.stdin.read()))
    except LockgateError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
