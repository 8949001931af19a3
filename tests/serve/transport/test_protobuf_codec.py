"""gRPC messages <-> pipeline types: typed and raw contents for every datatype, raw outputs, and
the client mistakes the codec must name."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from lockgate.errors import LockgateError
from lockgate.serve.transport import protobuf_codec
from lockgate.serve.transport.tensors import raw_from_array
from lockgate.types import InferResponse, ModelSpec, Tensor, TensorSpec
from tests.conftest import RunningGateway

SAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 1, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 2, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 3, 2**63 - 1]], np.int64),
    "UINT8": np.array([[0, 1, 255]], np.uint8),
    "UINT16": np.array([[0, 1, 65535]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], np.uint64),
    "FP32": np.array([[-1.5, 0.0, 3.25]], np.float32),
    "FP64": np.array([[-1.5e300, 0.0, 1e-300]], np.float64),
    "BYTES": np.array([[b"a", b"", b"\xff\x00"]], dtype=object),
}


def one_input(datatype: str, shape: tuple[int, ...] = (-1, 3)) -> ModelSpec:
    """A model with one input `t` of `datatype` and `shape` (-1 = any)."""
    return ModelSpec(
        "m", "1", (TensorSpec("t", datatype, shape),), (TensorSpec("o", "FP32", (-1,)),)
    )


def _typed(datatype: str, arr: np.ndarray[Any, Any]) -> Any:
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="t", datatype=datatype, shape=arr.shape)
    getattr(tensor.contents, protobuf_codec.CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
    return msg


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_typed_and_raw_contents_decode_alike(datatype: str) -> None:
    arr = SAMPLES[datatype]
    spec = one_input(datatype)
    typed = protobuf_codec.decode_request(_typed(datatype, arr), None, spec).inputs[0].data
    raw_msg = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw_from_array(arr)])
    raw_msg.inputs.add(name="t", datatype=datatype, shape=arr.shape)
    raw = protobuf_codec.decode_request(raw_msg, None, spec).inputs[0].data
    for got in (typed, raw):
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        if datatype != "BYTES":
            assert got.dtype == arr.dtype


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_outputs_leave_as_raw_contents(datatype: str) -> None:
    arr = SAMPLES[datatype]
    response = InferResponse("m", "3", "req-1", [Tensor("out", datatype, arr)], {"queue_us": 5})
    msg = protobuf_codec.encode_response(response)
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "3", "req-1")
    assert msg.parameters["queue_us"].int64_param == 5
    assert list(msg.outputs[0].shape) == list(arr.shape) and msg.outputs[0].datatype == datatype
    assert msg.raw_output_contents[0] == raw_from_array(arr)
    assert not msg.outputs[0].HasField("contents")


def _bad(datatype: str, shape: list[int], **contents: Any) -> Any:
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="t", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return msg


MISTAKES = [
    # id, message, the model's input (datatype, shape), what the error names
    ("count", _bad("FP32", [1, 3], fp32_contents=[1.0, 2.0]), "FP32", (-1, 3), "2 fp32_contents"),
    ("int8-range", _bad("INT8", [1], int_contents=[300]), "INT8", (-1,), "out of range for INT8"),
    ("uint16-range", _bad("UINT16", [1], uint_contents=[70000]), "UINT16", (-1,), "UINT16"),
    ("fp16-typed", _bad("FP16", [1]), "FP16", (-1,), "raw_input_contents"),
    ("datatype", _bad("COMPLEX", [1]), "FP32", (-1,), "unsupported datatype 'COMPLEX'"),
    (
        "mismatch",
        _bad("INT32", [1]),
        "FP32",
        (-1,),
        "datatype INT32 does not match the model's FP32",
    ),
    ("rank", _bad("FP32", [1, 1]), "FP32", (-1,), "shape [1, 1] does not match the model's [-1]"),
    ("fixed-dim", _bad("FP32", [1, 4]), "FP32", (-1, 3), "does not match the model's [-1, 3]"),
    ("unknown-input", _bad("FP32", [1]), "FP32", None, "unknown input 't' for model m"),
    (
        "no-inputs",
        pb.ModelInferRequest(model_name="m", raw_input_contents=[b"", b""]),
        "FP32",
        (-1,),
        "non-empty list of inputs",
    ),
]


@pytest.mark.parametrize(
    ("msg", "datatype", "shape", "mentions"),
    [c[1:] for c in MISTAKES],
    ids=[c[0] for c in MISTAKES],
)
def test_client_mistakes_are_named(
    msg: Any, datatype: str, shape: tuple[int, ...] | None, mentions: str
) -> None:
    spec = one_input(datatype, shape) if shape is not None else _other_input()
    with pytest.raises(LockgateError) as info:
        protobuf_codec.decode_request(msg, None, spec)
    assert mentions in info.value.message


def _other_input() -> ModelSpec:
    return ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1,)),), ())


def test_raw_contents_must_cover_every_input() -> None:
    msg = _bad("FP32", [1])
    msg.inputs.add(name="u", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(b"\0\0\0\0")
    with pytest.raises(LockgateError, match="1 entries for 2 inputs"):
        protobuf_codec.decode_request(msg, None, one_input("FP32", (-1,)))


def test_typed_contents_through_a_real_server(gateway: RunningGateway) -> None:
    x = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
    typed = _typed("FP32", x)
    typed.model_name = "classifier"
    raw = pb.ModelInferRequest(model_name="classifier", raw_input_contents=[x.tobytes()])
    raw.inputs.add(name="input", datatype="FP32", shape=[5, 16])
    typed.inputs[0].name = "input"
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        a, b = stub.ModelInfer(typed, timeout=10), stub.ModelInfer(raw, timeout=10)
    assert [o.name for o in a.outputs] == ["probability", "label"]
    assert list(a.raw_output_contents) == list(b.raw_output_contents)
    probability = np.frombuffer(a.raw_output_contents[0], np.float32)
    assert probability.shape == (5,) and ((probability >= 0) & (probability <= 1)).all()
