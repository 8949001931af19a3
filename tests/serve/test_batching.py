"""Adaptive batching through real servers: every caller gets exactly its own rows, batches really
form under concurrency, overload sheds without waiting for the queue, deadlines are enforced
(with the model's runs held by the test where what is queued or running matters)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from lockgate.config import BatchConfig
from lockgate.control.registry import Registry
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config, model_executor
from tests.serve.conftest import Held
from tests.waiting import until


def _doc(rows: np.ndarray[Any, Any], name: str) -> bytes:
    tensor = {
        "name": name,
        "datatype": "FP32",
        "shape": list(rows.shape),
        "data": rows.ravel().tolist(),
    }
    return orjson.dumps({"inputs": [tensor]})


def _output(response: httpx.Response, name: str) -> np.ndarray[Any, Any]:
    out = {o["name"]: o for o in response.json()["outputs"]}[name]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


async def _concurrent_http(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.post(url, content=b) for b in bodies))


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(1, 9), min_size=64, max_size=64))
def test_64_concurrent_callers_get_exactly_their_rows(
    gateway: RunningGateway, sizes: list[int]
) -> None:
    # Row values encode (caller, row) so any mix-up between callers changes the answer.
    payloads = [
        np.array([[c * 100 + r + f / 10 for f in range(4)] for r in range(n)], dtype=np.float32)
        for c, n in enumerate(sizes)
    ]
    url = f"http://{gateway.http}/v2/models/scale/infer"
    responses = asyncio.run(_concurrent_http(url, [_doc(p, "x") for p in payloads]))
    for rows, resp in zip(payloads, responses, strict=True):
        assert resp.status_code == 200, resp.text
        np.testing.assert_array_equal(_output(resp, "y"), rows * 2)


def test_batches_of_several_requests_form_under_load(gateway: RunningGateway) -> None:
    stats = gateway.dataplane.batch_stats("mlp", "1")
    before = stats.multi_request_batches
    rng = np.random.default_rng(7)
    payloads = [
        rng.standard_normal((int(rng.integers(1, 5)), 32)).astype(np.float32) for _ in range(64)
    ]
    url = f"http://{gateway.http}/v2/models/mlp/infer"
    responses = asyncio.run(_concurrent_http(url, [_doc(p, "input") for p in payloads]))
    session = ort.InferenceSession(str(gateway.registry.latest("mlp").path / "model.onnx"))
    for rows, resp in zip(payloads, responses, strict=True):
        assert resp.status_code == 200, resp.text
        (want,) = session.run(["score"], {"input": rows})
        np.testing.assert_allclose(_output(resp, "score"), want, rtol=1e-5, atol=1e-7)
    assert stats.multi_request_batches > before
    assert stats.requests > stats.batches  # fewer model runs than requests


def test_grpc_concurrent_callers_get_their_rows(gateway: RunningGateway) -> None:
    async def run() -> None:
        async with grpc.aio.insecure_channel(gateway.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def call(c: int) -> None:
                rows = np.full((c % 5 + 1, 4), c, dtype=np.float32)
                req = pb.ModelInferRequest(model_name="scale")
                req.inputs.add(name="x", datatype="FP32", shape=list(rows.shape))
                req.raw_input_contents.append(rows.tobytes())
                resp = await stub.ModelInfer(req, timeout=30)
                got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(rows.shape)
                np.testing.assert_array_equal(got, rows * 2)

            await asyncio.gather(*(call(c) for c in range(64)))

    asyncio.run(run())


# -- a model whose runs the test holds, with a tiny queue -----------------------------------------
@pytest.fixture(scope="module")
def held_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One row per model run, four rows of queue, every run in the model executor (none inline
    on the event loop), so that holding the executor holds every run of the `held` model."""
    home = tmp_path_factory.mktemp("held-home")
    registry = Registry(home)
    registry.register(onnx_models.scale_model(home / "held.onnx"), "held")
    batch = BatchConfig(max_batch_rows=1, max_queue_rows=4, inline_threshold=0.0)
    with RunningGateway(loopback_config(home, batch=batch), registry) as gw:
        yield gw


def _body(timeout_us: int | None = None) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]
    }
    if timeout_us:
        doc["parameters"] = {"timeout": timeout_us}
    return orjson.dumps(doc)


async def _answered(tasks: list[asyncio.Task[Any]], count: int) -> None:
    await until(lambda: sum(t.done() for t in tasks) >= count, f"{count} answers")


def test_overload_sheds_at_once_and_accepted_requests_complete(
    held_gateway: RunningGateway,
) -> None:
    url = f"http://{held_gateway.http}/v2/models/held/infer"
    shed_before = held_gateway.dataplane.batch_stats("held", "1").shed

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        # One connection per request: a connection refused for overload and at once refused
        # again is read again only after a pause (serve/transport/shed.py).
        limits = httpx.Limits(max_connections=48, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            held = Held(model_executor(held_gateway.dataplane))
            try:
                calls = [asyncio.create_task(client.post(url, content=_body())) for _ in range(48)]
                # The queue takes four requests, and a fifth once the first has left it to run
                # (held): at least 43 are refused, answered while no accepted one can complete.
                await _answered(calls, 43)
                early = [c.result() for c in calls if c.done()]
            finally:
                held.release()
            return early, list(await asyncio.gather(*calls))

    early, every = asyncio.run(run())
    assert {r.status_code for r in early} == {503}
    ok = [r for r in every if r.status_code == 200]
    shed = [r for r in every if r.status_code == 503]
    assert len(ok) in (4, 5) and len(ok) + len(shed) == 48
    assert all(r.json()["outputs"][0]["data"] == [1.0] * 4 for r in ok)
    assert all(
        "overloaded" in r.json()["error"] and int(r.headers["retry-after"]) >= 1 for r in shed
    )
    assert held_gateway.dataplane.batch_stats("held", "1").shed - shed_before == len(shed)


def test_timeout_parameter_gives_504(held_gateway: RunningGateway) -> None:
    url = f"http://{held_gateway.http}/v2/models/held/infer"

    async def run() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=60) as client:
            held = Held(model_executor(held_gateway.dataplane))
            try:
                busy = [asyncio.create_task(client.post(url, content=_body())) for _ in range(3)]
                late = await client.post(url, content=_body(timeout_us=1000))  # cannot run
            finally:
                held.release()
            return late, list(await asyncio.gather(*busy))

    late, busy = asyncio.run(run())
    assert late.status_code == 504 and "deadline" in late.json()["error"]
    assert [r.status_code for r in busy] == [200] * 3


def test_bad_timeout_parameter_is_400(held_gateway: RunningGateway) -> None:
    url = f"http://{held_gateway.http}/v2/models/held/infer"
    r = httpx.post(url, content=_body(timeout_us=-5))
    assert r.status_code == 400 and "timeout" in r.json()["error"]


def test_grpc_deadline_exceeded(held_gateway: RunningGateway) -> None:
    def req() -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name="held")
        r.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        r.raw_input_contents.append(np.full(4, 0.5, np.float32).tobytes())
        return r

    async def run() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(held_gateway.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            held = Held(model_executor(held_gateway.dataplane))
            try:
                busy = [stub.ModelInfer(req(), timeout=30) for _ in range(3)]
                try:
                    await stub.ModelInfer(req(), timeout=0.002)  # cannot run in time
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                raise AssertionError("expected DEADLINE_EXCEEDED")
            finally:
                held.release()
                await asyncio.gather(*busy, return_exceptions=True)

    assert asyncio.run(run()) == grpc.StatusCode.DEADLINE_EXCEEDED
