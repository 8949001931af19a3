"""HTTP codec: every datatype both ways (JSON, binary extension, msgpack) against numpy, and a
hypothesis fuzz of the real HTTP decoder: never a 500, never a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgpack
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.transport import codec
from lockgate.serve.transport.tensors import NUMERIC_DTYPES, raw_from_array
from lockgate.types import (
    InferRequest,
    InferResponse,
    ModelSpec,
    RequestedOutput,
    Tensor,
    TensorSpec,
)
from tests.conftest import RunningGateway

SAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127], [1, 2, 3]], np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, 2, 3]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, 2, 3]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, 2, 3]], np.int64),
    "UINT8": np.array([[0, 1, 255], [1, 2, 3]], np.uint8),
    "UINT16": np.array([[0, 1, 65535], [1, 2, 3]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [1, 2, 3]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [1, 2, 3]], np.uint64),
    "FP16": np.array([[-1.5, 0.0, 65504.0], [0.25, 1e-3, 3.0]], np.float16),
    "FP32": np.array([[-1.5, 0.0, 3.4e38], [1e-30, 1.0, 3.0]], np.float32),
    "FP64": np.array([[-1.5, 0.0, 1.7e308], [5e-324, 1.0, 3.0]], np.float64),
    "BYTES": np.array([[b"a", b"", b"\xe2\x82\xac"], [b"xyz", b"0", b"long " * 10]], dtype=object),
}


def one_input(datatype: str, shape: tuple[int, ...] = (-1, 3)) -> ModelSpec:
    """A model with one input `t` of `datatype` and `shape` (-1 = any)."""
    return ModelSpec(
        "m", "1", (TensorSpec("t", datatype, shape),), (TensorSpec("o", "FP32", (-1,)),)
    )


def _json_request(datatype: str, arr: np.ndarray[Any, Any], nested: bool) -> bytes:
    data = arr.tolist() if nested else arr.ravel().tolist()
    if datatype == "BYTES":
        data = (
            [[x.decode() for x in row] for row in arr]
            if nested
            else [x.decode() for x in arr.ravel()]
        )
    return orjson.dumps(
        {"inputs": [{"name": "t", "datatype": datatype, "shape": list(arr.shape), "data": data}]}
    )


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_input_every_datatype(datatype: str, nested: bool) -> None:
    arr = SAMPLES[datatype]
    req = codec.decode_request(
        _json_request(datatype, arr, nested),
        "application/json",
        None,
        "m",
        None,
        spec=one_input(datatype),
    )
    (t,) = req.inputs
    assert t.datatype == datatype and t.data.shape == arr.shape
    if datatype != "BYTES":
        assert t.data.dtype == NUMERIC_DTYPES[datatype]
    np.testing.assert_array_equal(t.data, arr)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_binary_input_every_datatype(datatype: str) -> None:
    arr = SAMPLES[datatype]
    blob = raw_from_array(arr)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    req = codec.decode_request(
        head + blob, "application/octet-stream", len(head), "m", None, spec=one_input(datatype)
    )
    np.testing.assert_array_equal(req.inputs[0].data, arr)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_msgpack_input_every_datatype(datatype: str) -> None:
    arr = SAMPLES[datatype]
    body = msgpack.packb(
        {
            "inputs": [
                {
                    "name": "t",
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "data": raw_from_array(arr),
                }
            ]
        }
    )
    req = codec.decode_request(
        body, "application/msgpack", None, "m", None, spec=one_input(datatype)
    )
    np.testing.assert_array_equal(req.inputs[0].data, arr)


def _response(datatype: str) -> tuple[InferResponse, np.ndarray[Any, Any]]:
    arr = SAMPLES[datatype]
    return InferResponse("m", "1", "id-1", [Tensor("out", datatype, arr)]), arr


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_response_encodings_every_datatype(datatype: str) -> None:
    resp, arr = _response(datatype)
    # JSON
    body, headers = codec.encode_response(
        resp, InferRequest("m", None, "id-1", []), msgpack_body=False
    )
    out = orjson.loads(body)["outputs"][0]
    assert headers["content-type"] == "application/json" and out["shape"] == list(arr.shape)
    if datatype == "BYTES":
        assert out["data"] == [x.decode() for x in arr.ravel()]
    else:  # JSON numbers must read back to exactly the same values of the datatype
        np.testing.assert_array_equal(np.asarray(out["data"], dtype=arr.dtype), arr.ravel())
    # binary extension, asked per output
    req = InferRequest("m", None, "id-1", [], [RequestedOutput("out", binary=True)])
    body, headers = codec.encode_response(resp, req, msgpack_body=False)
    n = int(headers["inference-header-content-length"])
    head = orjson.loads(body[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(body) - n
    assert body[n:] == raw_from_array(arr)
    # msgpack
    body, headers = codec.encode_response(resp, req, msgpack_body=True)
    out = msgpack.unpackb(body)["outputs"][0]
    assert out["data"] == raw_from_array(arr) and out["datatype"] == datatype


def test_binary_data_output_parameter_applies_to_all_outputs() -> None:
    resp, _ = _response("FP32")
    req = InferRequest("m", None, "x", [], None, {"binary_data_output": True})
    _, headers = codec.encode_response(resp, req, msgpack_body=False)
    assert headers["content-type"] == "application/octet-stream"


LOSSY = [
    ("float-for-int", "INT32", [1.5, 2.0]),
    ("string-for-float", "FP32", ["1.5", "2"]),
    ("number-for-bool", "BOOL", [1, 0]),
    ("bool-for-float", "FP32", [True, False]),
    ("overflow-int8", "INT8", [1000, 1]),
    ("negative-uint", "UINT8", [-1, 1]),
    ("number-for-bytes", "BYTES", [1, 2]),
    ("ragged", "FP32", [[1.0], [1.0, 2.0]]),
    ("null", "FP32", [None, 1.0]),
]


@pytest.mark.parametrize(("datatype", "data"), [c[1:] for c in LOSSY], ids=[c[0] for c in LOSSY])
def test_lossy_or_wrong_json_data_is_refused(datatype: str, data: Any) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "t", "datatype": datatype, "shape": [2], "data": data}]}
    )
    with pytest.raises(LockgateError) as info:
        codec.decode_request(body, "", None, "m", None, spec=one_input(datatype, (-1,)))
    assert info.value.kind is ErrorKind.INVALID and "'t'" in info.value.message


# -- fuzzing the real HTTP decoder ------------------------------------------------------------
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # everything msgpack can carry
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
tensor_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("input"), st.text(max_size=6), st.integers(-(2**63), 2**63 - 1)),
        "datatype": st.one_of(
            st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "X"]), json_values
        ),
        "shape": st.one_of(st.lists(st.integers(-2, 40), max_size=3), json_values),
        "data": json_values,
        "parameters": st.one_of(
            st.dictionaries(st.sampled_from(["binary_data_size", "x"]), st.integers(-5, 200)),
            json_values,
        ),
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=10), json_values),
        "inputs": st.one_of(st.lists(tensor_like, max_size=3), json_values),
        "outputs": st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)}), max_size=2), json_values
        ),
        "parameters": st.one_of(
            st.dictionaries(
                st.sampled_from(["timeout", "binary_data_output"]),
                st.one_of(st.integers(-3, 10**7), st.booleans()),
            ),
            json_values,
        ),
    },
)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    doc=requests,
    tail=st.binary(max_size=80),
    header_length=st.one_of(st.none(), st.integers(-3, 400)),
    as_msgpack=st.booleans(),
)
def test_fuzz_http_decoder_never_500(
    gateway: RunningGateway,
    doc: dict[str, Any],
    tail: bytes,
    header_length: int | None,
    as_msgpack: bool,
) -> None:
    headers = {}
    if as_msgpack:
        body = msgpack.packb(doc) + tail
        headers["content-type"] = "application/msgpack"
    else:
        body = json.dumps(doc).encode() + tail
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    r = fuzz_client(gateway).post("/v2/models/classifier/infer", content=body, headers=headers)
    assert r.status_code < 500 or r.status_code in (503, 504), r.text
    if r.status_code != 200:
        assert "error" in (msgpack.unpackb(r.content) if as_msgpack else r.json())


_clients: dict[str, httpx.Client] = {}


def fuzz_client(gateway: RunningGateway) -> httpx.Client:
    """One keep-alive client for all examples; a hang fails on its 10 s timeout."""
    if gateway.http not in _clients:
        _clients[gateway.http] = httpx.Client(base_url=f"http://{gateway.http}", timeout=10)
    return _clients[gateway.http]
