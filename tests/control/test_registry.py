"""The registry: immutable numbered versions, schema read from the graph, atomic publish, and
distinct versions under concurrent registration (threads and processes)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto

from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor import drift
from tests import onnx_models


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return onnx_models.scale_model(tmp_path / "scale.onnx", features=3)


def test_register_publishes_a_whole_version(tmp_path: Path, model_file: Path) -> None:
    registry = Registry(tmp_path / "home")
    info = registry.register(model_file, "scale", metadata={"owner": "risk-team"})
    folder = tmp_path / "home" / "models" / "scale" / "1"
    assert info.version == "1" and info.path == folder
    assert (folder / "model.onnx").read_bytes() == model_file.read_bytes()
    assert info.sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert [(t.name, t.datatype, t.shape) for t in info.spec.inputs] == [("x", "FP32", (-1, 3))]
    assert [(t.name, t.datatype, t.shape) for t in info.spec.outputs] == [("y", "FP32", (-1, 3))]
    assert info.metadata == {"owner": "risk-team"} and info.created.endswith("+00:00")
    # what is on disk reads back identically, and versions count up
    assert registry.get("scale", "1") == info
    assert registry.register(model_file, "scale").version == "2"
    assert [v.version for v in registry.versions("scale")] == ["1", "2"]
    assert registry.latest("scale").version == "2" and registry.models() == ["scale"]
    assert not list(folder.parent.glob(".tmp-*"))


def test_schema_skips_initializers_and_reads_every_datatype(tmp_path: Path) -> None:
    path = onnx_models.scale_model(tmp_path / "i64.onnx", features=2, elem=TensorProto.INT64)
    model = onnx.load(path)
    model.graph.input.extend([onnx.helper.make_tensor_value_info("two", TensorProto.INT64, [])])
    onnx.save(model, path)  # an initializer listed as a graph input is not a request input
    info = Registry(tmp_path).register(path, "i64")
    assert [t.name for t in info.spec.inputs] == ["x"]
    assert info.spec.inputs[0].datatype == "INT64"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a valid ONNX model"),
        (b"\x08\x01garbage that is not protobuf \xff\xff", "not a valid ONNX model"),
    ],
    ids=["empty", "garbage"],
)
def test_invalid_file_is_refused_and_leaves_nothing(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    registry = Registry(tmp_path / "home")
    with pytest.raises(LockgateError) as info:
        registry.register(bad, "bad")
    assert info.value.kind is ErrorKind.INVALID and message in info.value.message
    assert registry.versions("bad") == []
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "home").rglob("*"))


def test_model_onnxruntime_cannot_load_is_refused(tmp_path: Path) -> None:
    # Passes onnx.checker (unknown ops in a custom domain are allowed) but no runtime has it.
    node = onnx.helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", 17),
            onnx.helper.make_opsetid("com.example", 1),
        ],
    )
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(LockgateError, match="onnxruntime cannot load"):
        Registry(tmp_path).register(path, "custom")
    assert Registry(tmp_path).versions("custom") == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 65, "white space", "..", "é"])
def test_bad_names_are_refused(tmp_path: Path, model_file: Path, name: str) -> None:
    with pytest.raises(LockgateError, match="invalid model name"):
        Registry(tmp_path).register(model_file, name)


def test_unknown_model_and_version_are_not_found(tmp_path: Path, model_file: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(LockgateError, match="unknown model 'nope'") as info:
        registry.latest("nope")
    assert info.value.kind is ErrorKind.NOT_FOUND
    registry.register(model_file, "scale")
    with pytest.raises(LockgateError, match="unknown version '7'"):
        registry.get("scale", "7")
    with pytest.raises(LockgateError, match="unknown version 'abc'"):
        registry.get("scale", "abc")


def test_reference_data_from_npy_and_csv(tmp_path: Path, model_file: Path) -> None:
    data = np.random.default_rng(1).normal(size=(50, 3))
    np.save(tmp_path / "ref.npy", data)
    lines = ["a,b,c", *(",".join(repr(float(v)) for v in row) for row in data)]
    (tmp_path / "ref.csv").write_text("\n".join(lines) + "\n")
    registry = Registry(tmp_path / "home")
    for source in (tmp_path / "ref.npy", tmp_path / "ref.csv"):
        info = registry.register(model_file, "scale", reference=source)
        loaded = registry.load_reference(info)
        assert loaded is not None
        np.testing.assert_array_equal(loaded, data)
    bad = tmp_path / "ref.txt"
    bad.write_text("1,2,3")
    with pytest.raises(LockgateError, match=r"\.npy, \.npz or \.csv"):
        registry.register(model_file, "scale", reference=bad)
    assert len(registry.versions("scale")) == 2


def test_drift_profiles_are_built_at_registration_from_the_reference(
    tmp_path: Path, model_file: Path
) -> None:
    data = np.random.default_rng(2).normal(size=(400, 3))
    registry = Registry(tmp_path / "home")
    info = registry.register(model_file, "scale", reference=data)
    profiles = registry.load_profiles(info)
    assert profiles is not None and info.to_json()["drift_profile"] is True
    # inputs: the reference itself; outputs: what the model (y = 2x, in float32) makes of it
    names = ["x[0]", "x[1]", "x[2]"]
    outputs = 2 * data.astype(np.float32)
    for got, want in (
        (profiles.inputs, drift.build_profile(data, names)),
        (
            profiles.outputs,
            drift.build_profile(outputs.astype(np.float64), ["y[0]", "y[1]", "y[2]"]),
        ),
    ):
        assert got is not None and got.names == want.names
        for name in ("edges", "n_edges", "counts", "norms"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    # no reference, no profile; a reference the model cannot score still registers, unprofiled
    bare = registry.register(model_file, "scale")
    assert registry.load_profiles(bare) is None and bare.to_json()["drift_profile"] is False
    narrow = registry.register(model_file, "scale", reference=data[:, :2])
    assert registry.load_reference(narrow) is not None and registry.load_profiles(narrow) is None
    (narrow.path / "profile.npz").write_bytes(b"not a profile")  # unreadable: ignored
    assert registry.load_profiles(narrow) is None


def test_declared_categorical_features_shape_the_input_profile(
    tmp_path: Path, model_file: Path
) -> None:
    rng = np.random.default_rng(5)
    data = np.column_stack([rng.normal(size=400), rng.integers(0, 40, 400), rng.normal(size=400)])
    registry = Registry(tmp_path / "home")
    found = registry.load_profiles(registry.register(model_file, "scale", reference=data))
    assert found is not None and found.inputs.categorical.tolist() == [False, False, False]
    info = registry.register(model_file, "scale", reference=data, categorical=[1, 1])
    profiles = registry.load_profiles(info)
    assert profiles is not None and profiles.inputs.categorical.tolist() == [False, True, False]
    assert orjson.loads((info.path / "meta.json").read_bytes())["categorical"] == [1]
    with pytest.raises(LockgateError, match="not columns of the reference"):
        registry.register(model_file, "scale", reference=data, categorical=[3])
    with pytest.raises(LockgateError, match="give reference data"):
        registry.register(model_file, "scale", categorical=[0])
    assert len(registry.versions("scale")) == 2


def test_verify_detects_a_changed_file(tmp_path: Path, model_file: Path) -> None:
    registry = Registry(tmp_path)
    info = registry.register(model_file, "scale")
    registry.verify(info)
    with open(info.model_path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(LockgateError, match="checksum mismatch"):
        registry.verify(info)


def test_gc_removes_stale_temp_folders(tmp_path: Path, model_file: Path) -> None:
    registry = Registry(tmp_path)
    registry.register(model_file, "scale")
    stale = tmp_path / "models" / "scale" / ".tmp-crashed"
    stale.mkdir()
    os.utime(stale, (0, 0))
    assert registry.gc_temp() == 1 and not stale.exists()
    assert [v.version for v in registry.versions("scale")] == ["1"]


def test_concurrent_threads_get_distinct_versions(tmp_path: Path, model_file: Path) -> None:
    registry = Registry(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: registry.register(model_file, "scale"), range(16)))
    assert sorted(int(i.version) for i in infos) == list(range(1, 17))


def _register_in_process(home: str, model: str) -> str:
    return Registry(Path(home)).register(Path(model), "scale").version


def test_concurrent_processes_get_distinct_versions(tmp_path: Path, model_file: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        versions = pool.starmap(_register_in_process, [(str(tmp_path), str(model_file))] * 12)
    assert sorted(map(int, versions)) == list(range(1, 13))
    for info in Registry(tmp_path).versions("scale"):
        Registry(tmp_path).verify(info)


def test_gc_spares_a_live_writer_and_removes_a_killed_one(tmp_path: Path, model_file: Path) -> None:
    """A writer's temporary folder survives gc while the writer runs, however old, and goes
    once the writer was killed (kill -9 in the middle of a registration)."""
    registry = Registry(tmp_path)
    registry.register(model_file, "scale")
    folder = tmp_path / "models" / "scale"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, tempfile; from lockgate.control import registry as r; "
            f"print(tempfile.mkdtemp(prefix=r._temp_prefix(), dir={str(folder)!r}), flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        temp = Path(writer.stdout.readline().strip())
        os.utime(temp, (0, 0))
        assert registry.gc_temp() == 0 and temp.exists()
    finally:
        writer.kill()
        writer.wait()
    assert registry.gc_temp() == 1 and not temp.exists()
    assert [v.version for v in registry.versions("scale")] == ["1"]
