"""The command line: flags, their LOCKGATE_* environment variables, and the models commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from lockgate.cli import build_parser, main
from lockgate.cli_serve import serve_config
from tests import onnx_models
from tests.processes import start_gateway


def test_every_serve_flag_has_an_env_var_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--home",
        "--init",
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
        "--api-keys-file",
        "--max-request-elements",
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


def test_max_request_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve_config(build_parser().parse_args(["serve"])).max_request_elements == 2**26
    monkeypatch.setenv("LOCKGATE_MAX_REQUEST_ELEMENTS", "4096")
    assert serve_config(build_parser().parse_args(["serve"])).max_request_elements == 4096
    args = build_parser().parse_args(["serve", "--max-request-elements", "100"])
    assert serve_config(args).max_request_elements == 100
    for bad in ("0", "-5", "1e6"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--max-request-elements", bad])


def test_bad_address_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--http", "nonsense"])
    assert info.value.code == 2 and "HOST:PORT" in capsys.readouterr().err


def _run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def _env(**values: str) -> dict[str, str]:
    """This process's environment without LOCKGATE_* settings, plus `values`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOCKGATE_")}
    return {**base, **values}


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


def test_models_register_declares_categorical_features(tmp_path: Path) -> None:
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    reference = tmp_path / "ref.npy"
    np.save(reference, np.random.default_rng(1).normal(size=(200, 4)))
    home = str(tmp_path / "home")
    args = ("models", "register", str(model), "--name", "scale", "--home", home)
    reg = _run(*args, "--reference", str(reference), "--categorical", "3,0")
    assert reg.returncode == 0, reg.stderr
    (meta,) = (tmp_path / "home").rglob("meta.json")
    assert orjson.loads(meta.read_bytes())["categorical"] == [0, 3]
    bad = _run(*args, "--reference", str(reference), "--categorical", "1,x")
    assert bad.returncode != 0 and "--categorical" in bad.stderr and "Traceback" not in bad.stderr


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


def test_read_commands_refuse_a_home_that_does_not_exist(tmp_path: Path) -> None:
    """Run from another folder, the relative default home is not there: an error naming the
    absolute path looked at, not "no models"."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (("models", "list"), ("models", "show", "scale")):
        result = _run(*command, cwd=elsewhere, env=_env())
        assert result.returncode == 1, result.stdout
        assert f"no lockgate home at {elsewhere / 'lockgate-home'}" in result.stderr
        assert "LOCKGATE_HOME" in result.stderr and "no models" not in result.stdout
    assert not (elsewhere / "lockgate-home").exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing home without models is an honest "no models"
    listed = _run("models", "list", "--home", str(empty), env=_env())
    assert listed.returncode == 0 and f"no models registered in {empty}" in listed.stdout


def test_the_default_home_comes_from_lockgate_home(tmp_path: Path) -> None:
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    home = tmp_path / "home"
    registered = _run("models", "register", str(model), "--name", "scale", "--home", str(home))
    assert registered.returncode == 0, registered.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = _run("models", "list", "--json", cwd=elsewhere, env=_env(LOCKGATE_HOME=str(home)))
    assert listed.returncode == 0 and orjson.loads(listed.stdout) == {"scale": ["1"]}


@pytest.mark.parametrize(
    ("home", "flags", "message"),
    [
        ("new", [], "no lockgate home at {home}: point --home (or LOCKGATE_HOME) at an existing "
         "home, or add --init to create a new empty one"),
        ("missing/new", [], "no lockgate home at {home}"),
        ("missing/new", ["--init"], "cannot create the lockgate home {home}: the folder "
         "{parent} does not exist"),
        ("missing/new", ["--demo"], "cannot create the lockgate home {home}"),
    ],
    ids=["no-init", "no-parent", "init-no-parent", "demo-no-parent"],
)  # fmt: skip
def test_serve_refuses_a_missing_home_unless_asked_to_create_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    home: str,
    flags: list[str],
    message: str,
) -> None:
    path = tmp_path / home
    assert main(["serve", "--home", str(path), *flags]) == 1
    expected = message.format(home=path, parent=path.parent)
    assert f"lockgate: {expected}" in capsys.readouterr().err
    assert not path.exists()  # nothing created, not even a parent folder
    assert path.parent == tmp_path or not path.parent.exists()


def test_serve_init_creates_a_new_empty_home_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    gateway = start_gateway(home, "--init", log_dir=tmp_path)
    try:
        assert home.is_dir()
        assert f"new empty home at {home}" in gateway.output()
        assert httpx.get(f"{gateway.base}/v2/models/anything", timeout=10).status_code == 404
    finally:
        gateway.stop()
    again = start_gateway(home, log_dir=tmp_path)  # from now on it is an existing home
    again.stop()
