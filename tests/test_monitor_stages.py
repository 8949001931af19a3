"""benchmarks/monitor_stages.py cuts the monitor short by patching a copy of the source: every
variant's patches must still apply to the code as it is, or the benchmark would stop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import monitor_stages


@pytest.mark.parametrize("variant", sorted(monitor_stages.VARIANTS))
def test_every_variant_patches_the_current_source(variant: str, tmp_path: Path) -> None:
    patches, _ = monitor_stages.VARIANTS[variant]
    src = monitor_stages.patched(tmp_path, patches)
    for name, _, replacement in patches:
        assert replacement in (src / "lockgate" / name).read_text()
    untouched = {name for name, _, _ in patches}
    for path in (monitor_stages.SRC / "monitor").glob("*.py"):
        name = f"monitor/{path.name}"
        if name not in untouched:
            assert (src / "lockgate" / name).read_bytes() == path.read_bytes()
