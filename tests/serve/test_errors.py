"""Bad input on both transports: one table of cases, each answered with the documented status and
a message naming the problem; the server stays up and the next valid request succeeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np
import orjson
import pytest

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway

GOOD = np.zeros((2, 16), dtype=np.float32)


@dataclass
class Case:
    id: str
    http_status: int
    grpc_code: grpc.StatusCode
    mentions: str  # the message must name the problem
    model: str = "classifier"
    version: str | None = None
    inputs: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "input", "datatype": "FP32", "shape": [2, 16], "data": GOOD}
        ]
    )
    outputs: list[str] | None = None


def _inp(**changes: Any) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [2, 16], "data": GOOD}
    base.update(changes)
    return [base]


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
CASES = [
    Case(
        "wrong-shape",
        400,
        INVALID,
        "shape",
        inputs=_inp(shape=[2, 8], data=np.zeros((2, 8), np.float32)),
    ),
    Case(
        "wrong-rank", 400, INVALID, "shape", inputs=_inp(shape=[32], data=np.zeros(32, np.float32))
    ),
    Case(
        "wrong-datatype",
        400,
        INVALID,
        "datatype",
        inputs=_inp(datatype="FP64", data=GOOD.astype(np.float64)),
    ),
    Case("short-data", 400, INVALID, "input", inputs=_inp(data=np.zeros(31, np.float32))),
    Case("unknown-input", 400, INVALID, "nope", inputs=_inp(name="nope")),
    Case("missing-input", 400, INVALID, "inputs", inputs=[]),
    Case("unknown-datatype", 400, INVALID, "datatype", inputs=_inp(datatype="FP8")),
    Case("unknown-model", 404, NOT_FOUND, "no-such-model", model="no-such-model"),
    Case("unknown-version", 404, NOT_FOUND, "version", version="99"),
    Case("unknown-output", 400, INVALID, "nope", outputs=["nope"]),
]


# -- HTTP encoding of a case ------------------------------------------------------------------
def _http_doc(case: Case) -> dict[str, Any]:
    inputs = []
    for t in case.inputs:
        data = t["data"]
        inputs.append(
            {**t, "data": data.ravel().tolist() if isinstance(data, np.ndarray) else data}
        )
    doc: dict[str, Any] = {"inputs": inputs}
    if case.outputs:
        doc["outputs"] = [{"name": n} for n in case.outputs]
    return doc


def _url(gw: RunningGateway, model: str = "classifier", version: str | None = None) -> str:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    return f"http://{gw.http}{path}/infer"


def _assert_http_still_serves(gw: RunningGateway) -> None:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
    r = httpx.post(_url(gw), content=orjson.dumps(doc))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_http_bad_request(gateway: RunningGateway, case: Case) -> None:
    r = httpx.post(_url(gateway, case.model, case.version), content=orjson.dumps(_http_doc(case)))
    assert r.status_code == case.http_status, r.text
    assert case.mentions in r.json()["error"]
    _assert_http_still_serves(gateway)


# -- gRPC encoding of a case ------------------------------------------------------------------
def _grpc_request(case: Case) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=case.model, model_version=case.version or "")
    for t in case.inputs:
        tensor = req.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        del tensor
        data = t["data"]
        req.raw_input_contents.append(np.ascontiguousarray(data).tobytes())
    for name in case.outputs or ():
        req.outputs.add(name=name)
    return req


@pytest.fixture(scope="module")
def stub(gateway: RunningGateway) -> Any:
    channel = grpc.insecure_channel(gateway.grpc)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _assert_grpc_still_serves(stub: Any) -> None:
    req = pb.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(np.zeros(16, np.float32).tobytes())
    assert len(stub.ModelInfer(req, timeout=10).raw_output_contents) == 2


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_grpc_bad_request(gateway: RunningGateway, stub: Any, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_grpc_request(case), timeout=10)
    assert info.value.code() == case.grpc_code, info.value.details()
    assert case.mentions in (info.value.details() or "")
    _assert_grpc_still_serves(stub)


def test_grpc_malformed_protobuf(gateway: RunningGateway, stub: Any) -> None:
    with grpc.insecure_channel(gateway.grpc) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff garbage", timeout=10)
    assert info.value.code() == INVALID
    assert "malformed" in (info.value.details() or "")
    _assert_grpc_still_serves(stub)


def test_grpc_data_length_mismatch_names_tensor(gateway: RunningGateway, stub: Any) -> None:
    req = pb.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="input", datatype="FP32", shape=[2, 16])
    req.raw_input_contents.append(b"\x00" * 10)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req, timeout=10)
    assert info.value.code() == INVALID and "input" in (info.value.details() or "")


# -- HTTP-only wire problems ------------------------------------------------------------------
def _binary_body(declared: int, actual: int) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    )
    return head + b"\x00" * actual, {"inference-header-content-length": str(len(head))}


RAW_HTTP_CASES = [
    ("malformed-json", b'{"inputs": [', {}, 400, "JSON"),
    ("not-an-object", b"[1, 2]", {}, 400, "object"),
    ("empty-body", b"", {}, 400, "empty"),
    ("malformed-msgpack", b"\xc1\xc1", {"content-type": "application/msgpack"}, 400, "msgpack"),
    (
        "header-length-beyond-body",
        b'{"inputs": []}',
        {"inference-header-content-length": "999"},
        400,
        "beyond",
    ),
    (
        "header-length-not-a-number",
        b"{}",
        {"inference-header-content-length": "x"},
        400,
        "Inference-Header",
    ),
    ("binary-size-mismatch", *_binary_body(declared=64, actual=10), 400, "binary"),
    ("binary-trailing-bytes", *_binary_body(declared=64, actual=80), 400, "binary"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "mentions"),
    [c[1:] for c in RAW_HTTP_CASES],
    ids=[c[0] for c in RAW_HTTP_CASES],
)
def test_http_malformed_body(
    gateway: RunningGateway, body: bytes, headers: dict[str, str], status: int, mentions: str
) -> None:
    r = httpx.post(_url(gateway), content=body, headers=headers)
    assert r.status_code == status, r.text
    # errors come back in the request's encoding
    if "msgpack" in headers.get("content-type", ""):
        assert r.headers["content-type"] == "application/msgpack"
        assert mentions in msgpack.unpackb(r.content)["error"]
    else:
        assert mentions in r.json()["error"]
    _assert_http_still_serves(gateway)


def test_http_oversized_body_is_413(demo_home: Any) -> None:
    from lockgate.control.registry import Registry
    from tests.conftest import loopback_config

    with RunningGateway(loopback_config(demo_home, max_body_bytes=1024), Registry(demo_home)) as gw:
        doc = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [64, 16], "data": [0.0] * 1024}
            ]
        }
        r = httpx.post(_url(gw), content=orjson.dumps(doc))
        assert r.status_code == 413 and "limit" in r.json()["error"]
        _assert_http_still_serves(gw)


def test_http_unknown_route_is_json_404(gateway: RunningGateway) -> None:
    r = httpx.get(f"http://{gateway.http}/v2/nothing/here")
    assert r.status_code == 404 and "no route" in r.json()["error"]


def test_msgpack_round_trip(gateway: RunningGateway) -> None:
    rows = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    doc = {
        "id": "m1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [5, 16], "data": rows.tobytes()}],
    }
    r = httpx.post(
        _url(gateway), content=msgpack.packb(doc), headers={"content-type": "application/msgpack"}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/msgpack")
    out = msgpack.unpackb(r.content)
    assert out["id"] == "m1"
    probs = {o["name"]: o for o in out["outputs"]}["probability"]
    got = np.frombuffer(probs["data"], np.float32).reshape(probs["shape"])
    ref = httpx.post(
        _url(gateway),
        content=orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [5, 16],
                        "data": rows.ravel().tolist(),
                    }
                ]
            }
        ),
    )
    want = {o["name"]: o for o in ref.json()["outputs"]}["probability"]["data"]
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-6)


def test_raw_binary_single_input_form(gateway: RunningGateway) -> None:
    rows = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    r = httpx.post(
        _url(gateway), content=rows.tobytes(), headers={"inference-header-content-length": "0"}
    )
    assert r.status_code == 200, r.text
    assert {o["name"]: o for o in r.json()["outputs"]}["probability"]["shape"] == [3, 1]
    bad = httpx.post(
        _url(gateway), content=b"\x00" * 10, headers={"inference-header-content-length": "0"}
    )
    assert bad.status_code == 400 and "rows" in bad.json()["error"]
