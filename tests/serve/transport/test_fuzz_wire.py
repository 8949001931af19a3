"""Hostile requests through the real listeners (uvicorn and grpc.aio on loopback): real requests
mutated byte by byte, hostile headers and paths, and the reported regressions by name. Whatever
arrives, the answer is a success or a client error with a body that names it; never a 5xx or
INTERNAL, and the gateway keeps serving."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.serve.transport import protobuf_codec
from lockgate.serve.transport.tensors import DATATYPES, raw_from_array
from tests.conftest import RunningGateway
from tests.serve.transport.strategies import CONTENT_TYPES, fuzz_settings, hostile_shapes

ROW = [0.25] * 16
CLASSIFIER = {"name": "input", "datatype": "FP32", "shape": [1, 16]}
MULTI = [  # the `multi` test model: INT64 [-1, 2], FP64 [-1, 3], BYTES [-1, 1]
    {"name": "a", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]},
    {"name": "b", "datatype": "FP64", "shape": [1, 3], "data": [0.5, 1.5, 2.5]},
    {"name": "s", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]},
]


def _binary(entry: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{**entry, "parameters": {"binary_data_size": len(blob)}}]})
    return head.encode() + blob, {"inference-header-content-length": str(len(head))}


FORMS = ("json", "binary", "raw", "msgpack")
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BYTES": object}


def _encode(entries: list[dict[str, Any]], form: str) -> tuple[bytes, dict[str, str]]:
    """A request body of `form` for `entries` (inputs with JSON `data`)."""
    if form == "json":
        return json.dumps({"inputs": entries}).encode(), {"content-type": "application/json"}
    blobs = [_raw(e) for e in entries]
    if form == "raw":
        return blobs[0], {"inference-header-content-length": "0"}
    if form == "msgpack":
        inputs = [{**e, "data": b} for e, b in zip(entries, blobs, strict=True)]
        return msgpack.packb({"inputs": inputs}), {"content-type": "application/msgpack"}
    heads = [
        {k: v for k, v in e.items() if k != "data"} | {"parameters": {"binary_data_size": len(b)}}
        for e, b in zip(entries, blobs, strict=True)
    ]
    head = json.dumps({"inputs": heads}).encode()
    return head + b"".join(blobs), {"inference-header-content-length": str(len(head))}


def _raw(entry: dict[str, Any]) -> bytes:
    data = entry["data"]
    if entry["datatype"] == "BYTES":
        data = [x.encode() for x in data]
    return raw_from_array(np.asarray(data, _DTYPES.get(entry["datatype"], object)))


@st.composite
def mutated_entries(draw: st.DrawFn, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inputs of a valid request with one or two fields made hostile."""
    out = [dict(e) for e in entries]
    for _ in range(draw(st.integers(0, 2))):
        entry = draw(st.sampled_from(out))
        field = draw(st.sampled_from(["shape", "shape", "datatype", "name", "data"]))
        if field == "shape":
            entry["shape"] = draw(hostile_shapes)
        elif field == "datatype":
            entry["datatype"] = draw(st.sampled_from(sorted(DATATYPES)))
        elif field == "name":
            entry["name"] = draw(st.sampled_from(["input", "a", "b", "s", "nope"]))
        else:
            entry["data"] = entry["data"][: draw(st.integers(0, len(entry["data"])))]
    return out


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` with a few bytes flipped, cut, inserted, or a long digit run spliced in."""
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "digits"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
        elif op == "cut":
            body = body[:at]
        elif op == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
        else:
            digits = str(draw(st.sampled_from([0, 65, 2**27, 2**31, 2**63, 2**64, 10**30])))
            body = body[:at] + digits.encode() + body[at:]
    return body


@pytest.fixture(scope="module")
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{gateway.http}", timeout=30) as client:
        yield client


def _assert_client_error_or_success(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.content[:300])
    if r.status_code >= 400:
        doc = msgpack.unpackb(r.content) if "msgpack" in r.headers["content-type"] else r.json()
        assert doc["error"]


SEEDS = [("classifier", [{**CLASSIFIER, "data": ROW}]), ("multi", MULTI)]


@fuzz_settings(400, seconds=10)
@given(
    seed=st.sampled_from(SEEDS),
    form=st.sampled_from(FORMS),
    data=st.data(),
    content_type=st.one_of(st.none(), st.sampled_from(CONTENT_TYPES)),
    header_length=st.one_of(
        st.none(), st.sampled_from(["0", "1", "-1", "+7", "1e3", "9" * 30, "²"])
    ),
    path=st.sampled_from(["", "/versions/1", "/versions/99", "/versions/%2e%2e"]),
)
def test_mutated_http_requests(
    http: httpx.Client,
    seed: tuple[str, list[dict[str, Any]]],
    form: str,
    data: st.DataObject,
    content_type: str | None,
    header_length: str | None,
    path: str,
) -> None:
    model, entries = seed
    entries = data.draw(mutated_entries(entries))
    try:
        body, headers = _encode(entries, form)
    except (ValueError, TypeError, AttributeError):  # data the new datatype cannot encode
        body, headers = _encode(seed[1], form)
    if content_type is not None:
        headers["content-type"] = content_type
    if header_length is not None:
        headers["inference-header-content-length"] = header_length
    body = data.draw(mutated(body))
    raw = {k: v.encode() for k, v in headers.items()}  # '²' is not ASCII: send its UTF-8 bytes
    r = http.post(f"/v2/models/{model}{path}/infer", content=body, headers=raw)
    _assert_client_error_or_success(r)


def _message(model: str, entries: list[dict[str, Any]], raw: bool) -> bytes:
    """A serialized ModelInferRequest for `entries`: raw contents, or typed where the data fits
    the (possibly mutated) datatype's field."""
    msg = pb.ModelInferRequest(model_name=model)
    for entry in entries:
        shape = [min(d, 2**63 - 1) for d in entry["shape"]]  # int64 on the wire
        tensor = msg.inputs.add(name=entry["name"], datatype=entry["datatype"], shape=shape)
        if raw:
            msg.raw_input_contents.append(_raw(entry))
            continue
        field = protobuf_codec.CONTENTS_FIELD.get(entry["datatype"], "fp32_contents")
        values = [v.encode() if isinstance(v, str) else v for v in entry["data"]]
        with contextlib.suppress(TypeError, ValueError):  # else the contents stay empty
            getattr(tensor.contents, field).extend(values)
    return msg.SerializeToString()


CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def infer_bytes(gateway: RunningGateway) -> Iterator[Any]:
    with grpc.insecure_channel(gateway.grpc) as channel:
        yield channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


def _grpc_code(call: Any, body: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        call(body, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@fuzz_settings(400, seconds=10)
@given(seed=st.sampled_from(SEEDS), raw=st.booleans(), data=st.data())
def test_mutated_grpc_requests(
    infer_bytes: Any, seed: tuple[str, list[dict[str, Any]]], raw: bool, data: st.DataObject
) -> None:
    model, entries = seed
    entries = data.draw(mutated_entries(entries))
    try:
        body = _message(model, entries, raw)
    except (ValueError, TypeError, AttributeError):  # data the new datatype cannot encode
        body = _message(model, seed[1], raw)
    code, details = _grpc_code(infer_bytes, data.draw(mutated(body)))
    assert code in CLIENT_CODES, (code, details)


# -- the reported regressions, through both listeners ------------------------------------------
def _grpc_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(raw)
    return msg.SerializeToString()


REGRESSIONS = [
    # id, model, input, datatype, shape, data bytes, HTTP status, gRPC code, message
    ("bytes-2**27-fp32-model", "classifier", "input", "BYTES", [1, 2**27], b"\0" * 6, 400,
     grpc.StatusCode.INVALID_ARGUMENT, "datatype BYTES does not match"),
    ("bytes-2**25-bytes-model", "multi", "s", "BYTES", [2**25, 1], b"\0" * 6, 400,
     grpc.StatusCode.INVALID_ARGUMENT, "cannot hold"),
    ("bytes-over-limit", "multi", "s", "BYTES", [2**27, 1], b"\0" * 6, 413,
     grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
    ("2**20-by-2**20", "classifier", "input", "FP32", [2**20, 2**20], b"", 400,
     grpc.StatusCode.INVALID_ARGUMENT, "does not match the model's"),
    ("2**66-elements", "classifier", "input", "FP32", [2**62, 16], b"", 413,
     grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
    ("zero-next-to-huge", "classifier", "input", "FP32", [0, 2**62], b"", 400,
     grpc.StatusCode.INVALID_ARGUMENT, "does not match the model's"),
    ("65-dimensions", "classifier", "input", "FP32", [1] * 65, b"\0" * 4, 400,
     grpc.StatusCode.INVALID_ARGUMENT, "at most 64"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "name", "datatype", "shape", "raw", "status", "code", "mentions"),
    [c[1:] for c in REGRESSIONS],
    ids=[c[0] for c in REGRESSIONS],
)
def test_regressions_on_both_transports(
    http: httpx.Client,
    infer_bytes: Any,
    model: str,
    name: str,
    datatype: str,
    shape: list[int],
    raw: bytes,
    status: int,
    code: grpc.StatusCode,
    mentions: str,
) -> None:
    entry = {"name": name, "datatype": datatype, "shape": shape}
    body, headers = _binary(entry, raw)  # the binary extension (~106 bytes)
    r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == status and mentions in r.json()["error"], r.text
    if datatype == "FP32":  # and as JSON, with what data there is
        doc = {"inputs": [{**entry, "data": [0.0] * (len(raw) // 4)}]}
        r = http.post(f"/v2/models/{model}/infer", json=doc)
        assert r.status_code == status and mentions in r.json()["error"], r.text
    got, details = _grpc_code(infer_bytes, _grpc_request(model, name, datatype, shape, raw))
    assert got == code and mentions in details, (got, details)
    ok = http.post("/v2/models/classifier/infer", json={"inputs": [{**CLASSIFIER, "data": ROW}]})
    assert ok.status_code == 200


def test_json_numbers_beyond_fp32_are_refused_naming_the_input(http: httpx.Client) -> None:
    doc = {"inputs": [{**CLASSIFIER, "data": [1e39, *ROW[1:]]}]}
    r = http.post("/v2/models/classifier/infer", json=doc)
    assert r.status_code == 400 and "input 'input': value 1e+39 out of range for FP32" in r.text


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 200),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("application/octet-stream", 200),  # aiohttp's default for bytes: JSON without the header
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),  # what `curl -d` sends unless told
        ("multipart/form-data; boundary=x", 415),
    ],
)
def test_content_types_of_infer_and_feedback(
    http: httpx.Client, content_type: str | None, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"inputs": [{**CLASSIFIER, "data": ROW}]}).encode()
    r = http.post("/v2/models/classifier/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        assert "unsupported content type" in r.json()["error"]
    labels = json.dumps({"id": "no-such-request", "label": 1}).encode()
    r = http.post("/v2/models/classifier/feedback", content=labels, headers=headers)
    feedback_ok = status == 200 and content_type != "application/octet-stream"
    assert (r.status_code == 200) == feedback_ok and r.status_code in (200, 415), r.text


def test_msgpack_errors_name_their_cause(http: httpx.Client) -> None:
    r = http.post(
        "/v2/models/classifier/infer",
        content=b"\xc1",
        headers={"content-type": "application/x-msgpack"},
    )
    assert r.status_code == 400
    assert msgpack.unpackb(r.content)["error"] == "malformed msgpack body: FormatError"
