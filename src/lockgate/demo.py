"""The demo models, built from seeded synthetic data with numpy and the onnx helper API (nothing
is downloaded):

- `classifier` v1 and v2: logistic regression on 16 float features -> `probability`, `label`;
  v2 is trained on more data. Both carry their training features as reference data.
- `regressor`: least-squares linear regression on 8 features -> `value`.
- `mlp`: a 32 -> 1536 -> 1536 -> 1536 -> 1 ReLU network, about 1 ms per batch-1 call on one
  core, so that batching has something to win.

`python -m lockgate.demo OUT_DIR` writes the ONNX files and reference data to OUT_DIR.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.control.registry import Registry
from lockgate.control.version_info import VersionInfo

SEED = 20261123
CLASSIFIER_FEATURES = 16
REGRESSOR_FEATURES = 8
MLP_FEATURES = 32
MLP_HIDDEN = 1536
OPSET = 17
DEMO_VERSIONS = {"classifier": 2, "regressor": 1, "mlp": 1}
IR_VERSION = 8

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class DemoModel:
    name: str
    file: Path
    reference: Path | None
    metadata: dict[str, str]


def _onnx_model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    from onnx import checker, helper

    graph = helper.make_graph(nodes, "demo", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lockgate.demo"
    )
    model.ir_version = IR_VERSION
    checker.check_model(model)
    return model


def _tensor(name: str, features: int | None, elem: int) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, ["batch", features if features else 1])


def _init(name: str, value: Array) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(value, name)


def classifier_data(
    rng: np.random.Generator, rows: int, *, drifted: bool = False
) -> tuple[Array, Array]:
    """Features with distinct means and scales, labels from a fixed logistic ground truth.

    `drifted` is the world after a change: the first four features move by one standard
    deviation and the relation between features and label changes (the signs of half the
    ground-truth weights flip), so a model retrained on the new data beats the old one."""
    means = np.linspace(-1.0, 1.0, CLASSIFIER_FEATURES)
    scales = np.linspace(0.5, 2.0, CLASSIFIER_FEATURES)
    truth = np.sin(np.arange(CLASSIFIER_FEATURES) + 1.0)
    shift = np.zeros(CLASSIFIER_FEATURES)
    if drifted:
        shift[:4] = scales[:4]
        truth = truth * np.where(np.arange(CLASSIFIER_FEATURES) % 2 == 0, -1.0, 1.0)
    x = rng.normal(means + shift, scales, size=(rows, CLASSIFIER_FEATURES))
    logits = (x - means) / scales @ truth + 0.3
    y = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return x.astype(np.float32), y


def train_logistic(x: Array, y: Array, steps: int = 300, lr: float = 0.5) -> tuple[Array, float]:
    """Full-batch gradient descent on standardised features; returns raw-space weights."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    w = np.zeros(z.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        grad = p - y
        w -= lr * (z.T @ grad) / len(y)
        b -= lr * grad.mean()
    raw_w = w / std
    return raw_w, float(b - mean @ raw_w)


def classifier_onnx(weights: Array, bias: float) -> Any:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["logit0"]),
        helper.make_node("Add", ["logit0", "B"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
        helper.make_node("Greater", ["probability", "half"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["label"], to=TensorProto.INT64),
    ]
    inits = [
        _init("W", weights.reshape(-1, 1).astype(np.float32)),
        _init("B", np.array([bias], dtype=np.float32)),
        _init("half", np.array([0.5], dtype=np.float32)),
    ]
    return _onnx_model(
        nodes,
        [_tensor("input", CLASSIFIER_FEATURES, TensorProto.FLOAT)],
        [
            _tensor("probability", None, TensorProto.FLOAT),
            _tensor("label", None, TensorProto.INT64),
        ],
        inits,
    )


def regressor_onnx(rng: np.random.Generator) -> tuple[Any, Array]:
    from onnx import TensorProto, helper

    x = rng.normal(0.0, 1.0, size=(4000, REGRESSOR_FEATURES))
    truth = np.linspace(-2.0, 2.0, REGRESSOR_FEATURES)
    y = x @ truth + 1.5 + rng.normal(0.0, 0.1, size=len(x))
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["v0"]),
        helper.make_node("Add", ["v0", "B"], ["value"]),
    ]
    inits = [
        _init("W", coef[:-1].reshape(-1, 1).astype(np.float32)),
        _init("B", np.array([coef[-1]], dtype=np.float32)),
    ]
    model = _onnx_model(
        nodes,
        [_tensor("input", REGRESSOR_FEATURES, TensorProto.FLOAT)],
        [_tensor("value", None, TensorProto.FLOAT)],
        inits,
    )
    return model, x.astype(np.float32)


def mlp_onnx(rng: np.random.Generator) -> Any:
    from onnx import TensorProto, helper

    sizes = [MLP_FEATURES, MLP_HIDDEN, MLP_HIDDEN, MLP_HIDDEN, 1]
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)
        inits += [_init(f"W{i}", w), _init(f"B{i}", np.zeros(fan_out, dtype=np.float32))]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"B{i}"], ["score" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    return _onnx_model(
        nodes,
        [_tensor("input", MLP_FEATURES, TensorProto.FLOAT)],
        [_tensor("score", None, TensorProto.FLOAT)],
        inits,
    )


def build_demo_models(out_dir: Path) -> list[tuple[DemoModel, ...]]:
    """Write every demo model (and reference data) to `out_dir`; the same bytes on every run.
    Returns, per model name, its versions in order."""
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    built: list[tuple[DemoModel, ...]] = []

    versions = []
    for version, rows in ((1, 2000), (2, 8000)):
        x, y = classifier_data(rng, rows)
        w, b = train_logistic(x.astype(np.float64), y)
        accuracy = float((((x @ w + b) > 0) == (y > 0.5)).mean())
        file = out_dir / f"classifier-v{version}.onnx"
        onnx.save_model(classifier_onnx(w, b), file)
        reference = out_dir / f"classifier-v{version}-reference.npy"
        np.save(reference, x)
        meta = {"task": "binary classification", "train_rows": str(rows)}
        meta["train_accuracy"] = f"{accuracy:.4f}"
        versions.append(DemoModel("classifier", file, reference, meta))
    built.append(tuple(versions))

    model, x = regressor_onnx(rng)
    onnx.save_model(model, out_dir / "regressor.onnx")
    np.save(out_dir / "regressor-reference.npy", x)
    built.append(
        (
            DemoModel(
                "regressor",
                out_dir / "regressor.onnx",
                out_dir / "regressor-reference.npy",
                {"task": "regression"},
            ),
        )
    )

    onnx.save_model(mlp_onnx(rng), out_dir / "mlp.onnx")
    built.append((DemoModel("mlp", out_dir / "mlp.onnx", None, {"task": "scoring"}),))
    return built


def ensure_demo_models(registry: Registry) -> list[VersionInfo]:
    """Register the demo models that are missing (by name); returns the versions registered.
    Builds nothing (and imports no onnx) when they are all there already."""
    registered: list[VersionInfo] = []
    if all(len(registry.versions(name)) >= n for name, n in DEMO_VERSIONS.items()):
        return registered
    with tempfile.TemporaryDirectory(prefix="lockgate-demo-") as tmp:
        for versions in build_demo_models(Path(tmp)):
            present = len(registry.versions(versions[0].name))
            for demo in versions[present:]:
                info = registry.register(
                    demo.file,
                    demo.name,
                    metadata={"demo": "true", **demo.metadata},
                    reference=demo.reference,
                )
                registered.append(info)
    return registered


def send_traffic(
    address: str, rows: int, *, drifted: bool, seed: int = 1, endpoint: str = "classifier"
) -> dict[str, float]:
    """Send `rows` single-row requests to the gateway at `address` (host:port), then their true
    labels as feedback; returns the served accuracy. Single-row requests, because a label is
    joined to its request's first row."""
    import http.client

    import orjson

    x, y = classifier_data(np.random.default_rng(seed), rows, drifted=drifted)
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=30)
    prefix = f"{'drift' if drifted else 'calm'}-{seed}-{time.time_ns():x}"
    correct = 0
    labels = []
    try:
        for i in range(rows):
            body = {
                "id": f"{prefix}-{i}",
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 16], "data": x[i].tolist()}
                ],
            }
            conn.request("POST", f"/v2/models/{endpoint}/infer", orjson.dumps(body))
            answer = orjson.loads(conn.getresponse().read())
            label = next(o for o in answer["outputs"] if o["name"] == "label")["data"][0]
            correct += int(label == y[i])
            labels.append({"id": f"{prefix}-{i}", "label": int(y[i])})
        for start in range(0, rows, 1000):
            batch = orjson.dumps({"labels": labels[start : start + 1000]})
            conn.request("POST", f"/v2/models/{endpoint}/feedback", batch)
            conn.getresponse().read()
    finally:
        conn.close()
    return {"rows": rows, "served_accuracy": correct / max(rows, 1)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lockgate.demo OUT_DIR", file=sys.stderr)
        return 2
    for versions in build_demo_models(Path(argv[0])):
        for demo in versions:
            print(demo.file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
