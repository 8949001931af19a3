"""A version's configuration changed in the registry is applied by reloading the version beside
the serving one; a configuration that does not load leaves the previous one serving."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.model_config import ModelConfig
from lockgate.serve.controller import Controller
from lockgate.types import InferRequest, Tensor
from tests import onnx_models
from tests.conftest import loopback_config
from tests.waiting import until


async def test_a_changed_config_reloads_and_a_broken_one_keeps_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path)
    registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    config = dataclasses.replace(loopback_config(tmp_path), monitor=MonitorConfig(enabled=False))
    ctl = Controller(registry, config, StateStore(tmp_path))
    await ctl.start()
    key = ("scale", "1")
    x = np.ones((3, 4), np.float32)
    request = InferRequest("scale", None, "r", [Tensor("x", "FP32", x)])
    try:
        old = ctl.models.loaded[key]
        assert old.spec.batchable and old.runner.sessions == 1
        changed = ModelConfig(sessions=2, batchable="false", max_batch_rows=8)
        registry.set_config("scale", "1", changed)
        await ctl.models.refresh()
        new = ctl.models.loaded[key]
        assert new is not old and new.runner.sessions == 2 and not new.spec.batchable
        assert new.batcher.config.max_batch_rows == 8 and new.executor is not None
        answer = await ctl.dataplane.infer(request)
        np.testing.assert_array_equal(answer.outputs[0].data, 2 * x)
        await until(
            lambda: not old.runner.loaded, "the old version to be released"
        )  # released once idle
        with caplog.at_level(logging.ERROR):
            registry.set_config("scale", "1", ModelConfig(providers=("NoSuchExecutionProvider",)))
            await ctl.models.refresh()
            await ctl.models.refresh()  # not tried (nor logged) again
        assert ctl.models.loaded[key] is new
        errors = [r.getMessage() for r in caplog.records if "does not load" in r.getMessage()]
        assert len(errors) == 1 and "NoSuchExecutionProvider" in errors[0]
        answer = await ctl.dataplane.infer(request)
        np.testing.assert_array_equal(answer.outputs[0].data, 2 * x)
    finally:
        await ctl.drain(5.0)
