"""API keys in real `lockgate serve` processes: a lone gateway reads its keys file again on
SIGHUP (a broken file leaves the keys as they were), and `--workers 2` all serve the same keys,
count each client once across workers on /metrics, and take new keys with a rolling restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from lockgate.control.registry import Registry
from tests import onnx_models
from tests.processes import GatewayProcess, start_gateway
from tests.waiting import wait_until

OLD, NEW = "old-client-key-0123456789", "new-client-key-9876543210"
BODY = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
)


def home_with_model(path: Path) -> Path:
    registry = Registry(path)
    registry.register(onnx_models.scale_model(path / "m.onnx"), "scale")
    return path


def infer(gw: GatewayProcess, key: str | None) -> int:
    """One request on a connection of its own (so that the kernel spreads them over workers)."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    url = f"{gw.base}/v2/models/scale/infer"
    return httpx.post(url, content=BODY, headers=headers, timeout=30).status_code


def client_counts(gw: GatewayProcess) -> dict[str, float]:
    text = httpx.get(f"http://{gw.admin}/metrics", timeout=30).text
    return {
        s.labels["client"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "lockgate_client_requests_total"
    }


def workers(gw: GatewayProcess) -> list[dict[str, object]]:
    doc = httpx.get(f"http://{gw.admin}/v1/state", timeout=30).json()
    return list(doc["serving"].get("workers", []))


def test_a_lone_gateway_reads_its_keys_again_on_sighup(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"app:{OLD}:infer\n")
    gw = start_gateway(home_with_model(tmp_path), "--api-keys-file", str(keys))
    try:
        assert "API keys (infer, feedback and model reads need one): app (infer)" in gw.output()
        assert OLD not in gw.output()
        assert (infer(gw, None), infer(gw, OLD)) == (401, 200)
        keys.write_text(f"# rotated\nnext:{NEW}:all\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_until(lambda: infer(gw, NEW) == 200, "the new key accepted")
        assert infer(gw, OLD) == 401
        keys.write_text("weak:tooshort-secret\n")  # a mistake: the keys stay as they were
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_until(lambda: "the API keys stay as they were" in gw.output(), "the refusal")
        assert "key 'weak' is shorter than 16 characters" in gw.output()
        assert "tooshort-secret" not in gw.output()
        assert infer(gw, NEW) == 200 and gw.proc.poll() is None
        assert client_counts(gw) == {"app": 1, "next": 2}  # old names keep their counts
    finally:
        gw.stop()


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_every_worker_serves_the_keys_and_counts_its_clients(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"app:{OLD}:infer\n")
    gw = start_gateway(
        home_with_model(tmp_path), "--workers", "2", "--grace", "5", "--api-keys-file", str(keys)
    )
    try:
        wait_until(lambda: len(workers(gw)) == 2, "two workers")
        outcomes = [infer(gw, OLD) for _ in range(30)] + [infer(gw, None) for _ in range(10)]
        assert outcomes == [200] * 30 + [401] * 10
        served = [int(w["requests"]) for w in workers(gw)]  # type: ignore[call-overload]
        assert all(n > 0 for n in served) and sum(served) == 40  # both answered, refused too
        assert client_counts(gw) == {"app": 30}  # both workers' counts, merged
        old_pids = {w["pid"] for w in workers(gw)}
        keys.write_text(f"next:{NEW}:infer\n")
        os.kill(gw.proc.pid, signal.SIGHUP)  # a rolling restart: new workers read the file
        wait_until(
            lambda: len(ws := workers(gw)) == 2 and not {w["pid"] for w in ws} & old_pids,
            "both workers replaced",
        )
        # until a replaced worker has exited it may still accept connections (old keys)
        wait_until(lambda: not any(running(int(p)) for p in old_pids), "the replaced workers gone")
        assert [infer(gw, NEW) for _ in range(10)] == [200] * 10
        assert [infer(gw, OLD) for _ in range(10)] == [401] * 10
        counts = client_counts(gw)
        assert counts["next"] == 10 and counts["app"] == 30  # the replaced workers' kept
    finally:
        gw.stop()
