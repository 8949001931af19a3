"""Default trainers against independent references (scipy's optimiser, known ground truth),
their ONNX exports against numpy, and the trainer loading contract."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy.optimize import minimize

from lockgate.errors import ErrorKind, LockgateError
from lockgate.retrain.train import (
    TrainedModel,
    fit_linear,
    fit_logistic,
    linear_regression,
    load_trainer,
    logistic_regression,
    run_trainer,
    sigmoid,
)

Array = np.ndarray[Any, Any]
F = 6


def classification_data(rows: int, seed: int) -> tuple[Array, Array, Array]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, size=(rows, F)).astype(np.float32)
    truth = np.array([1.5, -2.0, 0.0, 0.7, 0.3, -1.0])
    p = sigmoid(x.astype(np.float64) @ truth - 0.4)
    return x, (rng.random(rows) < p).astype(np.float64), truth


def run(model: bytes, x: Array) -> dict[str, Array]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x}), strict=True))


def test_logistic_matches_scipy_on_the_same_objective() -> None:
    x, y, _ = classification_data(3000, 0)
    l2 = 0.01
    fit = fit_logistic(x, y, l2=l2)
    # The same objective, solved independently in raw space: mean log loss + l2/2 |w * std|^2
    # (the trainer penalises standardised weights, which are w * std).
    x64 = x.astype(np.float64)
    std = x64.std(axis=0)

    def objective(beta: Array) -> float:
        eta = x64 @ beta[:-1] + beta[-1]
        return float(
            np.mean(np.logaddexp(0, eta) - y * eta) + l2 / 2 * np.sum((beta[:-1] * std) ** 2)
        )

    ref = minimize(objective, np.zeros(F + 1), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(fit.weights, ref[:-1], atol=1e-4)
    assert fit.bias == pytest.approx(ref[-1], abs=1e-4)
    assert fit.converged


def test_logistic_accuracy_close_to_the_ground_truth() -> None:
    x, y, truth = classification_data(4000, 1)
    test_x, test_y, _ = classification_data(4000, 2)
    model = logistic_regression(x, y, {}, 0)
    predicted = run(model.onnx, test_x)["label"][:, 0]
    accuracy = float(np.mean(predicted == test_y))
    bayes = float(np.mean(((test_x @ truth - 0.4) > 0) == (test_y > 0.5)))
    assert accuracy > bayes - 0.02
    assert model.metrics["train_accuracy"] > bayes - 0.03
    assert model.params == {"l2": 1e-3, "max_iter": 100}


def test_logistic_onnx_equals_numpy_and_has_the_demo_schema() -> None:
    x, y, _ = classification_data(2000, 3)
    model = logistic_regression(x, y, {"l2": 0.1}, 0)
    fit = fit_logistic(x, y, l2=0.1)
    out = run(model.onnx, x)
    expected = sigmoid(fit.scores(x))
    np.testing.assert_allclose(out["probability"][:, 0], expected, atol=1e-5)
    clear = np.abs(expected - 0.5) > 1e-4
    np.testing.assert_array_equal(out["label"][clear, 0], (expected[clear] > 0.5).astype(np.int64))
    assert out["probability"].dtype == np.float32 and out["label"].dtype == np.int64

    proto = onnx.load_model_from_string(model.onnx)
    assert proto.ir_version == 8 and proto.opset_import[0].version == 17

    def schema(values: Any) -> list[tuple[str, int, list[int | str]]]:
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    assert schema(proto.graph.input) == [("input", onnx.TensorProto.FLOAT, ["batch", F])]
    assert schema(proto.graph.output) == [
        ("probability", onnx.TensorProto.FLOAT, ["batch", 1]),
        ("label", onnx.TensorProto.INT64, ["batch", 1]),
    ]


def test_training_is_deterministic() -> None:
    x, y, _ = classification_data(1000, 4)
    assert logistic_regression(x, y, {}, 0).onnx == logistic_regression(x, y, {}, 0).onnx


def test_separable_data_converges() -> None:
    x, _, truth = classification_data(1000, 5)
    y = ((x @ truth) > 0).astype(np.float64)
    model = logistic_regression(x, y, {}, 0)
    assert model.metrics["train_accuracy"] > 0.98
    assert np.isfinite(run(model.onnx, x)["probability"]).all()


def test_logistic_refuses_bad_labels() -> None:
    x, _, _ = classification_data(100, 6)
    with pytest.raises(LockgateError, match="labels 0 or 1"):
        logistic_regression(x, np.full(100, 2.0), {}, 0)
    with pytest.raises(LockgateError, match="both classes"):
        logistic_regression(x, np.ones(100), {}, 0)
    with pytest.raises(LockgateError, match=re.escape("trainer.params.l2 must be a number")):
        logistic_regression(x, np.arange(100) % 2.0, {"l2": -1}, 0)
    with pytest.raises(LockgateError, match=re.escape("unknown key 'trainer.params.depth'")):
        logistic_regression(x, np.arange(100) % 2.0, {"depth": 3}, 0)


def test_linear_regression_recovers_coefficients() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(1.0, 3.0, size=(3000, F)).astype(np.float32)
    truth = np.array([2.0, -1.0, 0.5, 0.0, 3.0, -0.25])
    y = x.astype(np.float64) @ truth + 1.5 + rng.normal(0, 0.01, 3000)
    fit = fit_linear(x, y)
    np.testing.assert_allclose(fit.weights, truth, atol=1e-3)
    assert fit.bias == pytest.approx(1.5, abs=5e-3)
    model = linear_regression(x, y, {}, 0)
    value = run(model.onnx, x)["value"]
    assert value.shape == (3000, 1) and value.dtype == np.float32
    np.testing.assert_allclose(value[:, 0], fit.scores(x), rtol=1e-5, atol=1e-4)
    assert model.metrics["train_r2"] > 0.999
    ridge = fit_linear(x, y, l2=10.0)
    assert np.linalg.norm(ridge.weights) < np.linalg.norm(fit.weights)


def test_load_trainer() -> None:
    assert load_trainer("lockgate.retrain.train:logistic_regression") is logistic_regression
    assert load_trainer("lockgate.retrain.train:TrainedModel") is TrainedModel
    cases = {
        "no_colon": "must be written 'module:function'",
        ":f": "must be written 'module:function'",
        "no_such_module_q:f": "cannot import module 'no_such_module_q'",
        "lockgate.retrain.train:missing": "has no attribute 'missing'",
        "lockgate.retrain.train:OPSET": "is not callable",
    }
    for reference, message in cases.items():
        with pytest.raises(LockgateError, match=message) as caught:
            load_trainer(reference)
        assert caught.value.kind is ErrorKind.INVALID


def returns_nothing(x: Array, y: Array, params: dict[str, Any], seed: int) -> None:
    return None


def test_run_trainer_checks_the_contract() -> None:
    x, y, _ = classification_data(200, 9)
    trained = run_trainer("lockgate.retrain.train:logistic_regression", x, y, {}, 0)
    assert isinstance(trained, TrainedModel)
    with pytest.raises(LockgateError, match="must return a TrainedModel"):
        run_trainer("tests.retrain.test_train:returns_nothing", x, y, {}, 0)
