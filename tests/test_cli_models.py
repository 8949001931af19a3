"""`lockgate models register --warmup --config` and `lockgate models config`, as a user runs
them (a subprocess), against the registry files they change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson

from lockgate.control.registry import Registry
from lockgate.model_config import ModelConfig
from tests.compat import exports


def lockgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args], capture_output=True, text=True
    )


def test_register_with_warmup_and_config_then_change_the_config(tmp_path: Path) -> None:
    model, inputs = exports.skl_string_pipeline()
    (tmp_path / "pipe.onnx").write_bytes(model)
    np.savez(tmp_path / "warm.npz", **inputs)
    (tmp_path / "serve.toml").write_text("sessions = 2\n")
    home = str(tmp_path / "home")
    reg = lockgate(
        "models", "register", str(tmp_path / "pipe.onnx"), "--name", "pipe", "--home", home,
        "--warmup", str(tmp_path / "warm.npz"), "--config", str(tmp_path / "serve.toml"),
    )  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    assert "converted: output 'output_probability': ZipMap removed" in reg.stdout
    shown = lockgate("models", "show", "pipe", "--home", home)
    assert "output   output_probability FP32 [-1, 2] labels [0, 1]" in shown.stdout
    assert "warm-up  warmup.npz" in shown.stdout and "config   sessions = 2" in shown.stdout

    changed = lockgate(
        "models", "config", "pipe", "1", "--home", home,
        "--set", "batchable=false", "--set", "providers=CPUExecutionProvider", "--json",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert orjson.loads(changed.stdout)["batchable"] == "false"
    stored = Registry(Path(home)).get("pipe", "1").config
    assert stored == ModelConfig(batchable="false", sessions=2)
    plain = lockgate("models", "config", "pipe", "1", "--home", home)
    assert 'batchable = "false"' in plain.stdout and "sessions = 2" in plain.stdout

    refused = lockgate("models", "config", "pipe", "1", "--home", home, "--set", "threads=2")
    assert refused.returncode == 1 and "unknown model config key 'threads'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_register_refuses_what_cannot_be_served_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "seq.onnx").write_bytes(exports.zipmap_feeding_another_node())
    result = lockgate(
        "models", "register", str(tmp_path / "seq.onnx"), "--name", "seq",
        "--home", str(tmp_path / "home"),
    )  # fmt: skip
    assert result.returncode == 1 and "options={'zipmap': False}" in result.stderr
    assert "Traceback" not in result.stderr
