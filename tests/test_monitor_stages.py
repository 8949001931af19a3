"""benchmarks/monitor_stages.py cuts the monitor short by patching a copy of the source: every
variant's patches must still apply to the code as it is, leave valid Python, and touch nothing
else, or the benchmark would stop or measure something other than it says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import monitor_stages

PATCHED = sorted(name for name, (patches, _) in monitor_stages.VARIANTS.items() if patches)


@pytest.mark.parametrize("variant", PATCHED)
def test_every_variant_patches_the_current_source(variant: str, tmp_path: Path) -> None:
    patches, _ = monitor_stages.VARIANTS[variant]
    src = monitor_stages.patched(tmp_path, patches)
    changed = {name for name, _, _ in patches}
    for path in monitor_stages.SRC.rglob("*.py"):
        name = path.relative_to(monitor_stages.SRC).as_posix()
        copy = (src / "lockgate" / name).read_text()
        if name in changed:
            assert copy != path.read_text()
            compile(copy, name, "exec")  # still Python
        else:
            assert copy == path.read_text()
    for name, _, replacement in patches:
        assert replacement in (src / "lockgate" / name).read_text()
