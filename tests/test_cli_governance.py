"""`lockgate models register` is audited; `lockgate models evaluate` runs the gates on a labelled
file, prints a readable report, exits 0 only when every gate passes, and records the verdict
with the version (once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from lockgate.cli import main
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.retrain.dataset import content_hash
from lockgate.retrain.train import LinearModel, logistic_onnx
from tests import onnx_models
from tests.retrain.test_fairness import GROUP, TRUTH, flipped_in_group, holdout


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOCKGATE_STATE", "LOCKGATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "alice")


def test_register_is_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    home = tmp_path / "home"
    assert main(["models", "register", str(model), "--name", "scale", "--home", str(home)]) == 0
    args = ["models", "register", str(model), "--name", "scale", "--home", str(home)]
    assert main([*args, "--actor", "ci-pipeline", "--meta", "owner=ml"]) == 0
    capsys.readouterr()
    records = StateStore(home).audit()
    assert [(r["action"], r["target"], r["actor"]) for r in records] == [
        ("version.register", "scale/2", "ci-pipeline"),
        ("version.register", "scale/1", "alice"),
    ]
    sha = Registry(home).get("scale", "2").sha256
    assert records[0]["after"] == {"sha256": sha, "file": str(model), "metadata": {"owner": "ml"}}
    assert records[0]["revision"] == records[1]["revision"] == 0  # no served state changed


@pytest.fixture
def governed(tmp_path: Path) -> dict[str, Path]:
    """v1 a weaker champion, v2 better and fair, v3 better overall but worse for group 1;
    the holdout as .npz and .csv; a pipeline file with the fairness gate on input[4]."""
    home = tmp_path / "home"
    registry = Registry(home)
    registry.register(logistic_onnx(LinearModel(TRUTH * np.array([0.5, 1, 1, 1, 1]), 0.0)), "m")
    registry.register(logistic_onnx(LinearModel(TRUTH, 0.0)), "m")
    registry.register(flipped_in_group(TRUTH, 3, 1.1), "m")
    x, y = holdout()
    np.savez(tmp_path / "holdout.npz", X=x, y=y)
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    table = np.column_stack([x.astype(np.float64), y])
    csv = tmp_path / "holdout.csv"
    np.savetxt(csv, table, delimiter=",", header=header, comments="", fmt="%.17g")
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('endpoint = "m"\n[gates]\np99_latency_ms = 60000.0\n')  # no latency test
    return {"home": home, "npz": tmp_path / "holdout.npz", "csv": tmp_path / "holdout.csv",
            "pipeline": pipeline}  # fmt: skip


def evaluate(governed: dict[str, Path], version: str, data: str, *extra: str) -> int:
    args = ["models", "evaluate", "m", version, "--data", str(governed[data])]
    args += ["--against", "1", "--group-by", str(GROUP), "--pipeline", str(governed["pipeline"])]
    return main([*args, "--home", str(governed["home"]), *extra])


def test_a_fair_better_version_passes_and_is_recorded(
    governed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate(governed, "2", "npz") == 0
    out = capsys.readouterr().out
    assert "m v2: classification on 4000 rows, against v1" in out
    for gate in ("schema", "metric", "fairness", "latency"):
        assert f"  {gate:<9} pass " in out
    assert "input[4] = 1" in out and "verdict: all gates passed" in out
    registry = Registry(governed["home"])
    record = registry.gates(registry.get("m", "2"))
    assert record is not None and record["passed"] and record["against"] == "1"
    x, y = holdout()
    assert record["actor"] == "alice" and record["data"]["hash"] == content_hash(x, y)
    audit = StateStore(governed["home"]).audit(target="m/2")
    assert audit[0]["action"] == "version.evaluate" and audit[0]["after"]["passed"] is True
    # recorded once: a second evaluation is refused, a dry run only reports
    assert evaluate(governed, "2", "npz") == 1
    assert "already has recorded gate results" in capsys.readouterr().err
    assert evaluate(governed, "2", "csv", "--dry-run", "--json") == 0
    again = orjson.loads(capsys.readouterr().out)
    for side in ("candidate", "champion"):  # the CSV holds the same data
        assert again["report"][side]["accuracy"] == record["report"][side]["accuracy"]
    assert again["data"]["hash"] == record["data"]["hash"]
    assert again["report"]["fairness"] == record["report"]["fairness"]
    assert registry.gates(registry.get("m", "2")) == record


def test_better_overall_but_unfair_fails_with_exit_1(
    governed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate(governed, "3", "csv") == 1
    out = capsys.readouterr().out
    assert "  metric    pass " in out and "  fairness  FAIL " in out
    assert "verdict: FAILED (fairness)" in out
    registry = Registry(governed["home"])
    record = registry.gates(registry.get("m", "3"))
    assert record is not None and record["passed"] is False
    assert main(["models", "show", "m", "3", "--home", str(governed["home"])]) == 0
    assert "gates    FAILED (against v1, by alice, " in capsys.readouterr().out
    shown = ["models", "show", "m", "3", "--home", str(governed["home"]), "--json"]
    assert main(shown) == 0
    assert orjson.loads(capsys.readouterr().out)["gates"] == record


def test_evaluate_errors_are_clear(
    governed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    home = ["--home", str(governed["home"])]
    assert main(["models", "evaluate", "m", "2", "--data", str(bad), *home]) == 1
    assert "no column 'label'" in capsys.readouterr().err
    data = ["--data", str(governed["npz"])]
    assert main(["models", "evaluate", "m", "2", *data, "--against", "9", *home]) == 1
    assert "unknown version '9'" in capsys.readouterr().err
    registry = Registry(governed["home"])
    assert registry.gates(registry.get("m", "2")) is None  # nothing recorded by a failure
