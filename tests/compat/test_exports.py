"""Real converters' exports: registered, loaded, served through the data plane, and equal to
onnxruntime run directly on the exported file with the same inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError
from lockgate.model_config import ModelConfig
from lockgate.monitor.metrics import render_metrics
from tests.compat import exports
from tests.compat.conftest import infer, onnxruntime_run, serving, zipmap_to_matrix

Array = np.ndarray[Any, Any]


def close(got: Array, want: Any) -> None:
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("string_labels", [False, True])
async def test_skl2onnx_default_classifier_serves_zipmap_as_probabilities(
    tmp_path: Path, string_labels: bool
) -> None:
    model, x = exports.skl_classifier(zipmap=True, string_labels=string_labels)
    info = Registry(tmp_path).register(model, "clf")
    labels = ("low", "mid", "high") if string_labels else (0, 1, 2)
    prob = info.spec.output("output_probability")
    assert prob is not None and prob.datatype == "FP32" and prob.shape == (-1, 3)
    assert set(prob.labels) == set(labels)  # in the classifier's own order
    meta = orjson.loads((info.path / "meta.json").read_bytes())
    (doc,) = [o for o in meta["outputs"] if o["name"] == "output_probability"]
    assert doc["labels"] == list(prob.labels) and meta["conversions"]
    want = onnxruntime_run(model, {"X": x})
    async with serving(tmp_path) as ctl:
        got = await infer(ctl, "clf", {"X": x})
    close(got["output_probability"], zipmap_to_matrix(want["output_probability"], prob.labels))
    if string_labels:  # tensor(string) outputs come back as BYTES: UTF-8 bytes
        assert got["output_label"].tolist() == [s.encode() for s in want["output_label"]]
    else:
        np.testing.assert_array_equal(got["output_label"], want["output_label"])


async def test_skl2onnx_classifier_without_zipmap(tmp_path: Path) -> None:
    model, x = exports.skl_classifier(zipmap=False)
    info = Registry(tmp_path).register(model, "clf")
    assert not info.conversions and all(not o.labels for o in info.spec.outputs)
    want = onnxruntime_run(model, {"X": x})
    async with serving(tmp_path) as ctl:
        got = await infer(ctl, "clf", {"X": x})
        assert ctl.models.loaded[("clf", "1")].spec.batchable
    np.testing.assert_array_equal(got["label"], want["label"])
    close(got["probabilities"], want["probabilities"])


async def test_string_column_pipeline_loads_without_and_with_a_warmup_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, inputs = exports.skl_string_pipeline()
    registry = Registry(tmp_path)
    registry.register(model, "bare")  # warms up on made-up strings, which the encoder refuses
    registry.register(model, "warm", warmup=inputs)
    want = onnxruntime_run(model, inputs)
    labels = registry.latest("warm").spec.output("output_probability")
    assert labels is not None and labels.labels == (0, 1)
    with caplog.at_level(logging.WARNING):
        async with serving(tmp_path) as ctl:
            for name in ("bare", "warm"):
                got = await infer(ctl, name, inputs)
                np.testing.assert_array_equal(got["output_label"], want["output_label"])
                close(
                    got["output_probability"],
                    zipmap_to_matrix(want["output_probability"], labels.labels),
                )
            assert ctl.models.loaded[("warm", "1")].runner.warmup_source == "warm-up file"
            assert ctl.models.loaded[("warm", "1")].runner.probe.ran  # type: ignore[union-attr]
            bad = dict(inputs, city=np.array([[b"Z\xfcrich"]] * 6, dtype=object))
            with pytest.raises(LockgateError) as refused:
                await infer(ctl, "warm", bad)
    assert refused.value.kind is ErrorKind.INVALID
    assert "input 'city'" in refused.value.message and "UTF-8" in refused.value.message
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("bare v1: the warm-up on synthetic data failed" in m for m in warned)
    assert not any("warm v1: the warm-up" in m for m in warned)


async def test_lightgbm_label_declared_one_is_served_and_monitored_as_returned(
    tmp_path: Path,
) -> None:
    model, x = exports.lightgbm_classifier()
    info = Registry(tmp_path).register(model, "gbm")
    assert info.spec.output("label").shape == (1,)  # type: ignore[union-attr]  # as declared
    want = onnxruntime_run(model, {"input": x})
    async with serving(tmp_path) as ctl:
        got = await infer(ctl, "gbm", {"input": x})
        await infer(ctl, "gbm", {"input": x[:2]})
        loaded = ctl.models.loaded[("gbm", "1")]
        assert ctl.monitor is not None
        await ctl.monitor.drain()
        vm = ctl.monitor.versions[("gbm", "1")]
        assert loaded.batcher.stats.observer_errors == 0
        assert vm.rows == len(x) + 2 and loaded.recorder is not None
        assert loaded.recorder.ring.mismatched == 0 and loaded.recorder.unfollowed == []
        assert vm.recent is not None
        column = loaded.recorder.output_features.index("label")
        np.testing.assert_array_equal(
            vm.recent.outputs[: len(x), column], want["label"].astype(np.float32)
        )
        np.testing.assert_array_equal(vm.recent.inputs[: len(x)], x)
    np.testing.assert_array_equal(got["label"], want["label"])
    close(got["probabilities"], want["probabilities"])


async def test_xgboost_and_a_tree_regressor(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    xgb, x_xgb = exports.xgboost_classifier()
    forest, x_forest = exports.skl_tree_regressor()
    registry.register(xgb, "xgb")
    registry.register(forest, "forest")
    want_xgb = onnxruntime_run(xgb, {"input": x_xgb})
    want_forest = onnxruntime_run(forest, {"X": x_forest})
    async with serving(tmp_path) as ctl:
        got_xgb = await infer(ctl, "xgb", {"input": x_xgb})
        got_forest = await infer(ctl, "forest", {"X": x_forest})
    np.testing.assert_array_equal(got_xgb["label"], want_xgb["label"])
    close(got_xgb["probabilities"], want_xgb["probabilities"])
    close(got_forest["variable"], want_forest["variable"])


async def test_cnn_with_dynamic_height_and_width(tmp_path: Path) -> None:
    model, images = exports.cnn_dynamic_sides()
    Registry(tmp_path).register(model, "cnn")
    async with serving(tmp_path) as ctl:
        for image in images:
            got = await infer(ctl, "cnn", {"image": image})
            close(got["features"], onnxruntime_run(model, {"image": image})["features"])
        recorder = ctl.models.loaded[("cnn", "1")].recorder
        assert recorder is not None
        assert recorder.output_features == [f"features[{i}]" for i in range(4)]
        assert [u.split()[0] for u in recorder.unfollowed] == ["image"]  # no fixed width
        snapshot = await ctl.snapshot()
        assert snapshot.versions[("cnn", "1")].unfollowed == 1
    text = render_metrics(snapshot).decode()
    assert 'lockgate_monitor_unfollowed_tensors{model="cnn",version="1"} 1.0' in text
    assert 'lockgate_monitor_mismatched_rows_total{model="cnn",version="1"} 0.0' in text


async def test_fp16_model(tmp_path: Path) -> None:
    model, x = exports.fp16_model()
    Registry(tmp_path).register(model, "half")
    async with serving(tmp_path) as ctl:
        got = await infer(ctl, "half", {"x": x})
    assert got["y"].dtype == np.float16
    np.testing.assert_array_equal(got["y"], onnxruntime_run(model, {"x": x})["y"])


async def test_scalar_and_state_inputs_run_each_request_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, inputs = exports.scalar_and_state_model()
    registry = Registry(tmp_path)
    registry.register(model, "vad")  # synthetic warm-up: sr = 0, which the model refuses
    registry.register(model, "vad-warm", warmup=inputs, config=ModelConfig(warmup_samples=1))
    with pytest.raises(LockgateError) as refused:  # a warm-up file must run
        registry.register(model, "vad-bad", warmup=dict(inputs, sr=np.array(0, np.int64)))
    assert "fails on its warm-up data" in refused.value.message
    want = onnxruntime_run(model, inputs)
    with caplog.at_level(logging.WARNING):
        async with serving(tmp_path) as ctl:
            for name in ("vad", "vad-warm"):
                got = await infer(ctl, name, inputs)
                close(got["prob"], want["prob"])
                close(got["stateN"], want["stateN"])
                loaded = ctl.models.loaded[(name, "1")]
                assert not loaded.spec.batchable
                assert loaded.recorder is not None and loaded.recorder.input_features == ["sr"]
            # the state carried to the next request
            following = dict(inputs, state=got["stateN"], sr=np.array(8000, np.int64))
            got = await infer(ctl, "vad-warm", following)
            close(got["stateN"], onnxruntime_run(model, following)["stateN"])
    warned = [r.getMessage() for r in caplog.records]
    assert any("vad v1: the warm-up on synthetic data failed" in m for m in warned)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            exports.zipmap_feeding_another_node,
            [
                "output 'output_probability'",
                "seq(map(int64,tensor(float)))",
                "options={'zipmap': False}",
            ],
        ),
        (
            exports.sequence_output_model,
            ["output 'parts'", "seq(tensor(float))", "serves tensors only"],
        ),
        (
            exports.bfloat16_output_model,
            ["output 'y'", "tensor(bfloat16)", "cast it in the graph"],
        ),
    ],
)
def test_a_model_that_cannot_be_served_is_refused_with_the_fix(
    tmp_path: Path, build: Any, expected: list[str]
) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(LockgateError) as refused:
        registry.register(build(), "nope")
    assert refused.value.kind is ErrorKind.INVALID
    for part in expected:
        assert part in refused.value.message
    assert registry.models() in ([], ["nope"]) and registry.versions("nope") == []
