"""The command line: flags, their LOCKGATE_* environment variables, and the models commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from lockgate.cli import build_parser, main, serve_config
from tests import onnx_models


def test_every_serve_flag_has_an_env_var_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--home",
        "--http",
        "--grpc",
        "--admin",
        "--demo",
        "--max-batch-rows",
        "--timeout",
        "--log-level",
        "--log-json",
        "--grace",
        "--intra-op-threads",
        "--no-monitor",
        "--no-predlog",
        "--ring-rows",
        "--drift-window-rows",
        "--drift-window-seconds",
        "--predlog-retention-gb",
        "--admin-token-file",
    ):
        env = "LOCKGATE_" + flag.lstrip("-").replace("-", "_").upper()
        assert flag in text and env in text, flag


def test_env_vars_set_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKGATE_HTTP", "127.0.0.1:9100")
    monkeypatch.setenv("LOCKGATE_MAX_BATCH_ROWS", "7")
    monkeypatch.setenv("LOCKGATE_DEMO", "true")
    config = serve_config(build_parser().parse_args(["serve"]))
    assert (config.http_host, config.http_port) == ("127.0.0.1", 9100)
    assert config.batch.max_batch_rows == 7 and config.demo
    flagged = serve_config(build_parser().parse_args(["serve", "--http", "0.0.0.0:81"]))
    assert flagged.http_port == 81  # a flag beats the environment


def test_bad_address_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--http", "nonsense"])
    assert info.value.code == 2 and "HOST:PORT" in capsys.readouterr().err


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args], capture_output=True, text=True
    )


def test_models_register_list_show(tmp_path: Path) -> None:
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    home = str(tmp_path / "home")
    reg = _run(
        "models", "register", str(model), "--name", "scale", "--home", home, "--meta", "owner=ml"
    )
    assert reg.returncode == 0, reg.stderr
    assert "registered scale version 1" in reg.stdout
    listed = _run("models", "list", "--home", home, "--json")
    assert orjson.loads(listed.stdout) == {"scale": ["1"]}
    shown = _run("models", "show", "scale", "--home", home)
    assert "input    x FP32 [-1, 4]" in shown.stdout and "owner = ml" in shown.stdout
    doc = orjson.loads(_run("models", "show", "scale", "1", "--home", home, "--json").stdout)
    assert doc["version"] == "1" and doc["metadata"]["owner"] == "ml"


def test_register_invalid_file_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = _run("models", "register", str(bad), "--name", "bad", "--home", str(tmp_path / "home"))
    assert result.returncode == 1 and "lockgate:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "home").rglob("*.onnx"))


def test_show_unknown_model(tmp_path: Path) -> None:
    result = _run("models", "show", "ghost", "--home", str(tmp_path))
    assert result.returncode == 1 and "ghost" in result.stderr


RETRAIN_POOLS = """
import os, sys
from lockgate import cli
from lockgate.retrain import pipeline

def report(path):  # the first thing the worker does after sizing the pools
    print(*(os.environ[v] for v in cli._POOL_SIZE_VARIABLES))
    sys.exit(0)

pipeline.load_pipeline = report
sys.exit(cli.main(sys.argv[1:]))
"""


def test_retrain_sizes_the_compute_pools_before_loading_numpy(tmp_path: Path) -> None:
    """The worker's BLAS/OpenMP pools are sized from --threads (default 1), as environment
    variables those libraries read when they load; a bad value is refused."""
    (tmp_path / "p.toml").write_text("")
    refused = _run("retrain", "--home", str(tmp_path), "--threads", "0", "--pipeline", "p.toml")
    assert refused.returncode == 1 and "--threads must be >= 1, got 0" in refused.stderr
    for extra, want in (((), "1 1 1"), (("--threads", "2"), "2 2 2")):
        done = subprocess.run(
            [sys.executable, "-c", RETRAIN_POOLS, "retrain", "--pipeline", "p.toml", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env={"OPENBLAS_NUM_THREADS": "8", "PATH": "/usr/bin"},
        )
        assert done.stdout.split() == want.split(), done.stderr
