"""What a gateway does at start besides serving: it removes what crashed registrations left."""

from __future__ import annotations

import os
from pathlib import Path

from lockgate.control.registry import Registry
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config


def test_a_starting_gateway_removes_unfinished_registrations(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    stale = tmp_path / "models" / "scale" / ".tmp-otherhost-99999999-x1"  # another host's
    fresh = tmp_path / "models" / "scale" / ".tmp-otherhost-99999999-x2"  # maybe still going
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    with RunningGateway(loopback_config(tmp_path), registry):
        assert not stale.exists() and fresh.exists()
