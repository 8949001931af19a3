"""The gRPC servicer without a server: its methods called with real protobuf requests on a real
pipeline (registry, onnxruntime), next to the HTTP app (in-process ASGI) answering the same
requests. The context is a stand-in that records what the servicer tells it (abort codes,
trailing metadata); everything behind it is real."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from grpc_health.v1 import health_pb2

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.route import sticky_bucket
from lockgate.serve.transport.grpc_service import (
    SERVICE,
    STATUS,
    InferenceService,
    _guarded,
    _Health,
)
from lockgate.types import InferRequest, InferResponse
from lockgate.web import STATUS as HTTP_STATUS
from tests.serve.conftest import Held, serve_config
from tests.serve.transport.conftest import (
    Context,
    Counting,
    Transports,
    http_outputs,
    json_body,
    outputs_of,
    scale_request,
    transports_for,
)
from tests.waiting import until


# -- inference ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [True, False], ids=["raw-contents", "typed-contents"])
async def test_model_infer_answers_as_http_does(t: Transports, raw: bool) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    answer = await t.infer(scale_request(x, raw=raw))
    assert isinstance(answer, pb.ModelInferResponse), answer.details
    assert (answer.model_name, answer.model_version, answer.id) == ("scale", "2", "req-7")
    got = outputs_of(answer)
    np.testing.assert_array_equal(got["y"], 2 * x)  # y = 2x, computed here on its own
    http = await t.http.post("/v2/models/scale/infer", content=json_body(x))
    assert http.status_code == 200, http.text
    doc = http.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("scale", "2", "req-7")
    np.testing.assert_array_equal(http_outputs(doc)["y"], got["y"])
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        (o["name"], o["datatype"], o["shape"]) for o in doc["outputs"]
    ]
    assert answer.parameters["variant"].string_param == doc["parameters"]["variant"] == "stable"


async def test_datatypes_and_requested_outputs(t: Transports) -> None:
    a = np.array([[1, -2], [2**40, 7]], np.int64)
    b = np.array([[0.5, -1.5, 3.0], [1e-3, 2.0, -0.25]])
    s = np.array([[b"caf\xc3\xa9"], [b""]], dtype=object)
    request = pb.ModelInferRequest(model_name="multi")
    request.inputs.add(name="a", datatype="INT64", shape=[2, 2]).contents.int64_contents.extend(
        a.ravel().tolist()
    )
    request.inputs.add(name="b", datatype="FP64", shape=[2, 3]).contents.fp64_contents.extend(
        b.ravel().tolist()
    )
    request.inputs.add(name="s", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend(
        s.ravel().tolist()
    )
    request.outputs.add(name="b_squared")
    request.outputs.add(name="s_out")
    request.outputs.add(name="a_plus_one")
    got = outputs_of(await t.infer(request))
    assert list(got) == ["b_squared", "s_out", "a_plus_one"]  # in the order asked for
    np.testing.assert_array_equal(got["a_plus_one"], a + 1)
    np.testing.assert_array_equal(got["b_squared"], b * b)
    assert got["s_out"].tolist() == s.tolist()
    tensors = [
        {"name": "a", "datatype": "INT64", "shape": [2, 2], "data": a.ravel().tolist()},
        {"name": "b", "datatype": "FP64", "shape": [2, 3], "data": b.ravel().tolist()},
        {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": ["café", ""]},
    ]
    outputs = [{"name": n} for n in ("b_squared", "s_out", "a_plus_one")]
    body = orjson.dumps({"inputs": tensors, "outputs": outputs})
    doc = (await t.http.post("/v2/models/multi/infer", content=body)).json()
    assert [o["name"] for o in doc["outputs"]] == list(got)
    http = http_outputs(doc)
    np.testing.assert_array_equal(http["a_plus_one"], got["a_plus_one"])
    np.testing.assert_array_equal(http["b_squared"], got["b_squared"])
    assert http["s_out"].ravel().tolist() == ["café", ""]


async def test_a_routing_key_in_metadata_picks_the_sticky_variant(t: Transports) -> None:
    x = np.ones((1, 4), np.float32)
    seen = set()
    for i in range(24):
        key = f"customer-{i}"
        expected = "stable" if sticky_bucket(key) < 5000 else "canary"  # 50/50, in order
        answer = await t.infer(scale_request(x, "split"), Context((("x-lockgate-key", key),)))
        variant = answer.parameters["variant"].string_param
        http = await t.http.post(
            "/v2/models/split/infer", content=json_body(x), headers={"x-lockgate-key": key}
        )
        assert variant == http.headers["x-lockgate-variant"] == expected, key
        assert answer.model_version == ("1" if expected == "stable" else "2")
        seen.add(variant)
    assert seen == {"stable", "canary"}


async def test_an_explicit_version_is_served_by_that_version(t: Transports) -> None:
    x = np.ones((2, 4), np.float32)
    answer = await t.infer(scale_request(x, version="1"))
    assert answer.model_version == "1" and "variant" not in answer.parameters
    np.testing.assert_array_equal(outputs_of(answer)["y"], 2 * x)


# -- errors: the same kind gives the same status on both transports ----------------------------
def test_every_error_kind_has_a_grpc_status() -> None:
    assert set(STATUS) == set(ErrorKind)
    assert STATUS[ErrorKind.OVERLOADED] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert STATUS[ErrorKind.DEADLINE] is grpc.StatusCode.DEADLINE_EXCEEDED


# (gRPC request, HTTP body, kind, message, failures the transports count: the pipeline counts
# those it can charge to a version itself; a gRPC message too malformed to name its model is
# not counted at all)
CASES = {
    "malformed-protobuf": (
        b"\xff\xff\xff",
        b"{",
        ErrorKind.INVALID,
        "malformed",
        [("scale", "http", "invalid")],
    ),
    "unknown-model": (
        scale_request(np.ones((1, 4)), "nope"),
        json_body(np.ones((1, 4))),
        ErrorKind.NOT_FOUND,
        "unknown model 'nope'",
        [("nope", "grpc", "not_found"), ("nope", "http", "not_found")],
    ),
    "wrong-shape": (
        scale_request(np.ones((2, 3))),
        json_body(np.ones((2, 3))),
        ErrorKind.INVALID,
        "input 'x': shape [2, 3] does not match the model's [-1, 4] (-1 = any)",
        [("scale", "grpc", "invalid"), ("scale", "http", "invalid")],  # refused while decoding
    ),
    "unknown-version": (
        scale_request(np.ones((1, 4)), version="9"),
        json_body(np.ones((1, 4))),
        ErrorKind.NOT_FOUND,
        "unknown version '9' of model 'scale'",
        [("scale", "grpc", "not_found"), ("scale", "http", "not_found")],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_client_errors_abort_with_the_status_of_their_kind(t: Transports, case: str) -> None:
    grpc_request, http_body, kind, message, counted = CASES[case]
    aborted = await t.infer(grpc_request)
    assert isinstance(aborted, Context)
    assert aborted.code is STATUS[kind] and message in aborted.details
    model = "nope" if case == "unknown-model" else "scale"
    path = f"/v2/models/{model}" + ("/versions/9" if case == "unknown-version" else "") + "/infer"
    http = await t.http.post(path, content=http_body)
    assert http.status_code == HTTP_STATUS[kind] and message in http.json()["error"]
    assert t.pipeline.failures == counted


async def test_a_failing_model_is_internal_and_counted_once(t: Transports) -> None:
    request = pb.ModelInferRequest(model_name="lookup")
    request.inputs.add(name="i", datatype="INT64", shape=[2])
    request.raw_input_contents.append(np.array([1, 99], np.int64).tobytes())
    aborted = await t.infer(request)
    assert isinstance(aborted, Context)
    assert aborted.code is grpc.StatusCode.INTERNAL and "lookup v1 failed" in aborted.details
    body = orjson.dumps(
        {"inputs": [{"name": "i", "datatype": "INT64", "shape": [2], "data": [1, 99]}]}
    )
    http = await t.http.post("/v2/models/lookup/infer", content=body)
    assert http.status_code == 500 and "lookup v1 failed" in http.json()["error"]
    # counted by the pipeline, where the version is known, not again by the transports
    assert t.pipeline.failures == []


async def test_a_deadline_that_has_passed_is_deadline_exceeded(t: Transports) -> None:
    aborted = await t.infer(scale_request(np.ones((1, 4))), Context(remaining=0.0))
    assert isinstance(aborted, Context) and aborted.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_unexpected_error_is_internal_without_details(t: Transports) -> None:
    class Broken(Counting):
        async def infer(self, request: InferRequest) -> InferResponse:
            raise RuntimeError("a bug")

    broken = Broken(t.pipeline.pipeline)
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await _guarded(InferenceService(broken).ModelInfer)(
            scale_request(np.ones((1, 4))).SerializeToString(), context
        )
    assert context.code is grpc.StatusCode.INTERNAL and context.details == "internal server error"
    assert broken.failures == [("scale", "grpc", "internal")]


async def test_a_full_queue_sheds_with_a_retry_hint(home: Path) -> None:
    config = serve_config(home, max_batch_rows=1, max_queue_rows=2)
    async for t in transports_for(config):
        x = np.ones((1, 4), np.float32)
        sent: list[asyncio.Task[Any]] = []

        def full(t: Transports = t, sent: list[asyncio.Task[Any]] = sent) -> bool:
            """Whether admission refuses now; if not, one more request (none can finish while
            the model runs are held, so the queue fills)."""
            try:
                t.pipeline.admit("scale", None)
            except LockgateError as exc:
                return exc.kind is ErrorKind.OVERLOADED
            sent.append(asyncio.create_task(t.infer(scale_request(np.ones((1, 4))))))
            return False

        held = Held(t.executor)
        try:
            await until(full, "a full queue")
            aborted = await t.infer(scale_request(x))
            http = await t.http.post("/v2/models/scale/infer", content=json_body(x))
        finally:
            held.release()
        assert isinstance(aborted, Context)
        assert aborted.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in aborted.details
        ((name, value),) = aborted.trailing
        hint = float(value)
        assert name == "retry-after" and hint >= 0  # the queue's estimated drain time
        assert http.status_code == 503 and "overloaded" in http.json()["error"]
        assert http.headers["retry-after"] == str(max(1, math.ceil(hint)))
        answers = await asyncio.gather(*sent)
        served = [a for a in answers if isinstance(a, pb.ModelInferResponse)]
        assert len(served) == 3  # one running and two queued when admission refused
        for answer in served:
            np.testing.assert_array_equal(outputs_of(answer)["y"], 2 * x)
        shed = [a for a in answers if not isinstance(a, pb.ModelInferResponse)]
        assert all(a.code is grpc.StatusCode.RESOURCE_EXHAUSTED for a in shed)


# -- health and metadata ----------------------------------------------------------------------
async def test_health_and_metadata_agree_with_http(t: Transports) -> None:
    assert (await t.call("ServerLive", pb.ServerLiveRequest())).live
    assert (await t.call("ServerReady", pb.ServerReadyRequest())).ready
    assert (await t.http.get("/v2/health/ready")).status_code == 200
    ready = await t.call("ModelReady", pb.ModelReadyRequest(name="scale", version="1"))
    assert ready.ready and (await t.http.get("/v2/models/scale/versions/1/ready")).json()["ready"]
    server = await t.call("ServerMetadata", pb.ServerMetadataRequest())
    doc = (await t.http.get("/v2")).json()
    assert (server.name, server.version, list(server.extensions)) == (
        doc["name"],
        doc["version"],
        doc["extensions"],
    )
    meta = await t.call("ModelMetadata", pb.ModelMetadataRequest(name="multi"))
    doc = (await t.http.get("/v2/models/multi")).json()
    assert meta.name == doc["name"] == "multi" and list(meta.versions) == doc["versions"] == ["1"]
    assert meta.platform == doc["platform"]
    for side in ("inputs", "outputs"):
        assert [(i.name, i.datatype, list(i.shape)) for i in getattr(meta, side)] == [
            (i["name"], i["datatype"], i["shape"]) for i in doc[side]
        ]
    assert [i.name for i in meta.inputs] == ["a", "b", "s"]
    missing = await t.call("ModelMetadata", pb.ModelMetadataRequest(name="nope"))
    assert isinstance(missing, Context) and missing.code is grpc.StatusCode.NOT_FOUND
    assert (await t.http.get("/v2/models/nope")).status_code == 404


async def test_the_health_service_follows_readiness(t: Transports) -> None:
    health = _Health(t.pipeline)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", SERVICE):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), Context())
        assert answer.status == serving
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await health.Check(health_pb2.HealthCheckRequest(service="other"), context)
    assert context.code is grpc.StatusCode.NOT_FOUND
    t.pipeline.begin_shutdown()  # load balancers must stop sending
    answer = await health.Check(health_pb2.HealthCheckRequest(), Context())
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not (await t.call("ServerReady", pb.ServerReadyRequest())).ready
    assert (await t.http.get("/v2/health/ready")).status_code == 503
