"""Small ONNX models built in-process for tests (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="lockgate-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def scale_model(path: Path, features: int = 4, elem: int = TensorProto.FLOAT) -> Path:
    """y = 2 * x, batch-major: every output row depends only on its input row."""
    two = numpy_helper.from_array(np.array(2, dtype=helper.tensor_dtype_to_np_dtype(elem)), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", elem, ["batch", features])],
        [helper.make_tensor_value_info("y", elem, ["batch", features])],
        [two],
    )
    return _save(graph, path)


def pixel_model(path: Path, width: int) -> Path:
    """y[N, 1] = the mean of x[N, width] (UINT8, as exported image models take pixels)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["y"], keepdims=1, axes=[1]),
        ],
        "pixels",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    return _save(graph, path)


def slow_model(
    path: Path,
    width: int = 1024,
    layers: int = 24,
    features: int | None = None,
    names: tuple[str, str] = ("x", "y"),
) -> Path:
    """A chain of square MatMuls: a few milliseconds per call, for overload and deadline tests.
    With `features`, a first layer maps that many inputs to `width` (a slow stand-in for a
    model of that schema)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], names[0]
    if features is not None:
        w = (rng.standard_normal((features, width)) / np.sqrt(features)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "w_in"))
        nodes.append(helper.make_node("MatMul", [prev, "w_in"], ["h_in"]))
        prev = "h_in"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("ReduceMean", [prev], [names[1]], keepdims=1, axes=[1]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["batch", features or width])],
        [helper.make_tensor_value_info(names[1], TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    return _save(graph, path)


def multi_io_model(path: Path) -> Path:
    """Two inputs of different datatypes and two outputs: a + 1 (INT64), b * b (FP64), plus a
    string passthrough, to exercise datatypes and requested outputs."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "one"], ["a_plus_one"]),
            helper.make_node("Mul", ["b", "b"], ["b_squared"]),
            helper.make_node("Identity", ["s"], ["s_out"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, ["batch", 3]),
            helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("a_plus_one", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("b_squared", TensorProto.DOUBLE, ["batch", 3]),
            helper.make_tensor_value_info("s_out", TensorProto.STRING, ["batch", 1]),
        ],
        [one],
    )
    return _save(graph, path)


def lookup_model(path: Path, size: int = 10) -> Path:
    """y = table[i]: an index outside the table makes onnxruntime fail, for failure isolation."""
    table = numpy_helper.from_array(np.arange(size, dtype=np.float32) * 10, "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [table],
    )
    return _save(graph, path)


def image_model(path: Path, shape: tuple[int | str, ...] = (3, 224, 224)) -> Path:
    """y[N, 1] = the mean over pixels of a 1x1 convolution averaging the three channels of
    x[N, *shape] (FP32; a str dimension is symbolic): an image model whose input is summarised
    by the monitor, and whose output is each image's mean."""
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [weight],
    )
    return _save(graph, path)
