"""The layers of docs/architecture.md hold: import-linter checks the contracts in pyproject.toml
(every import, including indirect and function-level ones)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(command), "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_every_import_contract_is_kept() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """The checker sees a violation: the monitor contract against a config that forbids the
    monitor from importing numpy's neighbour in its own layer (it does import the kernels)."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "lockgate"\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "monitor must not import its kernels"\ntype = "forbidden"\n'
        'source_modules = ["lockgate.monitor.drift"]\n'
        'forbidden_modules = ["lockgate.monitor.kernels"]\n'
    )
    result = lint_imports(str(config))
    assert result.returncode != 0 and "1 broken" in result.stdout
