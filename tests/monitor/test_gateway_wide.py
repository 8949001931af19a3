"""Wide and string inputs through a real gateway: an image model and a model with a string input,
registered with their reference data, show their derived features on /metrics, and brighter
images and a flood of new strings switch those features' drift alerts on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

SHAPE = (3, 32, 32)  # 3072 values per row: summarised


def images(rng: np.random.Generator, rows: int) -> np.ndarray[Any, Any]:
    level = rng.uniform(0.7, 1.3, size=(rows, 1, 1, 1))
    return np.clip(0.5 * level + rng.normal(0, 0.05, (rows, *SHAPE)), 0, 1).astype(np.float32)


WORDS = [f"word{i}" for i in range(30)]


def multi_rows(rng: np.random.Generator, rows: int, words: list[str]) -> dict[str, Any]:
    return {
        "a": rng.integers(0, 3, (rows, 2)),
        "b": rng.normal(size=(rows, 3)),
        "s": rng.choice(np.array(words, dtype=object), size=(rows, 1)),
    }


def drift_samples(gw: RunningGateway, model: str) -> dict[tuple[str, str], float]:
    """(feature, statistic or 'alert') -> value of the input-side drift metrics of `model`."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"http://{gw.admin}/metrics").text):
        for s in family.samples:
            if s.labels.get("model") != model or s.labels.get("side") != "input":
                continue
            if s.name == "lockgate_drift_score":
                out[(s.labels["feature"], s.labels["statistic"])] = s.value
            elif s.name == "lockgate_drift_alert":
                out[(s.labels["feature"], "alert")] = s.value
    return out


def infer(client: httpx.Client, model: str, inputs: list[dict[str, Any]]) -> None:
    r = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text


def test_derived_features_reach_metrics_and_alert(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    registry = Registry(tmp_path)
    reference = images(rng, 600).reshape(600, -1).astype(np.float64)  # raw pixels per row
    model = onnx_models.image_model(tmp_path / "image.onnx", SHAPE)
    registry.register(model, "image", reference=reference)
    multi = onnx_models.multi_io_model(tmp_path / "multi.onnx")
    registry.register(multi, "multi", reference=multi_rows(rng, 600, WORDS))
    monitor = MonitorConfig(drift_window_rows=200, drain_interval=0.05)
    with RunningGateway(loopback_config(tmp_path, monitor=monitor), registry) as gw:
        with httpx.Client(base_url=f"http://{gw.http}", timeout=30) as client:
            for _ in range(10):  # 200 brighter images
                x = images(rng, 20) * 1.2
                infer(client, "image", [_tensor("x", "FP32", x)])
            for _ in range(4):  # 200 rows, 40 % of them a string the reference never had
                rows = multi_rows(rng, 50, WORDS)
                rows["s"][:20] = "a flood of one new value"
                infer(client, "multi", [_tensor("a", "INT64", rows["a"]), *_rest(rows)])
        image = wait_until(
            lambda: (s := drift_samples(gw, "image")).get(("x:mean", "alert")) and s,
            "the image's brightness alert",
        )
        names = {feature for feature, _ in image}
        assert names == {"x:mean", "x:std", "x:l2", *(f"x:proj{i}" for i in range(8))}
        assert image[("x:l2", "alert")] == 1
        text = wait_until(
            lambda: (s := drift_samples(gw, "multi")).get(("s:hash", "alert")) and s,
            "the string input's new-value alert",
        )
        assert {"s:length", "s:empty", "s:hash", "a[0]", "b[2]"} <= {f for f, _ in text}
        assert text[("s:hash", "unseen_share")] > 0 or text[("s:hash", "chi2")] > 0
        assert text[("b[0]", "alert")] == 0  # untouched numeric features stay quiet


def _tensor(name: str, datatype: str, values: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(values.shape),
        "data": values.ravel().tolist(),
    }


def _rest(rows: dict[str, Any]) -> list[dict[str, Any]]:
    return [_tensor("b", "FP64", rows["b"]), _tensor("s", "BYTES", rows["s"].astype(object))]
