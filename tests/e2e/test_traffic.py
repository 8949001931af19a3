"""Traffic management end to end on a real gateway process: weighted splits on HTTP and gRPC,
sticky keys, blue-green flips under load, shadows that never touch the primary, and a state
database that survives `kill -9` during a stream of admin writes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from lockgate.config import BatchConfig
from lockgate.control import traffic
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.demo import ensure_demo_models
from lockgate.serve.route import sticky_bucket
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config, model_executor, pin_versions
from tests.processes import GatewayProcess, RawHTTP, start_gateway
from tests.serve.conftest import Held
from tests.waiting import until, wait_until

BODY = orjson.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}
)
N = 20_000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("traffic-home")
    registry = Registry(home)
    ensure_demo_models(registry)
    registry.register(onnx_models.scale_model(home / "scale.onnx"), "scale")
    slow = onnx_models.slow_model(home / "slow.onnx", features=16, names=("input", "probability"))
    registry.register(slow, "slowshadow")
    registry.register(slow, "slowshadow")  # v2 is what the implicit endpoint serves
    gw = start_gateway(home, "--ungated-max-percent", "100")  # the policy is tested elsewhere
    yield gw
    gw.stop()


def put_endpoint(
    gw: GatewayProcess, name: str, *variants: tuple[str, str, float], **extra: Any
) -> None:
    body = {
        "variants": [
            {"name": n, "model": "classifier", "version": v, "weight": w} for n, v, w in variants
        ],
        **extra,
    }
    r = httpx.put(f"http://{gw.admin}/v1/endpoints/{name}", json=body, timeout=30)
    assert r.status_code == 200, r.text


def admin_post(gw: GatewayProcess, path: str, body: Any) -> httpx.Response:
    r = httpx.post(f"http://{gw.admin}{path}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r


def _split_pvalue(counts: dict[str, int], weights: dict[str, float]) -> float:
    observed = [counts.get(v, 0) for v in weights]
    expected = [sum(observed) * w / 100 for w in weights.values()]
    assert sum(observed) == N
    return float(stats.chisquare(observed, expected).pvalue)


def assert_split(sample: Callable[[], dict[str, int]], weights: dict[str, float]) -> None:
    """N requests split as `weights` say, by a chi-square test at p = 0.001. A fair split fails
    that test once in a thousand samples, so a failing sample is followed by one fresh sample,
    which must pass: two failures in a row (one in a million when fair) mean a real bias."""
    counts = sample()
    if _split_pvalue(counts, weights) <= 0.001:
        again = sample()
        assert _split_pvalue(again, weights) > 0.001, (counts, again)


def test_weighted_split_over_http(gateway: GatewayProcess) -> None:
    put_endpoint(gateway, "split-http", ("stable", "1", 90), ("canary", "2", 10))

    async def worker(n: int, counts: Counter[str]) -> None:
        conn = await RawHTTP.connect(gateway.http)
        for _ in range(n):
            status, headers, body = await conn.post("/v2/models/split-http/infer", BODY)
            assert status == 200
            variant = headers["x-lockgate-variant"]
            answer = orjson.loads(body)
            assert answer["parameters"]["variant"] == variant
            assert answer["model_version"] == {"stable": "1", "canary": "2"}[variant]
            counts[variant] += 1
        await conn.close()

    async def run() -> Counter[str]:
        counts: Counter[str] = Counter()
        await asyncio.gather(*(worker(N // 32, counts) for _ in range(32)))
        return counts

    assert_split(lambda: asyncio.run(run()), {"stable": 90, "canary": 10})


def _grpc_request(endpoint: str, key: str | None = None) -> Any:
    req = pb.ModelInferRequest(model_name=endpoint, raw_input_contents=[b"\0" * 64])
    req.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    if key is not None:
        req.parameters["routing_key"].string_param = key
    return req


def test_weighted_split_over_grpc(gateway: GatewayProcess) -> None:
    put_endpoint(gateway, "split-grpc", ("stable", "1", 90), ("canary", "2", 10))
    request = _grpc_request("split-grpc")

    def sample() -> Counter[str]:
        counts: Counter[str] = Counter()
        with grpc.insecure_channel(gateway.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(N // 100):  # 100 calls in flight at a time
                futures = [stub.ModelInfer.future(request, timeout=30) for _ in range(100)]
                for future in futures:
                    reply = future.result()
                    variant = reply.parameters["variant"].string_param
                    assert reply.model_version == {"stable": "1", "canary": "2"}[variant]
                    counts[variant] += 1
        return counts

    assert_split(sample, {"stable": 90, "canary": 10})


def test_sticky_keys_on_both_transports(gateway: GatewayProcess) -> None:
    put_endpoint(gateway, "sticky", ("stable", "1", 50), ("canary", "2", 50))
    url = f"http://{gateway.http}/v2/models/sticky/infer"
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        seen: set[str] = set()
        for key in (f"user-{i}" for i in range(40)):
            http = {
                httpx.post(url, content=BODY, headers={"x-lockgate-key": key}).headers[
                    "x-lockgate-variant"
                ]
                for _ in range(3)
            }
            via_param = stub.ModelInfer(_grpc_request("sticky", key), timeout=10)
            via_meta = stub.ModelInfer(
                _grpc_request("sticky"), metadata=[("x-lockgate-key", key)], timeout=10
            )
            variants = http | {
                via_param.parameters["variant"].string_param,
                via_meta.parameters["variant"].string_param,
            }
            assert len(variants) == 1, (key, variants)
            # the documented mapping: the key's bucket decides, stable owns buckets 0..4999
            (variant,) = variants
            assert variant == ("stable" if sticky_bucket(key) < 5000 else "canary"), key
            seen.add(variant)
    assert seen == {"stable", "canary"}  # keys really are split, not all on one variant


def test_blue_green_flip_under_load(gateway: GatewayProcess) -> None:
    put_endpoint(gateway, "flip", ("blue", "1", 100), ("green", "2", 0))
    results: list[tuple[float, float, int, str]] = []  # sent, answered, status, variant
    marks: dict[str, float] = {}
    callers, after_switch = 200, 5

    async def caller() -> None:
        conn = await RawHTTP.connect(gateway.http)
        mine = 0  # answers to requests sent after the switch
        while mine < after_switch:
            sent = time.monotonic()
            status, headers, _ = await conn.post("/v2/models/flip/infer", BODY)
            results.append((sent, time.monotonic(), status, headers.get("x-lockgate-variant", "")))
            mine += "switched" in marks and sent > marks["switched"]
        await conn.close()

    async def operator() -> None:
        await until(lambda: len(results) >= 2 * callers, "traffic before the switch")
        async with httpx.AsyncClient(base_url=f"http://{gateway.admin}", timeout=30) as admin:
            marks["asked"] = time.monotonic()
            r = await admin.post("/v1/endpoints/flip/switch", json={"variant": "green"})
            assert r.status_code == 200, r.text
        marks["switched"] = time.monotonic()

    async def run() -> None:
        tasks = [operator(), *(caller() for _ in range(callers))]
        await asyncio.wait_for(asyncio.gather(*tasks), 300)

    asyncio.run(run())
    assert [status for _, _, status, _ in results if status != 200] == []
    before = {variant for _, answered, _, variant in results if answered < marks["asked"]}
    after = [variant for sent, _, _, variant in results if sent > marks["switched"]]
    assert before == {"blue"}  # answered before the switch was asked for
    assert len(after) >= callers * after_switch and set(after) == {"green"}


def _primary(gw: GatewayProcess, n: int) -> list[Any]:
    outputs = []
    with httpx.Client(base_url=f"http://{gw.http}", timeout=30) as client:
        for _ in range(n):
            r = client.post("/v2/models/shadowed/infer", content=BODY)
            assert r.status_code == 200
            outputs.append(r.json()["outputs"])
    return outputs


def _shadow_stats(gw: GatewayProcess, variant: str) -> dict[str, Any]:
    serving = httpx.get(f"http://{gw.admin}/v1/state").json()["serving"]
    return next(s for s in serving["shadows"] if s["variant"] == variant)


def test_shadows_never_change_the_primary(gateway: GatewayProcess) -> None:
    """The answers stay the primary's, and every copy is accounted for. (That the primary never
    waits for its copy is tested where the copy can be held: tests/serve/test_shadow.py.)"""
    put_endpoint(gateway, "shadowed", ("stable", "2", 100))
    baseline = _primary(gateway, 30)
    admin_post(
        gateway,
        "/v1/endpoints/shadowed/shadows",
        {"variant": "slow", "model": "slowshadow", "version": "1"},
    )
    with_shadow = _primary(gateway, 60)
    assert with_shadow == baseline[:1] * 60  # the same answer, every time

    def accounted() -> dict[str, Any] | None:
        s = _shadow_stats(gateway, "slow")
        return s if s["requests"] + s["failed"] + s["shed"] == 60 else None

    s = wait_until(accounted, "every shadow copy to be answered, shed or failed", interval=0.1)
    assert s["requests"] > 0  # the first copy meets an idle shadow: never shed
    assert s["disagreeing_rows"] == s["rows"]  # a different model: every row differs
    httpx.delete(f"http://{gateway.admin}/v1/endpoints/shadowed/shadows/slow", timeout=30)


def test_failing_shadow_does_not_fail_the_primary(gateway: GatewayProcess) -> None:
    put_endpoint(gateway, "shadowed-bad", ("stable", "2", 100))
    admin_post(
        gateway,
        "/v1/endpoints/shadowed-bad/shadows",
        {"variant": "broken", "model": "scale", "version": "1"},
    )
    with httpx.Client(base_url=f"http://{gateway.http}", timeout=30) as client:
        for _ in range(20):
            assert client.post("/v2/models/shadowed-bad/infer", content=BODY).status_code == 200

    def accounted() -> dict[str, Any] | None:
        s = _shadow_stats(gateway, "broken")
        return s if s["failed"] + s["shed"] == 20 else None

    assert wait_until(accounted, "every shadow copy to fail or be shed")["requests"] == 0


def test_kill_9_during_admin_writes_leaves_a_consistent_database(tmp_path: Path) -> None:
    ensure_demo_models(Registry(tmp_path))
    gw = start_gateway(tmp_path, "--ungated-max-percent", "100")  # not the subject here
    proc, admin = gw.proc, gw.admin
    acknowledged: list[int] = []
    body = {
        "variants": [
            {"name": "a", "model": "classifier", "version": "1", "weight": 50},
            {"name": "b", "model": "classifier", "version": "2", "weight": 50},
        ]
    }

    def writer() -> None:
        # A generous timeout: a write slowed by a busy machine is not a kill (the kill resets
        # the connection at once).
        with httpx.Client(base_url=f"http://{admin}", timeout=60) as client:
            assert client.put("/v1/endpoints/kill", json=body).status_code == 200
            i = 0
            while True:
                i += 1
                weights = {"a": i % 100, "b": 100 - i % 100}
                try:
                    r = client.post("/v1/endpoints/kill/weights", json={"weights": weights})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    acknowledged.append(r.json()["revision"])

    thread = threading.Thread(target=writer)
    thread.start()
    wait_until(lambda: len(acknowledged) > 10, "acknowledged writes")  # killed mid-stream
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    thread.join(10)
    assert len(acknowledged) > 10
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (revision,) = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
    audited = [r for (r,) in db.execute("SELECT revision FROM audit ORDER BY id")]
    assert audited == list(range(1, revision + 1))  # every change whole, none half-written
    assert set(acknowledged) <= set(audited)  # nothing acknowledged was lost
    (spec,) = db.execute("SELECT spec FROM endpoints WHERE name = 'kill'").fetchone()
    assert sum(v["weight"] for v in orjson.loads(spec)["variants"]) == 100


def test_a_change_made_elsewhere_is_served(gateway: GatewayProcess) -> None:
    """Another process (another worker's admin API, the retrain worker) writes the database:
    this gateway notices the new revision by itself."""
    put_endpoint(gateway, "elsewhere", ("blue", "1", 100), ("green", "2", 0))
    home = Path(gateway.proc.args[gateway.proc.args.index("--home") + 1])
    store = StateStore(home)
    registry = Registry(home)
    catalog = traffic.Catalog(
        {name: frozenset(v.version for v in registry.versions(name)) for name in registry.models()}
    )
    store.apply(
        traffic.switch("elsewhere", "green", catalog), actor="other", expected_revision=None
    )
    with httpx.Client(base_url=gateway.base, timeout=10) as client:

        def variant() -> str:
            answer = client.post("/v2/models/elsewhere/infer", content=BODY)
            return answer.headers["x-lockgate-variant"]

        wait_until(lambda: variant() == "green", "the new revision to be served")


@pytest.fixture(scope="module")
def held_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway in this process, whose model runs a test can hold: one row per run, every run
    in the model executor. scale v2 is pinned, so that moving traffic to it loads nothing."""
    home = tmp_path_factory.mktemp("held-traffic-home")
    registry = Registry(home)
    for _ in range(2):
        registry.register(onnx_models.scale_model(home / "scale.onnx"), "scale")
    pin_versions(home, ("scale", "2"))
    batch = BatchConfig(max_batch_rows=1, inline_threshold=0.0)
    with RunningGateway(loopback_config(home, batch=batch), registry) as gw:
        yield gw


def test_a_version_is_released_only_after_its_in_flight_requests(
    held_gateway: RunningGateway,
) -> None:
    gw = held_gateway
    old = {"name": "old", "model": "scale", "version": "1", "weight": 100}
    new = {"name": "new", "model": "scale", "version": "2", "weight": 100}
    r = httpx.put(f"http://{gw.admin}/v1/endpoints/draining", json={"variants": [old]})
    assert r.status_code == 200, r.text
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    )

    async def queued_on_old(admin: httpx.AsyncClient) -> float:
        families = text_string_to_metric_families((await admin.get("/metrics")).text)
        return next(
            s.value
            for f in families
            for s in f.samples
            if s.name == "lockgate_queue_rows" and s.labels == {"model": "scale", "version": "1"}
        )

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        conns = [await RawHTTP.connect(gw.http) for _ in range(24)]
        async with httpx.AsyncClient(base_url=f"http://{gw.admin}", timeout=30) as admin:
            held = Held(model_executor(gw.dataplane))
            try:
                calls = [
                    asyncio.create_task(c.post("/v2/models/draining/infer", body)) for c in conns
                ]
                # every request is on the old version: one running (held), 23 queued
                await until(lambda: _is(queued_on_old(admin), 23), "23 queued requests")
                switched = await admin.put("/v1/endpoints/draining", json={"variants": [new]})
                assert switched.status_code == 200, switched.text
                # traffic has moved; the old version's requests cannot have finished yet
                assert not any(c.done() for c in calls)
            finally:
                held.release()
            answers = await asyncio.gather(*calls)
        for c in conns:
            await c.close()
        return answers

    answers = asyncio.run(run())
    # answered by the version traffic moved away from: it was released only after them
    assert [(status, headers["x-lockgate-variant"]) for status, headers, _ in answers] == [
        (200, "old")
    ] * 24
    assert all(orjson.loads(b)["outputs"][0]["data"] == [2, 4, 6, 8] for _, _, b in answers)
    wait_until(
        lambda: {"model": "scale", "version": "1"} not in _loaded(gw.admin),
        "the unused version to be released",
    )
    answer = httpx.post(f"http://{gw.http}/v2/models/draining/infer", content=body)
    assert answer.headers["x-lockgate-variant"] == "new"


async def _is(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


def _loaded(admin: str) -> list[dict[str, str]]:
    return httpx.get(f"http://{admin}/v1/state").json()["serving"]["loaded"]  # type: ignore[no-any-return]
