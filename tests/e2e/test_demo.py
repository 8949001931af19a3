"""`lockgate serve --demo --worker examples/pipeline.toml` on a fresh home: builds and registers
the demo models, starts the retrain worker, and every command it prints (curl, tritonclient, the
drift generator, rollout status) works exactly as printed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _read_banner(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("gateway exited before printing the banner:\n" + "".join(lines))
        lines.append(line)
        if line.startswith("Ctrl-C"):
            return "".join(lines)
    raise AssertionError("no banner")


def _command(banner: str, starts: str) -> str:
    """The shell command starting with `starts`, joined across backslash continuations."""
    lines = banner.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(starts))
    parts = []
    for line in lines[start:]:
        parts.append(line.strip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(parts)


def _shell(command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a printed command as a user would paste it; it must succeed."""
    done = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done


def test_demo_commands_work_as_printed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--demo", "--home", str(home)]
    cmd += ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    cmd += ["--worker", "examples/pipeline.toml"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        banner = _read_banner(proc)
        answer = json.loads(_shell(_command(banner, "curl")).stdout)
        assert answer["model_name"] == "classifier" and answer["model_version"] == "2"
        v1 = _shell(
            _command(banner, "curl").replace("classifier/infer", "classifier/versions/1/infer")
        )
        assert json.loads(v1.stdout)["model_version"] == "1"  # v1 is kept warm in the demo
        assert [o["name"] for o in answer["outputs"]] == ["probability", "label"]
        client = _shell(_command(banner, ".venv/bin/python"))
        assert "HTTP  probability:" in client.stdout and "gRPC  probability:" in client.stdout
        drift_command = _command(banner, ".venv/bin/lockgate demo drift").replace("180", "0")
        assert json.loads(_shell(drift_command, timeout=120).stdout)["rows"] == 2000
        _shell(_command(banner, ".venv/bin/lockgate rollout status"))
        assert [p.name for p in sorted((home / "models").iterdir())] == [
            "classifier",
            "mlp",
            "regressor",
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
