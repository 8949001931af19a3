"""The pluggable trainer interface and the default trainers (numpy only, exported with the onnx
helper API, so the worker needs no ML framework).

A trainer is any function ``(x, y, params, seed) -> TrainedModel``:

- ``x``: float32 ``[rows, features]``, the logged input features (the champion's ``input``);
- ``y``: float64 ``[rows]``, the feedback labels (0/1 for classification, values for regression);
- ``params``: the pipeline file's ``[trainer.params]`` table, unchanged;
- ``seed``: the pipeline's ``data.seed``; use it for every random choice, so that one dataset
  and one seed always give the same model.

It returns the serialized ONNX model with the champion's input/output schema (same names,
datatypes and shapes: the evaluation gates refuse anything else), the effective parameters and
its own training metrics. To plug in your own, put it in an importable module and name it in the
pipeline file::

    [trainer]
    function = "mypackage.trainers:gradient_boosting"
    params = { depth = 4 }

Examples: ``logistic_regression`` (the demo classifier's schema: ``input`` FP32 ``[-1, F]`` ->
``probability`` FP32 ``[-1, 1]``, ``label`` INT64 ``[-1, 1]``) and ``linear_regression``
(``input`` -> ``value`` FP32 ``[-1, 1]``). Both are deterministic: no randomness at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from lockgate.errors import invalid

Array = np.ndarray[Any, Any]
OPSET = 17
IR_VERSION = 8
PRODUCER = "lockgate.retrain"


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """What a trainer hands back: the model, what it was trained with, how it did on its data."""

    onnx: bytes
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


Trainer = Callable[[Array, Array, dict[str, Any], int], TrainedModel]


@dataclass(frozen=True, slots=True)
class LinearModel:
    """Weights in raw feature space: score = x @ weights + bias."""

    weights: Array  # float64 [features]
    bias: float
    iterations: int = 0
    converged: bool = True

    def scores(self, x: Array) -> Array:
        return np.asarray(x, np.float64) @ self.weights + self.bias


def sigmoid(z: Array) -> Array:
    """Numerically stable logistic function."""
    out: Array = np.exp(-np.logaddexp(0.0, -z))
    return out


def _standardise(x: Array) -> tuple[Array, Array, Array]:
    """Features scaled to mean 0, std 1 (constant features keep scale 1): makes one L2 strength
    mean the same for every feature and keeps the solver well conditioned."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise invalid(f"training data must be a non-empty [rows, features] array, got {x.shape}")
    if not np.isfinite(x).all():
        raise invalid("training data contains NaN or infinite features")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    return (x - mean) / std, mean, std


def _to_raw(beta: Array, mean: Array, std: Array) -> tuple[Array, float]:
    w = beta[:-1] / std
    return w, float(beta[-1] - mean @ w)


def fit_logistic(x: Array, y: Array, l2: float = 1e-3, max_iter: int = 100) -> LinearModel:
    """L2-regularised logistic regression by damped Newton steps (IRLS) on standardised
    features; the intercept is not penalised. Deterministic, and converges in a few steps."""
    y = np.asarray(y, np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise invalid("logistic regression needs labels 0 or 1")
    if y.min() == y.max():
        raise invalid(f"logistic regression needs both classes, all labels are {y[0]:g}")
    z, mean, std = _standardise(x)
    a = np.hstack([z, np.ones((z.shape[0], 1))])
    n, k = a.shape
    penalty = np.full(k, float(l2))
    penalty[-1] = 0.0

    def loss(beta: Array) -> float:
        eta = a @ beta
        return float(np.mean(np.logaddexp(0.0, eta) - y * eta) + 0.5 * penalty @ beta**2)

    beta = np.zeros(k)
    current = loss(beta)
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported below
        p = sigmoid(a @ beta)
        grad = a.T @ (p - y) / n + penalty * beta
        hess = (a * (p * (1 - p))[:, None]).T @ a / n + np.diag(penalty + 1e-12)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrement = float(grad @ step)
        if decrement / 2 < 1e-12:
            converged = True
            break
        t = 1.0
        for _ in range(40):  # backtracking: keeps Newton stable on (nearly) separable data
            candidate = beta - t * step
            value = loss(candidate)
            if value <= current - 1e-4 * t * decrement:
                break
            t /= 2
        beta, current = candidate, value
    w, b = _to_raw(beta, mean, std)
    return LinearModel(w, b, iterations, converged)


def fit_linear(x: Array, y: Array, l2: float = 0.0) -> LinearModel:
    """Least squares with an optional ridge penalty on standardised features (intercept not
    penalised), solved as one augmented least-squares problem (no normal equations)."""
    y = np.asarray(y, np.float64)
    if not np.isfinite(y).all():
        raise invalid("linear regression needs finite targets")
    z, mean, std = _standardise(x)
    n, f = z.shape
    y_mean = float(y.mean())
    design, target = z, y - y_mean
    if l2 > 0:
        design = np.vstack([z, np.sqrt(l2 * n) * np.eye(f)])
        target = np.concatenate([target, np.zeros(f)])
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    w, b = _to_raw(np.append(coef, y_mean), mean, std)
    return LinearModel(w, b)


def _serialize(nodes: list[Any], outputs: list[Any], inits: list[Any], features: int) -> bytes:
    from onnx import TensorProto, checker, helper

    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])]
    graph = helper.make_graph(nodes, "retrained", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    model.ir_version = IR_VERSION
    checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _linear_nodes(model: LinearModel, out: str) -> tuple[list[Any], list[Any]]:
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["score0"]),
        helper.make_node("Add", ["score0", "B"], [out]),
    ]
    inits = [
        numpy_helper.from_array(model.weights.reshape(-1, 1).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([model.bias], dtype=np.float32), "B"),
    ]
    return nodes, inits


def logistic_onnx(model: LinearModel) -> bytes:
    """`input` FP32 [-1, F] -> `probability` FP32 [-1, 1], `label` INT64 [-1, 1] (p > 0.5)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = _linear_nodes(model, "logit")
    nodes += [
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
        helper.make_node("Greater", ["probability", "half"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["label"], to=TensorProto.INT64),
    ]
    inits.append(numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half"))
    outputs = [
        helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
    ]
    return _serialize(nodes, outputs, inits, model.weights.shape[0])


def linear_onnx(model: LinearModel) -> bytes:
    """`input` FP32 [-1, F] -> `value` FP32 [-1, 1]."""
    from onnx import TensorProto, helper

    nodes, inits = _linear_nodes(model, "value")
    outputs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])]
    return _serialize(nodes, outputs, inits, model.weights.shape[0])


def _param(params: dict[str, Any], key: str, default: float, kind: type = float) -> Any:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise invalid(f"trainer.params.{key} must be a number >= 0, got {value!r}")
    if kind is int and value != int(value):
        raise invalid(f"trainer.params.{key} must be an integer, got {value!r}")
    return kind(value)


def _check_params(params: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise invalid(f"unknown key 'trainer.params.{unknown[0]}' (known: {', '.join(known)})")


def logistic_regression(x: Array, y: Array, params: dict[str, Any], seed: int) -> TrainedModel:
    """Default classification trainer. params: `l2` (default 1e-3), `max_iter` (default 100).
    `seed` is unused: the fit is deterministic."""
    _check_params(params, ("l2", "max_iter"))
    l2 = _param(params, "l2", 1e-3)
    max_iter = max(1, _param(params, "max_iter", 100, int))
    model = fit_logistic(x, y, l2, max_iter)
    p = sigmoid(model.scores(x))
    y = np.asarray(y, np.float64)
    eps = 1e-15
    log_loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    metrics = {
        "train_rows": len(y),
        "train_accuracy": float(np.mean((p > 0.5) == (y > 0.5))),
        "train_log_loss": float(log_loss),
        "iterations": model.iterations,
        "converged": model.converged,
    }
    return TrainedModel(logistic_onnx(model), {"l2": l2, "max_iter": max_iter}, metrics)


def linear_regression(x: Array, y: Array, params: dict[str, Any], seed: int) -> TrainedModel:
    """Default regression trainer. params: `l2` (ridge strength on standardised features,
    default 0: plain least squares). `seed` is unused: the fit is deterministic."""
    _check_params(params, ("l2",))
    l2 = _param(params, "l2", 0.0)
    model = fit_linear(x, y, l2)
    y = np.asarray(y, np.float64)
    residual = model.scores(x) - y
    total = float(np.sum((y - y.mean()) ** 2))
    metrics = {
        "train_rows": len(y),
        "train_mae": float(np.mean(np.abs(residual))),
        "train_rmse": float(np.sqrt(np.mean(residual**2))),
        "train_r2": 1.0 - float(np.sum(residual**2)) / total if total > 0 else 0.0,
    }
    return TrainedModel(linear_onnx(model), {"l2": l2}, metrics)


def load_trainer(reference: str) -> Trainer:
    """Resolve ``"module:function"`` (``function`` may be dotted: ``module:Class.method``) to a
    callable; INVALID with the reason when it cannot be imported or is not callable."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise invalid(f"trainer must be written 'module:function', got {reference!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise invalid(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise invalid(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise invalid(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise invalid(f"{reference!r} is not callable")
    return cast(Trainer, target)


def run_trainer(
    reference: str, x: Array, y: Array, params: dict[str, Any], seed: int
) -> TrainedModel:
    """Load and run a trainer, checking that it kept the contract (a TrainedModel with bytes)."""
    result = load_trainer(reference)(x, y, dict(params), seed)
    if not isinstance(result, TrainedModel) or not isinstance(result.onnx, bytes):
        raise invalid(f"trainer {reference!r} must return a TrainedModel with ONNX bytes")
    return result
