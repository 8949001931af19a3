"""SIGTERM on a real `lockgate serve` process under load: every accepted request is answered,
the process exits 0, and nothing hangs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate.control.registry import Registry
from tests import onnx_models
from tests.processes import start_gateway
from tests.waiting import until


@pytest.fixture
def slow_home(tmp_path: Path) -> Path:
    Registry(tmp_path).register(onnx_models.slow_model(tmp_path / "slow.onnx"), "slow")
    return tmp_path


ROWS = 16  # per request: a model run of tens of milliseconds (24 layers of 1024 x 1024)
REQUESTS = 64


def _metric(admin: str, name: str, **labels: str) -> float:
    text = httpx.get(f"http://{admin}/metrics", timeout=30).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_sigterm_finishes_accepted_requests(slow_home: Path) -> None:
    # No bound on the queue's wait: every request of the burst is accepted, however slow the
    # machine runs the model.
    gateway = start_gateway(
        slow_home,
        *("--max-batch-rows", str(ROWS), "--max-queue-rows", "100000"),
        *("--max-queue-wait-ms", "0", "--grace", "60"),
    )
    proc, base = gateway.proc, gateway.base
    data = np.full((ROWS, 1024), 0.1, np.float32)
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [ROWS, 1024], "data": data.tolist()}
            ]
        }
    )

    def all_on_the_server() -> bool:
        """Every request answered or queued (one may be running), and some still queued."""
        queued = _metric(gateway.admin, "lockgate_queue_rows", model="slow") / ROWS
        done = _metric(gateway.admin, "lockgate_requests_total", model="slow")
        if queued == 0 and done == REQUESTS:
            raise AssertionError("every request was answered before SIGTERM could be sent")
        return queued > 0 and queued + done >= REQUESTS - 1

    async def run() -> tuple[list[httpx.Response], list[object]]:
        limits = httpx.Limits(max_connections=REQUESTS)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            accepted = [
                asyncio.create_task(client.post("/v2/models/slow/infer", content=body))
                for _ in range(REQUESTS)
            ]
            await until(lambda: asyncio.to_thread(all_on_the_server), "every request queued")
            os.kill(proc.pid, signal.SIGTERM)
            await until(lambda: "shutting down" in gateway.output(), "the shutdown to begin")
            late = await asyncio.gather(
                *(client.post("/v2/models/slow/infer", content=body) for _ in range(8)),
                return_exceptions=True,
            )
            return await asyncio.gather(*accepted), list(late)

    try:
        accepted, late = asyncio.run(run())
        assert [r.status_code for r in accepted] == [200] * REQUESTS
        for outcome in late:  # after SIGTERM: refused or answered, never hung
            assert isinstance(outcome, httpx.TransportError) or outcome.status_code in (200, 503)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "shutdown complete" in gateway.output()
