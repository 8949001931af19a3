"""The demo models: seeded (same bytes every build), registered once, and doing what they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from lockgate.control.registry import Registry
from lockgate.demo import build_demo_models, classifier_data, ensure_demo_models


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_builds_are_reproducible(tmp_path: Path) -> None:
    a = build_demo_models(tmp_path / "a")
    b = build_demo_models(tmp_path / "b")
    files = [(m.file.name, m.file.read_bytes()) for versions in a for m in versions]
    assert files == [(m.file.name, m.file.read_bytes()) for versions in b for m in versions]
    assert [m.name for versions in a for m in versions] == [
        "classifier",
        "classifier",
        "regressor",
        "mlp",
    ]


def test_ensure_registers_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = ensure_demo_models(registry)
    assert [(i.name, i.version) for i in first] == [
        ("classifier", "1"),
        ("classifier", "2"),
        ("regressor", "1"),
        ("mlp", "1"),
    ]
    assert ensure_demo_models(registry) == []
    assert registry.load_reference(registry.get("classifier", "2")) is not None


def test_classifier_learns_the_ground_truth(tmp_path: Path) -> None:
    (classifier, _), *_ = build_demo_models(tmp_path)
    x, y = classifier_data(np.random.default_rng(99), 5000)  # fresh data, same distribution
    probability, label = _session(classifier.file).run(None, {"input": x})
    assert probability.shape == (5000, 1) and label.dtype == np.int64
    np.testing.assert_array_equal(label[:, 0], (probability[:, 0] > 0.5).astype(np.int64))
    assert ((label[:, 0] == y).mean()) > 0.75  # the Bayes rate of this data is about 0.83


def test_regressor_and_mlp_shapes(tmp_path: Path) -> None:
    built = {versions[0].name: versions[0] for versions in build_demo_models(tmp_path)}
    (value,) = _session(built["regressor"].file).run(None, {"input": np.zeros((3, 8), np.float32)})
    assert value.shape == (3, 1)
    (score,) = _session(built["mlp"].file).run(None, {"input": np.ones((5, 32), np.float32)})
    assert score.shape == (5, 1) and np.isfinite(score).all()
