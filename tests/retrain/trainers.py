"""Trainers for the tests, importable by a reproduce subprocess (`tests.retrain.trainers:...`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lockgate.retrain.train import LinearModel, TrainedModel, fit_logistic, logistic_onnx


def noisy(x: Any, y: Any, params: dict[str, Any], seed: int) -> TrainedModel:
    """Ignores the seed: noise from the OS makes every run's model different."""
    fitted = fit_logistic(x, y, 1e-3, 100)
    noise = np.frombuffer(os.urandom(8 * fitted.weights.size), np.uint64) / 2.0**64 * 1e-3
    return TrainedModel(logistic_onnx(LinearModel(fitted.weights + noise, fitted.bias)), {}, {})
