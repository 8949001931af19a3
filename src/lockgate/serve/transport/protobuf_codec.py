"""gRPC messages (Open Inference Protocol protobufs) <-> InferRequest / InferResponse.

Inputs arrive as `raw_input_contents` (zero-copy views) or typed `contents`; outputs always leave
as `raw_output_contents` in output order, which is what tritonclient reads. Each input is checked
against the model before its array is built (limits.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.config import MAX_REQUEST_ELEMENTS
from lockgate.errors import invalid
from lockgate.serve.transport.limits import InputLimits, reason, shown
from lockgate.serve.transport.tensors import (
    array_from_raw,
    element_count,
    numpy_dtype,
    raw_from_array,
)
from lockgate.types import (
    InferRequest,
    InferResponse,
    ModelSpec,
    Parameters,
    RequestedOutput,
    Tensor,
    new_request_id,
)

# Which typed-contents field carries each datatype (FP16 has none: raw contents only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_request(body: bytes) -> Any:
    """Parse a serialized ModelInferRequest; malformed bytes are the client's mistake."""
    try:
        return pb.ModelInferRequest.FromString(body)
    except Exception as exc:  # protobuf raises DecodeError, sometimes RuntimeWarning-ish types
        raise invalid(f"malformed ModelInferRequest protobuf: {reason(exc)}") from None


def decode_request(
    msg: Any,
    remaining: float | None,
    spec: ModelSpec,
    *,
    max_elements: int = MAX_REQUEST_ELEMENTS,
) -> InferRequest:
    """A parsed ModelInferRequest for the model `spec` -> InferRequest. `remaining` is the gRPC
    deadline in seconds."""
    items = msg.inputs
    if not items:
        raise invalid("request needs a non-empty list of inputs")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(items):
        raise invalid(
            f"raw_input_contents has {len(raw)} entries for {len(items)} inputs "
            "(when used, every input must be raw)"
        )
    limits = InputLimits(spec, max_elements)
    inputs = [_input(i, item, raw, limits) for i, item in enumerate(items)]
    return InferRequest(
        model=msg.model_name,
        version=msg.model_version or None,
        id=msg.id or new_request_id(),
        inputs=inputs,
        outputs=[_requested(o) for o in msg.outputs] if msg.outputs else None,
        parameters=_parameters(msg.parameters),
        deadline=time.monotonic() + remaining if remaining is not None else float("inf"),
        checked=spec,
    )


def _requested(output: Any) -> RequestedOutput:
    if "classification" not in output.parameters:
        return RequestedOutput(output.name)
    param = output.parameters["classification"]
    classes = param.int64_param if param.WhichOneof("parameter_choice") == "int64_param" else -1
    if classes < 0:
        raise invalid(f"output {shown(output.name)}: classification must be a count of classes")
    return RequestedOutput(output.name, classification=classes)


def _input(i: int, item: Any, raw: Any, limits: InputLimits) -> Tensor:
    if not item.name:
        raise invalid(f"inputs[{i}] needs a name")
    want, shape = limits.declared(item.name, item.datatype, tuple(item.shape))
    name, datatype = want.name, want.datatype
    if raw:
        data = array_from_raw(name, datatype, shape, raw[i])
    else:
        data = _array_from_contents(name, datatype, shape, item)
    return Tensor(name, datatype, data, _parameters(item.parameters))


def _array_from_contents(name: str, datatype: str, shape: tuple[int, ...], item: Any) -> Any:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid(f"input {name!r}: {datatype} data must be sent as raw_input_contents")
    values = getattr(item.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise invalid(
            f"input {name!r}: {len(values)} {field} for shape {list(shape)} ({count} expected)"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = numpy_dtype(datatype)
    wide = np.asarray(values)
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise invalid(f"input {name!r}: value out of range for {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)


def _parameters(params: Any) -> Parameters:
    if not params:
        return {}
    out: Parameters = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def encode_response(response: InferResponse) -> Any:
    msg = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for key, value in response.parameters.items():
        _set_parameter(msg.parameters[key], value)
    for tensor in response.outputs:
        msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    msg.raw_output_contents.extend([raw_from_array(t.data) for t in response.outputs])
    return msg


def _set_parameter(param: Any, value: bool | int | float | str) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value
