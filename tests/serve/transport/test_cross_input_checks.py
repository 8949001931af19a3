"""What spans a request's inputs is checked after decoding, on both transports: every input once,
none missing, one batch dimension. The decoders check each input alone against the model (name,
datatype, shape); the data plane relies on that only for a request decoded against the very
spec of the version it is routed to."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.dataplane import validate_inputs
from lockgate.serve.transport.grpc_service import STATUS
from lockgate.types import InferRequest, ModelSpec, Tensor, TensorSpec
from lockgate.web import STATUS as HTTP_STATUS
from tests.serve.transport.conftest import Context, Transports

A = {"name": "a", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}
B = {"name": "b", "datatype": "FP64", "shape": [2, 3], "data": [0.5] * 6}
S = {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": ["x", "y"]}
B1 = {**B, "shape": [1, 3], "data": [0.5] * 3}

CASES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "twice": ([A, B, S, A], "input 'a' given more than once"),
    "missing": ([A, S], "missing input(s) 'b' for model multi"),
    "rows": ([A, B1, S], "inputs disagree on the batch dimension: [1, 2]"),
}


def _grpc(inputs: list[dict[str, Any]]) -> Any:
    request = pb.ModelInferRequest(model_name="multi")
    for item in inputs:
        tensor = request.inputs.add(name=item["name"], datatype=item["datatype"])
        tensor.shape.extend(item["shape"])
        if item["datatype"] == "INT64":
            tensor.contents.int64_contents.extend(item["data"])
        elif item["datatype"] == "FP64":
            tensor.contents.fp64_contents.extend(item["data"])
        else:
            tensor.contents.bytes_contents.extend(v.encode() for v in item["data"])
    return request


@pytest.mark.parametrize("case", list(CASES))
async def test_inputs_together_are_checked_on_both_transports(t: Transports, case: str) -> None:
    inputs, message = CASES[case]
    aborted = await t.infer(_grpc(inputs))
    assert isinstance(aborted, Context)
    assert aborted.code is STATUS[ErrorKind.INVALID] and message in aborted.details
    http = await t.http.post("/v2/models/multi/infer", content=orjson.dumps({"inputs": inputs}))
    assert http.status_code == HTTP_STATUS[ErrorKind.INVALID]
    assert message in http.json()["error"]
    good = await t.http.post("/v2/models/multi/infer", content=orjson.dumps({"inputs": [A, B, S]}))
    assert good.status_code == 200, good.text


def _spec(width: int) -> ModelSpec:
    x = TensorSpec("x", "FP32", (-1, width))
    return ModelSpec("m", "1", (x,), (TensorSpec("y", "FP32", (-1, 1)),))


def test_a_request_checked_against_another_spec_is_checked_in_full() -> None:
    """An endpoint's variants may differ: a request decoded against the primary variant's spec
    and routed to another version is checked against that version's own."""
    decoded_for, routed_to = _spec(4), _spec(3)
    data = np.zeros((2, 4), np.float32)
    request = InferRequest("m", None, "r", [Tensor("x", "FP32", data)], checked=decoded_for)
    feeds, rows = validate_inputs(request, decoded_for)
    assert rows == 2 and feeds["x"] is data
    refused = r"shape \[2, 4\] does not match the model's \[-1, 3\]"
    with pytest.raises(LockgateError, match=refused) as e:
        validate_inputs(request, routed_to)
    assert e.value.kind is ErrorKind.INVALID
