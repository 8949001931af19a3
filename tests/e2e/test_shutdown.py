"""SIGTERM on a real `lockgate serve` process under load: every accepted request is answered,
the process exits 0, and nothing hangs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import orjson
import pytest

from lockgate.control.registry import Registry
from tests import onnx_models
from tests.processes import start_gateway


@pytest.fixture
def slow_home(tmp_path: Path) -> Path:
    Registry(tmp_path).register(onnx_models.slow_model(tmp_path / "slow.onnx"), "slow")
    return tmp_path


def test_sigterm_finishes_accepted_requests(slow_home: Path) -> None:
    # No bound on the queue's wait: every request of the burst is accepted, however slow the
    # machine runs the model.
    gateway = start_gateway(
        slow_home,
        *("--max-batch-rows", "1", "--max-queue-rows", "1000", "--max-queue-wait-ms", "0"),
        *("--grace", "30"),
    )
    proc, base = gateway.proc, gateway.base
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [0.1] * 1024}]}
    )

    async def run() -> tuple[list[httpx.Response], list[object]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            accepted = [
                asyncio.create_task(client.post("/v2/models/slow/infer", content=body))
                for _ in range(64)
            ]
            await asyncio.sleep(0.3)  # all 64 are on the server, most still queued behind the model
            os.kill(proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.2)
            late = await asyncio.gather(
                *(client.post("/v2/models/slow/infer", content=body) for _ in range(8)),
                return_exceptions=True,
            )
            return await asyncio.gather(*accepted), list(late)

    try:
        accepted, late = asyncio.run(run())
        assert [r.status_code for r in accepted] == [200] * 64
        for outcome in late:  # after SIGTERM: refused or answered, never hung
            assert isinstance(outcome, httpx.TransportError) or outcome.status_code in (200, 503)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "shutdown complete" in gateway.output()
