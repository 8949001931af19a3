"""What the registry stores for serving a version: warm-up inputs (checked and run at
registration), the serving configuration (set at registration, replaced whole later), and
the class labels of a rewritten ZipMap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError
from lockgate.model_config import ModelConfig
from tests import onnx_models


def test_warmup_file_and_config_are_stored_with_the_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    model = onnx_models.multi_io_model(tmp_path / "multi.onnx")
    warm = tmp_path / "warm.npz"
    np.savez(
        warm,
        a=np.array([[1, 2]], np.int32),  # cast to the input's INT64
        b=np.array([[0.5, 1.5, 2.5]]),
        s=np.array([["Zürich"]]),
    )
    config_file = tmp_path / "config.toml"
    config_file.write_text('batchable = "false"\nsessions = 2\n')
    info = registry.register(model, "multi", warmup=warm, config=config_file)
    assert info.config == ModelConfig(batchable="false", sessions=2)
    assert info.to_json()["config"]["sessions"] == 2 and info.to_json()["warmup"] is True
    stored = registry.load_warmup(info)
    assert stored is not None and stored["a"].dtype == np.int64
    assert stored["s"].tolist() == [["Zürich"]]
    assert registry.get("multi", "1").config == info.config
    bare = registry.register(model, "multi")
    assert bare.config == ModelConfig() and registry.load_warmup(bare) is None


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        ({"a": np.ones((1, 2)), "b": np.ones((1, 3))}, "lacks input(s) s"),
        (
            {"a": np.ones((1, 2)), "b": np.ones((1, 3)), "s": np.array([["x"]]), "z": np.ones(1)},
            "has arrays for no input: z",
        ),
        (
            {"a": np.ones((1, 3)), "b": np.ones((1, 3)), "s": np.array([["x"]])},
            "input 'a' has shape",
        ),
        ({"a": np.array([["x", "y"]]), "b": np.ones((1, 3)), "s": np.array([["x"]])}, "numeric"),
        ({"a": np.ones((1, 2)), "b": np.ones((1, 3)), "s": np.ones((1, 1))}, "must hold strings"),
        ({"a": np.ones((0, 2)), "b": np.ones((0, 3)), "s": np.zeros((0, 1), "U1")}, "no rows"),
    ],
)
def test_a_warmup_that_does_not_fit_is_refused(
    tmp_path: Path, arrays: dict[str, np.ndarray], says: str
) -> None:
    registry = Registry(tmp_path)
    model = onnx_models.multi_io_model(tmp_path / "multi.onnx")
    with pytest.raises(LockgateError) as refused:
        registry.register(model, "multi", warmup=arrays)
    assert refused.value.kind is ErrorKind.INVALID and says in refused.value.message
    assert registry.versions("multi") == []


def test_a_warmup_the_model_fails_on_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    model = onnx_models.lookup_model(tmp_path / "lookup.onnx", size=4)
    with pytest.raises(LockgateError) as refused:
        registry.register(model, "lookup", warmup={"i": np.array([7])})
    assert "the model fails on its warm-up data" in refused.value.message


def test_set_config_replaces_it_and_a_broken_file_fails_only_its_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    info = registry.register(model, "scale")
    registry.register(model, "scale")
    changed = registry.set_config("scale", "1", ModelConfig(max_batch_rows=8))
    assert changed.config.max_batch_rows == 8
    assert registry.get("scale", "1").config == changed.config
    assert not list(info.path.glob(".tmp-*"))  # written beside it, renamed over it
    (info.path / "config.toml").write_text("sessions = [\n")  # by hand, broken
    versions = registry.versions("scale")
    assert [v.version for v in versions] == ["1", "2"]  # the registry still reads
    assert "not valid TOML" in versions[0].config_error and versions[1].config_error == ""
    with pytest.raises(LockgateError):
        registry.set_config("scale", "9", ModelConfig())
