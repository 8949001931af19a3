"""Run in a fresh process by test_warm_up.py (its kernels must not have been called yet): start
a real gateway on a home, read every monitor kernel's compiled signatures once it is ready,
serve traffic until drift windows have closed by rows and by time (and wide FP32 and FP64
inputs, as JSON and as binary data), and read them again. Prints the readings as JSON on its
last line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.monitor.warmup import kernels
from tests.conftest import RunningGateway, loopback_config
from tests.monitor.test_gateway_wide import WORDS, _rest, _tensor, images, infer, multi_rows
from tests.waiting import wait_until

# A window closes at 200 rows; 300 rows leave 100 (min_rows) open, to be closed by time.
WINDOW_ROWS = 200
ROWS = 300
WIDE64 = 300  # values per row of the FP64 model's input: summarised
PIXELS = 3 * 48 * 48  # values per row of the UINT8 model's input: summarised through a sample


def readings() -> dict[str, Any]:
    """Per kernel: its compiled signatures, and how many it compiled or read from the cache."""
    return {
        name: {
            "signatures": sorted(str(s) for s in dispatcher.signatures),
            "compiled": sum(dispatcher.stats.cache_misses.values()),
            "cached": sum(dispatcher.stats.cache_hits.values()),
        }
        for name, dispatcher in kernels().items()
    }


def infer_binary(client: httpx.Client, model: str, datatype: str, values: Any) -> None:
    """One input "x" as binary data (decoded into a read-only array over the body)."""
    raw = values.tobytes()
    tensor = {"name": "x", "datatype": datatype, "shape": list(values.shape)}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
    r = client.post(
        f"/v2/models/{model}/infer",
        content=header.encode() + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text


def closed_by_time(gw: RunningGateway, model: str) -> bool:
    """Both a window closed by rows and one closed by time, on every side and jointly."""
    report = gw.call(gw.gateway.monitor.drift_report(model, "1"))  # type: ignore[union-attr]
    sides = [report[side] for side in ("inputs", "outputs", "joint") if report[side] is not None]
    return all(s["windows"] == 2 and s["last_window"]["closed_by"] == "time" for s in sides)


def main(home: Path) -> None:
    before = readings()
    monitor = MonitorConfig(
        drift_window_rows=WINDOW_ROWS, drift_window_seconds=0.5, drain_interval=0.05
    )
    with RunningGateway(loopback_config(home, monitor=monitor), Registry(home)) as gw:
        ready = readings()
        rng = np.random.default_rng(5)
        with httpx.Client(base_url=f"http://{gw.http}", timeout=30) as client:
            x = rng.normal(size=(ROWS, 4)).astype(np.float32)
            infer(client, "scale", [_tensor("x", "FP32", x)])
            rows = multi_rows(rng, ROWS, WORDS)
            infer(client, "multi", [_tensor("a", "INT64", rows["a"]), *_rest(rows)])
            wide: list[tuple[str, str, Callable[[int], Any]]] = [
                ("image", "FP32", lambda n: images(rng, n)),
                ("wide64", "FP64", lambda n: rng.normal(size=(n, WIDE64))),
                ("pixels", "UINT8", lambda n: rng.integers(0, 256, (n, PIXELS), dtype=np.uint8)),
            ]
            for model, datatype, values in wide:  # summarised in the model thread
                infer(client, model, [_tensor("x", datatype, values(3))])
                infer_binary(client, model, datatype, values(3))
        for model in ("scale", "multi"):
            wait_until(lambda m=model: closed_by_time(gw, m), f"{model}'s windows")
        after = readings()
    print(json.dumps({"before": before, "ready": ready, "after": after}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
