"""Which drift profiles a loading version gets: those stored at registration, else built from its
reference data; a reference that cannot be profiled leaves the version serving without drift
monitors (logged), for the drain thread and the monitor process alike (both call this)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from lockgate.config import MonitorConfig
from lockgate.monitor.drain import Monitor
from lockgate.monitor.profiles import build_profiles, stored_or_built
from lockgate.types import ModelSpec, TensorSpec

SPEC = ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1, 3)),), (TensorSpec("y", "FP32", (-1, 1)),))


def test_stored_profiles_win_over_reference_data() -> None:
    rng = np.random.default_rng(0)
    stored = build_profiles(SPEC, rng.normal(size=(200, 3)), None)
    other = rng.normal(5.0, size=(200, 3))
    assert stored_or_built(SPEC, stored, other, None, None) is stored
    built = stored_or_built(SPEC, None, other, None, None)
    assert built is not None and built.inputs is not None
    assert built.inputs.names == stored.inputs.names  # type: ignore[union-attr]
    assert stored_or_built(SPEC, None, None, None, None) is None


def test_a_reference_that_cannot_be_profiled_leaves_the_version_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_width = np.zeros((200, 5))  # the model has 3 input features
    with caplog.at_level(logging.WARNING):
        assert stored_or_built(SPEC, None, wrong_width, None, None) is None
    assert "no drift profile for m v1" in caplog.text
    monitor = Monitor(MonitorConfig(predlog=False), tmp_path)
    recorder = monitor.attach(SPEC, wrong_width)
    assert recorder.input_features == ["x[0]", "x[1]", "x[2]"]
    vm = monitor.versions[("m", "1")]
    assert vm.input_drift is None and vm.output_drift is None
