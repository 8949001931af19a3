"""HTTP bodies <-> InferRequest / InferResponse: JSON (orjson), the binary tensor data extension,
and msgpack (same structure, tensor data as raw little-endian bytes).

Every client mistake becomes a LockgateError (INVALID, or TOO_LARGE / UNSUPPORTED_MEDIA) with a
message naming the tensor or field. Each input is checked against the model before its array is
built (limits.py), so nothing proportional to a declared shape is allocated before it is known to
be allowed and backed by the bytes present.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import orjson

from lockgate.config import MAX_REQUEST_ELEMENTS
from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.serve.transport.json_tensors import array_from_json
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
from lockgate.web import JSON as JSON
from lockgate.web import MSGPACK as MSGPACK
from lockgate.web import is_msgpack as is_msgpack

OCTET = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"
# What a body may be sent as. No content type at all is JSON (tritonclient sends none);
# application/octet-stream is what binary-extension clients send (aiohttp's default for bytes).
# The types a browser may send cross-site without asking first (text/plain, forms) are refused.
JSON_MEDIA = frozenset({"", JSON})
MSGPACK_MEDIA = frozenset({MSGPACK, "application/x-msgpack"})
INFER_MEDIA = JSON_MEDIA | MSGPACK_MEDIA | {OCTET}
FEEDBACK_MEDIA = JSON_MEDIA | MSGPACK_MEDIA


def media_type(content_type: str, accepted: frozenset[str]) -> str:
    """The media type of a Content-Type header (parameters dropped, lower case), if accepted."""
    media = content_type.partition(";")[0].strip().lower()
    if media not in accepted:
        hint = " (curl -d needs -H 'content-type: application/json')" if "form" in media else ""
        raise LockgateError(
            ErrorKind.UNSUPPORTED_MEDIA,
            f"unsupported content type {shown(content_type)}: send "
            f"{', '.join(sorted(m for m in accepted if m))} or none (JSON){hint}",
        )
    return media


# -- requests ---------------------------------------------------------------------------------
def decode_request(
    body: bytes,
    content_type: str,
    header_length: int | None,
    model: str,
    version: str | None,
    *,
    spec: ModelSpec,
    max_elements: int = MAX_REQUEST_ELEMENTS,
) -> InferRequest:
    """Decode a JSON, binary-extension or msgpack infer request body for the model `spec`."""
    media = media_type(content_type, INFER_MEDIA)
    if not body:
        raise invalid("empty request body")
    limits = InputLimits(spec, max_elements)
    if media in MSGPACK_MEDIA:
        try:
            doc = msgpack.unpackb(body, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise invalid(f"malformed msgpack body: {reason(exc)}") from None
        return _request_from_doc(doc, b"", model, version, limits, raw_data=True)
    binary: bytes | memoryview = b""
    head: bytes | memoryview = body
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise invalid(
                f"Inference-Header-Content-Length {header_length} is beyond the body's "
                f"{len(body)} bytes"
            )
        view = memoryview(body)
        head, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON body: {reason(exc)}") from None
    return _request_from_doc(doc, binary, model, version, limits, raw_data=False)


def decode_raw_input(
    body: bytes,
    spec: ModelSpec,
    model: str,
    version: str | None,
    *,
    max_elements: int = MAX_REQUEST_ELEMENTS,
) -> InferRequest:
    """The binary extension's raw form: the whole body is the data of the model's single input."""
    if len(spec.inputs) != 1:
        raise invalid(
            f"a raw binary body needs a model with one input; {spec.name} has {len(spec.inputs)}"
        )
    (inp,) = spec.inputs
    if inp.datatype == "BYTES" or any(d < 0 for d in inp.shape[1:]):
        raise invalid(f"input {inp.name!r}: a raw binary body needs fixed-size elements")
    row_bytes = element_count(inp.shape[1:]) * numpy_dtype(inp.datatype).itemsize
    if inp.shape and inp.shape[0] == -1:
        if not body or not row_bytes or len(body) % row_bytes:
            raise invalid(
                f"input {inp.name!r}: raw body of {len(body)} bytes is not whole rows "
                f"of {row_bytes} bytes"
            )
        shape = (len(body) // row_bytes, *inp.shape[1:])
    else:
        shape = inp.shape
    InputLimits(spec, max_elements).take(inp, shape)
    data = array_from_raw(inp.name, inp.datatype, shape, body)
    tensor = Tensor(inp.name, inp.datatype, data)
    return InferRequest(model, version, new_request_id(), [tensor], checked=spec)


def _request_from_doc(
    doc: Any,
    binary: bytes | memoryview,
    model: str,
    version: str | None,
    limits: InputLimits,
    *,
    raw_data: bool,
) -> InferRequest:
    if not isinstance(doc, dict):
        raise invalid("request body must be an object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("request needs a non-empty 'inputs' list")
    offset = 0
    inputs = []
    for i, item in enumerate(raw_inputs):
        tensor, used = _input(item, i, binary, offset, limits, raw_data)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise invalid(f"binary data has {len(binary)} bytes but the inputs declare {offset}")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise invalid("'id' must be a string")
    params = _parameters(doc.get("parameters"), "request")
    outputs = _requested_outputs(doc.get("outputs"))
    request_id = req_id or new_request_id()
    return InferRequest(model, version, request_id, inputs, outputs, params, checked=limits.spec)


def _input(
    item: Any,
    index: int,
    binary: bytes | memoryview,
    offset: int,
    limits: InputLimits,
    raw_data: bool,
) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise invalid(f"inputs[{index}] must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"inputs[{index}] needs a 'name' string")
    want, shape = limits.declared(name, item.get("datatype"), item.get("shape"))
    name, datatype = want.name, want.datatype  # the model's: safe to quote in messages
    params = _parameters(item.get("parameters"), f"input {name!r}")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise invalid(f"input {name!r} has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise invalid(
                f"input {name!r}: binary_data_size {size} runs past the "
                f"{len(binary)} bytes of binary data"
            )
        data = array_from_raw(name, datatype, shape, binary[offset : offset + size])
        return Tensor(name, datatype, data, params), size
    if "data" not in item:
        raise invalid(f"input {name!r} has no 'data' and no binary_data_size")
    data = item["data"]
    if raw_data and isinstance(data, (bytes, bytearray)):
        return Tensor(name, datatype, array_from_raw(name, datatype, shape, data), params), 0
    return Tensor(name, datatype, array_from_json(name, datatype, shape, data), params), 0


def _parameters(raw: Any, where: str) -> Parameters:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid(f"{where}: 'parameters' must be an object")
    for key, value in raw.items():
        if not isinstance(key, str):
            raise invalid(f"{where}: parameter names must be strings, got {shown(key)}")
        if not isinstance(value, (bool, int, float, str)):
            raise invalid(f"{where}: parameter {shown(key)} must be a bool, number or string")
    return raw


def _requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise invalid("'outputs' must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"outputs[{i}] needs a 'name' string")
        where = f"output {shown(item['name'])}"
        params = _parameters(item.get("parameters"), where)
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise invalid(f"{where}: binary_data must be true or false")
        classes = params.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise invalid(f"{where}: classification must be a count of classes")
        out.append(RequestedOutput(item["name"], binary, classes))
    return out


# -- feedback ---------------------------------------------------------------------------------
MAX_LABELS = 100_000


def decode_feedback(body: bytes, content_type: str) -> list[tuple[str, float]]:
    """Ground-truth labels: `{"id": ..., "label": ...}` or `{"labels": [{...}, ...]}`, as JSON
    or msgpack. Labels are finite numbers (class labels as integers)."""
    media = media_type(content_type, FEEDBACK_MEDIA)
    if not body:
        raise invalid("empty request body")
    try:
        doc = msgpack.unpackb(body, raw=False) if media in MSGPACK_MEDIA else orjson.loads(body)
    except Exception as exc:  # orjson and msgpack raise several types
        raise invalid(f"malformed feedback body: {reason(exc)}") from None
    if not isinstance(doc, dict):
        raise invalid("feedback body must be an object")
    items = doc.get("labels", [doc] if "id" in doc else None)
    if not isinstance(items, list) or not items:
        raise invalid("feedback needs 'id' and 'label', or a non-empty 'labels' list")
    if len(items) > MAX_LABELS:
        raise invalid(f"at most {MAX_LABELS} labels per request")
    out = []
    for i, item in enumerate(items):
        request_id = item.get("id") if isinstance(item, dict) else None
        label = item.get("label") if isinstance(item, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise invalid(f"labels[{i}] needs an 'id' string")
        if isinstance(label, bool):
            label = int(label)
        if not isinstance(label, int | float) or not math.isfinite(label):
            raise invalid(f"labels[{i}] needs a finite numeric 'label'")
        out.append((request_id, float(label)))
    return out


# -- responses --------------------------------------------------------------------------------
def encode_response(
    response: InferResponse, request: InferRequest, *, msgpack_body: bool
) -> tuple[bytes, dict[str, str]]:
    """Encode a response as the request asked: JSON, JSON + binary outputs, or msgpack."""
    head: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "id": response.id,
    }
    if response.parameters:
        head["parameters"] = response.parameters
    if msgpack_body:
        head["outputs"] = [_msgpack_output(t) for t in response.outputs]
        return msgpack.packb(head, use_bin_type=True), {"content-type": MSGPACK}
    binary_flags = _binary_flags(request)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary_flags.get(tensor.name, binary_flags.get("", False)):
            blob = raw_from_array(tensor.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(tensor.data)
        outputs.append(entry)
    head["outputs"] = outputs
    body = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return body, {"content-type": JSON}
    headers = {"content-type": OCTET, HEADER_LENGTH: str(len(body))}
    return b"".join([body, *blobs]), headers


def _binary_flags(request: InferRequest) -> dict[str, bool]:
    """Per-output binary choice; key "" is the request-wide default (binary_data_output)."""
    flags = {"": request.parameters.get("binary_data_output") is True}
    for wanted in request.outputs or ():
        if wanted.binary is not None:
            flags[wanted.name] = wanted.binary
    return flags


def _json_data(arr: np.ndarray[Any, Any]) -> Any:
    if arr.dtype.kind in "OSU":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in arr.reshape(-1)
        ]
    return np.ascontiguousarray(arr).reshape(-1)


def _msgpack_output(tensor: Tensor) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "data": raw_from_array(tensor.data),
    }


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
