"""Gate results live with their version: written once (a second write is a CONFLICT and changes
nothing), read back exactly, absent for a version never judged, and concurrent writers of one
version leave exactly one whole document."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from lockgate.control.registry import GATES_FILE, Registry
from lockgate.errors import ErrorKind, LockgateError
from tests import onnx_models


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "home")
    registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    return registry


def test_gates_are_written_once_and_read_back(registry: Registry) -> None:
    info = registry.get("scale", "1")
    assert registry.gates(info) is None
    doc = {"passed": True, "against": None, "report": {"gates": [{"name": "schema"}]}}
    registry.write_gates(info, doc)
    assert registry.gates(info) == doc
    assert orjson.loads((info.path / GATES_FILE).read_bytes()) == doc
    with pytest.raises(LockgateError) as again:
        registry.write_gates(info, {"passed": False})
    assert again.value.kind is ErrorKind.CONFLICT and "already has recorded gate" in str(
        again.value
    )
    assert registry.gates(registry.get("scale", "1")) == doc  # unchanged
    assert sorted(p.name for p in info.path.iterdir() if p.name.startswith(".")) == []


def test_concurrent_writers_leave_one_whole_document(registry: Registry) -> None:
    info = registry.get("scale", "1")

    def write(i: int) -> bool:
        try:
            registry.write_gates(info, {"passed": True, "writer": i, "pad": "x" * 100_000})
        except LockgateError as exc:
            assert exc.kind is ErrorKind.CONFLICT
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(write, range(16)))
    assert sum(won) == 1
    doc = registry.gates(info)
    assert doc is not None and doc["writer"] == won.index(True)
    assert sorted(p.name for p in info.path.iterdir() if p.name.startswith(".")) == []
