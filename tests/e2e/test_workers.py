"""`lockgate serve --workers 2` as real processes: both workers serve the shared ports, /metrics
on the admin listener counts every request exactly once, route changes reach every worker, a
killed worker is replaced, and a rolling restart under load loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from lockgate.control import traffic
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from tests import onnx_models
from tests.conftest import catalog
from tests.processes import GatewayProcess, RawHTTP, start_gateway
from tests.waiting import wait_until

GRPC_CLIENTS = 8  # concurrent calls on several connections, as a busy client fleet makes
BODY = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    registry = Registry(tmp_path)
    registry.register(onnx_models.scale_model(tmp_path / "m1.onnx"), "scale")
    registry.register(onnx_models.scale_model(tmp_path / "m2.onnx"), "scale")
    gw = start_gateway(
        tmp_path, "--workers", "2", "--grace", "10", "--ungated-max-percent", "100"
    )  # the policy is not the subject here
    try:
        _wait(lambda: len(_workers(gw)) == 2, "both workers")
        yield gw
    finally:
        gw.stop()


def _wait(check: Callable[[], object], what: str) -> None:
    wait_until(check, what, timeout=120)


def _workers(gw: GatewayProcess) -> list[dict[str, object]]:
    doc = httpx.get(f"http://{gw.admin}/v1/state", timeout=10).json()
    return list(doc["serving"].get("workers", []))


def _metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"http://{gw.admin}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def _fresh_connection_requests(
    address: str, count: int, concurrency: int = 8
) -> list[int | str]:
    """`count` requests, each on a new connection (so the kernel spreads them over workers):
    one outcome each, the status or the name of the connection error."""
    outcomes: list[int | str] = []

    async def one() -> None:
        try:
            conn = await RawHTTP.connect(address)
            try:
                status, _, _ = await conn.post("/v2/models/scale/infer", BODY)
                outcomes.append(status)
            finally:
                with contextlib.suppress(OSError):  # the answer, if any, is already counted
                    await conn.close()
        except (OSError, asyncio.IncompleteReadError) as exc:
            outcomes.append(type(exc).__name__)

    for start in range(0, count, concurrency):
        await asyncio.gather(*(one() for _ in range(min(concurrency, count - start))))
    return outcomes


def _http_load(address: str, outcomes: list[int | str], stop: threading.Event) -> None:
    """Batches of 8 fresh-connection requests until `stop`."""

    async def run() -> None:
        while not stop.is_set():
            outcomes.extend(await _fresh_connection_requests(address, 8, 8))

    asyncio.run(run())


def test_both_workers_serve_and_metrics_count_every_request_once(
    gateway: GatewayProcess,
) -> None:
    statuses = asyncio.run(_fresh_connection_requests(gateway.http, 400))
    client = grpcclient.InferenceServerClient(gateway.grpc)
    for _ in range(50):
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("scale", [inp])
    client.close()
    assert statuses == [200] * 400
    served = {w["index"]: w["requests"] for w in _workers(gateway)}
    assert sorted(served) == [0, 1]
    assert all(int(n) > 0 for n in served.values()), served  # type: ignore[call-overload]
    assert sum(int(n) for n in served.values()) == 450  # type: ignore[call-overload]
    assert _metric(gateway, "lockgate_requests_total", outcome="ok", protocol="http") == 400
    assert _metric(gateway, "lockgate_requests_total", outcome="ok", protocol="grpc") == 50
    assert _metric(gateway, "lockgate_worker_processes") == 2
    # the monitor's figures merge too: every row reaches some worker's ring and sketch
    _wait(lambda: _metric(gateway, "lockgate_predlog_rows_total") == 450, "every row drained")
    assert _metric(gateway, "lockgate_request_latency_seconds_count") == 450
    # each worker logs under its own name
    assert "[worker 0]" in gateway.output() and "[worker 1]" in gateway.output()


def test_a_route_change_reaches_every_worker(gateway: GatewayProcess) -> None:
    home = Path(gateway.log).parent
    # through the admin API: the answer comes once every worker has applied the change
    switched = httpx.post(
        f"http://{gateway.admin}/v1/endpoints/scale/canary",
        json={"model": "scale", "version": 1, "weight": 30},
        timeout=30,
    )
    assert switched.status_code == 200, switched.text
    revision = switched.json()["revision"]
    assert [w["revision"] for w in _workers(gateway)] == [revision, revision]
    # written straight to the state database (another replica, the CLI): each worker's watcher
    store = StateStore(home)
    state = store.apply(
        traffic.set_weights("scale", {"canary": 50, "stable": 50}, catalog(Registry(home))),
        actor="tests",
        expected_revision=None,
    )
    _wait(
        lambda: {w["revision"] for w in _workers(gateway)} == {state.revision},
        "every worker's watcher to apply the new revision",
    )
    store.close()


def test_a_killed_worker_is_restarted_while_the_other_keeps_serving(
    gateway: GatewayProcess,
) -> None:
    victim = next(w for w in _workers(gateway) if w["index"] == 0)
    outcomes: list[int | str] = []
    stop = threading.Event()

    thread = threading.Thread(target=_http_load, args=(gateway.http, outcomes, stop))
    thread.start()
    try:
        _wait(lambda: len(outcomes) >= 16, "the load to flow")
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        before = len(outcomes)
        _wait(lambda: len(outcomes) > before + 200, "more answers")  # the other worker answers
        _wait(
            lambda: any(w["index"] == 0 and w["pid"] != victim["pid"] for w in _workers(gateway)),
            "worker 0's successor",
        )
    finally:
        stop.set()
        thread.join(60)
    # Only requests the dead worker had already accepted die with it (at most one batch of 8
    # is in flight); connections still waiting in its queue are answered by its successor.
    lost = [o for o in outcomes if o != 200]
    assert len(lost) <= 8 and set(lost) <= {"ConnectionResetError", "IncompleteReadError"}, lost
    assert _metric(gateway, "lockgate_worker_restarts_total") == 1
    assert "worker 0" in gateway.output() and "died with exit code -9" in gateway.output()


def test_rolling_restart_under_load_drops_no_request(gateway: GatewayProcess) -> None:
    old = {w["index"]: w["pid"] for w in _workers(gateway)}
    http_outcomes: list[int | str] = []
    grpc_failures: list[str] = []
    grpc_ok = 0
    lock = threading.Lock()
    stop = threading.Event()

    def grpc_load() -> None:
        nonlocal grpc_ok
        client = grpcclient.InferenceServerClient(gateway.grpc)  # a connection of its own
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        while not stop.is_set():
            try:
                client.infer("scale", [inp], client_timeout=30)
                with lock:
                    grpc_ok += 1
            except Exception as exc:
                grpc_failures.append(str(exc))
        client.close()

    threads = [
        threading.Thread(target=_http_load, args=(gateway.http, http_outcomes, stop)),
        *(threading.Thread(target=grpc_load) for _ in range(GRPC_CLIENTS)),
    ]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(http_outcomes) >= 16 and grpc_ok >= 16, "the load to flow")
        gateway.proc.send_signal(signal.SIGHUP)
        _wait(
            lambda: (
                all(old[w["index"]] != w["pid"] for w in _workers(gateway))
                and len(_workers(gateway)) == 2
            ),
            "two new workers",
        )
        _wait(lambda: "rolling restart complete" in gateway.output(), "the restart to complete")
        after = (len(http_outcomes), grpc_ok)  # and the new workers serve both protocols
        _wait(lambda: len(http_outcomes) > after[0] + 16 and grpc_ok > after[1] + 16, "load")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    # Each replaced worker handed its gRPC clients over before stopping (serve/handover.py):
    # gRPC core would otherwise cancel calls that reached it but not yet their handler.
    assert grpc_failures == [] and grpc_ok > 0
    assert gateway.output().count("gRPC handover: 1 listener(s) closed, no connection left") == 2
    assert set(http_outcomes) == {200}, {o for o in http_outcomes if o != 200}
    # the replaced workers' final figures are kept: the totals are still exact
    http_ok = _metric(gateway, "lockgate_requests_total", outcome="ok", protocol="http")
    assert (
        http_ok,
        _metric(gateway, "lockgate_requests_total", outcome="ok", protocol="grpc"),
    ) == (
        len(http_outcomes),
        grpc_ok,
    )
    assert _metric(gateway, "lockgate_worker_restarts_total") == 0


def test_sigterm_stops_every_worker(gateway: GatewayProcess) -> None:
    pids = [int(w["pid"]) for w in _workers(gateway)]  # type: ignore[call-overload]
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=40) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert gateway.output().count("shutdown complete") == 2
    assert "all workers stopped" in gateway.output()
