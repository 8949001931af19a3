"""Every decoder against hostile input: whatever arrives, the answer is a request that conforms to
the model or a client error (never a 5xx), and no decode allocates more than MEMORY_BOUND
(tracemalloc's peak; numpy reports its buffers to it) or takes longer than a generous deadline.

Properties run the decoders in process (JSON, binary extension, raw, msgpack, protobuf raw and
typed contents, feedback) against random models; wire-level ones send hostile requests through
the real HTTP and gRPC listeners (test_fuzz_wire.py) and the admin API (test_fuzz_admin.py).
LOCKGATE_FUZZ_SCALE=N runs N times the examples (loadtests/fuzz.py).
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.transport import codec, protobuf_codec
from lockgate.serve.transport.grpc_service import STATUS as GRPC_STATUS
from lockgate.serve.transport.limits import MAX_RANK
from lockgate.serve.transport.tensors import DATATYPES, element_count, numpy_dtype
from lockgate.types import InferRequest, ModelSpec, TensorSpec
from lockgate.web import STATUS as HTTP_STATUS
from tests.conftest import single_threaded
from tests.serve.transport.strategies import (
    CONTENT_TYPES,
    HUGE,
    fuzz_settings,
    json_values,
    raw_blobs,
    request_docs,
    specs,
)

pytestmark = pytest.mark.single_thread
MEMORY_BOUND = 64 * 2**20
DECODER_ERRORS = {ErrorKind.INVALID, ErrorKind.TOO_LARGE, ErrorKind.UNSUPPORTED_MEDIA}
LIMITS = st.sampled_from([2**26, 2**26, 64, 1])  # --max-request-elements: default, small, tiny
T = TypeVar("T")


def decode(call: Callable[[], T]) -> T | LockgateError:
    """One decode: its result or a client error (anything else fails the test), and its peak
    memory under the bound (traced during the decode only: tracing everything is slow; the
    module runs first, alone in the process: see tests/conftest.py)."""
    single_threaded()
    tracemalloc.start()
    try:
        out: T | LockgateError = call()
    except LockgateError as exc:
        assert exc.kind in DECODER_ERRORS, exc
        assert exc.message and not exc.message.endswith(": "), exc  # names its cause
        out = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"one decode allocated {peak} bytes"
    return out


def test_decoder_errors_are_client_errors_on_both_transports() -> None:
    for kind in DECODER_ERRORS:
        assert 400 <= HTTP_STATUS[kind] < 500
    assert HTTP_STATUS[ErrorKind.UNSUPPORTED_MEDIA] == 415
    assert HTTP_STATUS[ErrorKind.TOO_LARGE] == 413
    assert all(GRPC_STATUS[k].name not in ("INTERNAL", "UNKNOWN") for k in DECODER_ERRORS)


def conforms(req: InferRequest, spec: ModelSpec, max_elements: int) -> None:
    """A decoded request is what the model takes: its inputs, datatypes, ranks, fixed dims,
    numpy dtypes, and no more elements than the limit."""
    total = 0
    for tensor in req.inputs:
        want = spec.input(tensor.name)
        assert want is not None and tensor.datatype == want.datatype
        assert tensor.data.dtype == numpy_dtype(want.datatype)
        assert len(tensor.shape) == len(want.shape)
        assert all(w < 0 or g == w for g, w in zip(tensor.shape, want.shape, strict=True))
        total += tensor.data.size
    assert total <= max_elements


# -- HTTP bodies: JSON, binary extension, msgpack ----------------------------------------------
@fuzz_settings(600)
@given(data=st.data(), limit=LIMITS, content_type=st.sampled_from(CONTENT_TYPES))
def test_json_and_binary_bodies(data: st.DataObject, limit: int, content_type: str) -> None:
    spec = data.draw(specs())
    binary = data.draw(st.booleans())
    doc, blob = data.draw(request_docs(spec, binary))
    head = json.dumps(doc).encode()
    header_length: int | None = None
    if binary:
        header_length = data.draw(st.sampled_from([len(head)] * 4 + [0, -1, len(head) + 3]))
    body = head + blob + data.draw(st.sampled_from([b""] * 4 + [b"\0", b"junk"]))
    if content_type == "application/msgpack" or content_type == "application/x-msgpack":
        content_type = ""  # msgpack bodies have their own property
    out = decode(
        lambda: codec.decode_request(
            body, content_type, header_length, "m", None, spec=spec, max_elements=limit
        )
    )
    media_ok = content_type.partition(";")[0].strip().lower() in codec.INFER_MEDIA
    if isinstance(out, LockgateError):
        assert (out.kind is ErrorKind.UNSUPPORTED_MEDIA) == (not media_ok), out
    else:
        assert media_ok
        conforms(out, spec, limit)


@fuzz_settings(500)
@given(data=st.data(), limit=LIMITS, mangle=st.sampled_from(["none"] * 6 + ["cut", "flip", "junk"]))
def test_msgpack_bodies(data: st.DataObject, limit: int, mangle: str) -> None:
    spec = data.draw(specs())
    doc, blob = data.draw(request_docs(spec, binary=True))
    for entry in doc["inputs"]:  # msgpack carries tensor bytes inline, as `data`
        params = entry.pop("parameters", None)
        if isinstance(params, dict) and isinstance(params.get("binary_data_size"), int):
            size = min(params["binary_data_size"], len(blob))
            entry["data"], blob = blob[:size], blob[size:]
    try:
        body = msgpack.packb(doc)
    except (OverflowError, ValueError):
        assume(False)  # integers msgpack cannot carry
    if mangle == "cut":
        body = body[: data.draw(st.integers(0, max(0, len(body) - 1)))]
    elif mangle == "flip":
        at = data.draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ data.draw(st.integers(1, 255))]) + body[at + 1 :]
    elif mangle == "junk":
        body = data.draw(st.binary(min_size=1, max_size=64))
    content_type = data.draw(st.sampled_from(["application/msgpack", "application/x-msgpack"]))
    out = decode(
        lambda: codec.decode_request(
            body, content_type, None, "m", None, spec=spec, max_elements=limit
        )
    )
    if not isinstance(out, LockgateError):
        conforms(out, spec, limit)


@fuzz_settings(300)
@given(spec=specs(max_inputs=2), body=st.binary(max_size=200), limit=LIMITS)
@example(  # a fixed-size model: whole rows decode to their count
    spec=ModelSpec("m", "1", (TensorSpec("input", "FP32", (-1, 16)),), ()),
    body=bytes(128),
    limit=2**26,
)
@example(spec=ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1, 0)),), ()), body=b"", limit=64)
def test_raw_bodies(spec: ModelSpec, body: bytes, limit: int) -> None:
    out = decode(lambda: codec.decode_raw_input(body, spec, "m", None, max_elements=limit))
    if not isinstance(out, LockgateError):
        conforms(out, spec, limit)
        (inp,) = spec.inputs
        assert out.inputs[0].data.nbytes == len(body)
        assert inp.datatype != "BYTES"


# -- gRPC messages ------------------------------------------------------------------------------
@st.composite
def infer_messages(draw: st.DrawFn, spec: ModelSpec) -> bytes:
    """A serialized ModelInferRequest for `spec`: raw or typed contents, any of the perturbations
    of `request_docs`, and sometimes a mangled byte string."""
    doc, _ = draw(request_docs(spec, binary=False))
    msg = pb.ModelInferRequest(model_name="m")
    raw = draw(st.booleans())
    for entry in doc["inputs"]:
        shape = entry["shape"]
        if not (isinstance(shape, list) and all(_int64(d) for d in shape)):
            shape = draw(st.lists(st.sampled_from([0, 1, 2, -1, *HUGE[:9]]), max_size=4))
        datatype = entry["datatype"] if isinstance(entry["datatype"], str) else ""
        tensor = msg.inputs.add(name=entry["name"], datatype=datatype, shape=shape)
        count = element_count(shape) if all(0 <= d <= 64 for d in shape) else None
        if raw:
            kind = datatype if datatype in DATATYPES else "UINT8"
            msg.raw_input_contents.append(
                draw(raw_blobs(kind, count if count and count <= 64 else None))
            )
        else:
            _typed_contents(draw, tensor, datatype, count)
    if raw and draw(st.integers(0, 9)) == 0:
        msg.raw_input_contents.append(b"extra")
    body: bytes = msg.SerializeToString()
    mangle = draw(st.sampled_from(["none"] * 6 + ["cut", "flip", "append"]))
    if mangle == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif mangle == "flip" and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    elif mangle == "append":
        body += draw(st.binary(max_size=16))
    return body


def _int64(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63


VALUES = {  # what each typed-contents field holds, including values beyond the narrower types
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}


def _typed_contents(draw: st.DrawFn, tensor: Any, datatype: str, count: int | None) -> None:
    field = protobuf_codec.CONTENTS_FIELD.get(datatype)
    if field is None or draw(st.integers(0, 9)) == 0:
        field = draw(st.sampled_from(sorted(VALUES)))
    size = count if count is not None and count <= 64 and draw(st.integers(0, 5)) else None
    values = draw(st.lists(VALUES[field], min_size=size or 0, max_size=size or 8))
    getattr(tensor.contents, field).extend(values)


@fuzz_settings(500)
@given(data=st.data(), limit=LIMITS)
def test_protobuf_messages(data: st.DataObject, limit: int) -> None:
    spec = data.draw(specs())
    body = data.draw(infer_messages(spec))

    def run() -> InferRequest:
        return protobuf_codec.decode_request(
            protobuf_codec.parse_request(body), None, spec, max_elements=limit
        )

    out = decode(run)
    if not isinstance(out, LockgateError):
        conforms(out, spec, limit)


# -- feedback ------------------------------------------------------------------------------------
labels = st.fixed_dictionaries({}, optional={"id": json_values, "label": json_values})
feedback_docs = st.one_of(
    labels, st.fixed_dictionaries({"labels": st.one_of(st.lists(labels, max_size=4), json_values)})
)


@fuzz_settings(300)
@given(
    doc=feedback_docs,
    as_msgpack=st.booleans(),
    junk=st.one_of(st.none(), st.binary(max_size=40)),
    content_type=st.sampled_from(CONTENT_TYPES),
)
@example(doc={"id": "r1", "label": 1e308 * 10}, as_msgpack=True, junk=None, content_type="")
def test_feedback_bodies(doc: Any, as_msgpack: bool, junk: bytes | None, content_type: str) -> None:
    if junk is not None:
        body = junk
    elif as_msgpack:
        try:
            body = msgpack.packb(doc)
        except (OverflowError, ValueError):
            assume(False)
        content_type = "application/msgpack"
    else:
        body = json.dumps(doc).encode()
    out = decode(lambda: codec.decode_feedback(body, content_type))
    if not isinstance(out, LockgateError):
        assert out and all(isinstance(i, str) and i and math.isfinite(v) for i, v in out)


# -- properties with an independent oracle -----------------------------------------------------
_PACK = {"FP16": "<e", "FP32": "<f", "FP64": "<d"}
NUMERIC = sorted(set(DATATYPES) - {"BYTES", "BOOL"})
numbers = st.one_of(
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([65504.0, 65519.0, 65520.0, 3.4028235e38, 3.4028236e38, 1e39, -1e39]),
)


def _fits(datatype: str, value: int | float) -> bool:
    """Whether `value` is a `datatype` value without loss of range, by Python's own rules."""
    if datatype in _PACK:
        try:
            struct.pack(_PACK[datatype], float(value))  # OverflowError beyond the range
        except OverflowError:
            return False
        return True
    if isinstance(value, float):
        return False  # integers only
    info = np.iinfo(numpy_dtype(datatype))
    return int(info.min) <= value <= int(info.max)


@fuzz_settings(500)
@given(datatype=st.sampled_from(NUMERIC), values=st.lists(numbers, min_size=1, max_size=6))
@example(datatype="FP32", values=[1e39])
@example(datatype="FP32", values=[0.5, -3.5e38])
@example(datatype="FP16", values=[70000])
@example(datatype="INT8", values=[128])
@example(datatype="UINT64", values=[2**64 - 1, 1])
@example(datatype="INT64", values=[2**63, -1])
def test_json_numbers_in_range_or_refused_naming_the_input(
    datatype: str, values: list[int | float]
) -> None:
    spec = ModelSpec("m", "1", (TensorSpec("input", datatype, (-1,)),), ())
    doc = {
        "inputs": [{"name": "input", "datatype": datatype, "shape": [len(values)], "data": values}]
    }
    parsed = json.loads(json.dumps(doc))["inputs"][0]["data"]  # what a JSON reader sees
    out = decode(
        lambda: codec.decode_request(json.dumps(doc).encode(), "", None, "m", None, spec=spec)
    )
    accepted = all(_fits(datatype, v) for v in parsed)
    if isinstance(out, LockgateError):
        assert not accepted, out
        assert out.kind is ErrorKind.INVALID and "'input'" in out.message
    else:
        assert accepted
        got = out.inputs[0].data
        if datatype in _PACK:  # the nearest value of the type (Python rounds an int to a
            # double first: allow the one-unit difference that double rounding can make)
            want = [
                struct.unpack(_PACK[datatype], struct.pack(_PACK[datatype], v))[0] for v in parsed
            ]
            np.testing.assert_allclose(got, want, rtol=float(np.finfo(got.dtype).eps), atol=0)
        else:
            assert got.tolist() == parsed


@fuzz_settings(400)
@given(
    dims=st.lists(st.sampled_from([0, 1, 2, 3, 7, *HUGE]), min_size=1, max_size=4),
    limit=st.sampled_from([1, 16, 2**26]),
    binary=st.booleans(),
)
@example(dims=[0, 2**63], limit=2**26, binary=True)  # zero next to huge
@example(dims=[2**20, 2**20], limit=2**26, binary=True)  # 8 TiB of FP32
@example(dims=[2**62, 2**62], limit=2**26, binary=False)  # 2**124 elements
def test_element_limit_and_data_size(dims: list[int], limit: int, binary: bool) -> None:
    """TOO_LARGE exactly when the declared dims (a zero counted as one) exceed the limit; else
    INVALID unless the data present is exactly the declared size."""
    spec = ModelSpec("m", "1", (TensorSpec("x", "FP32", (-1,) * len(dims)),), ())
    count, span = math.prod(dims), math.prod(d or 1 for d in dims)
    present = count if count <= 64 else 3
    entry: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": dims}
    tail = b""
    if binary:
        tail = bytes(4 * present)
        entry["parameters"] = {"binary_data_size": len(tail)}
    else:
        entry["data"] = [0.5] * present
    head = json.dumps({"inputs": [entry]}).encode()
    out = decode(
        lambda: codec.decode_request(
            head + tail, "", len(head) if binary else None, "m", None, spec=spec, max_elements=limit
        )
    )
    if span > limit:
        assert isinstance(out, LockgateError) and out.kind is ErrorKind.TOO_LARGE, out
        assert "'x'" in out.message and str(limit) in out.message
    elif present != count:
        assert isinstance(out, LockgateError) and out.kind is ErrorKind.INVALID, out
    else:
        assert not isinstance(out, LockgateError), out
        assert out.inputs[0].data.shape == tuple(dims)


# -- the reported regressions, by name ---------------------------------------------------------
FP32_MODEL = ModelSpec("m", "1", (TensorSpec("input", "FP32", (-1, 16)),), ())
BYTES_MODEL = ModelSpec("m", "1", (TensorSpec("input", "BYTES", (-1, -1)),), ())


def _binary_request(datatype: str, shape: list[int], data: bytes) -> tuple[bytes, int]:
    entry = {"name": "input", "datatype": datatype, "shape": shape}
    entry["parameters"] = {"binary_data_size": len(data)}
    head = json.dumps({"inputs": [entry]}).encode()
    return head + data, len(head)


@pytest.mark.parametrize(
    ("spec", "shape", "kind", "mentions"),
    [
        (FP32_MODEL, [1, 2**27], ErrorKind.INVALID, "datatype BYTES does not match"),
        (BYTES_MODEL, [1, 2**27], ErrorKind.TOO_LARGE, "limit"),
        (BYTES_MODEL, [1, 2**25], ErrorKind.INVALID, "cannot hold"),
        (BYTES_MODEL, [2**20, 2**20], ErrorKind.TOO_LARGE, "limit"),
        (BYTES_MODEL, [0, 2**63], ErrorKind.TOO_LARGE, "limit"),
    ],
    ids=["fp32-model", "over-limit", "under-limit", "8-tib", "zero-next-to-huge"],
)
def test_a_small_body_declaring_many_bytes_elements_allocates_nothing(
    spec: ModelSpec, shape: list[int], kind: ErrorKind, mentions: str
) -> None:
    body, head = _binary_request("BYTES", shape, b"\0\0\0\0xy")  # ~106 bytes in all
    out = decode(lambda: codec.decode_request(body, codec.OCTET, head, "m", None, spec=spec))
    assert isinstance(out, LockgateError) and out.kind is kind and mentions in out.message


def test_more_than_64_dimensions_is_invalid() -> None:
    deep = ModelSpec("m", "1", (TensorSpec("input", "FP32", (-1,) * 70),), ())
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1] * 65, "data": [1.0]}]}
    out = decode(
        lambda: codec.decode_request(json.dumps(doc).encode(), "", None, "m", None, spec=deep)
    )
    assert isinstance(out, LockgateError) and f"at most {MAX_RANK}" in out.message


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [(t, t.partition(";")[0].strip().lower() in codec.INFER_MEDIA) for t in CONTENT_TYPES],
)
def test_content_types(content_type: str, accepted: bool) -> None:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    body = msgpack.packb(doc) if "msgpack" in content_type else json.dumps(doc).encode()
    out = decode(lambda: codec.decode_request(body, content_type, None, "m", None, spec=FP32_MODEL))
    assert isinstance(out, LockgateError) != accepted
    if isinstance(out, LockgateError):
        assert out.kind is ErrorKind.UNSUPPORTED_MEDIA and repr(content_type) in out.message
    label = {"id": "r", "label": 1}
    body = msgpack.packb(label) if "msgpack" in content_type else json.dumps(label).encode()
    feedback = decode(lambda: codec.decode_feedback(body, content_type))
    # the same types but the binary extension's, which feedback has no use for
    assert isinstance(feedback, LockgateError) != (accepted and codec.OCTET not in content_type)


@pytest.mark.parametrize("body", [b"\xc1\xc1", b"\x91" * 2000 + b"\x01"], ids=["format", "stack"])
def test_msgpack_errors_name_their_cause(body: bytes) -> None:
    for out in (
        decode(lambda: codec.decode_request(body, codec.MSGPACK, None, "m", None, spec=FP32_MODEL)),
        decode(lambda: codec.decode_feedback(body, codec.MSGPACK)),
    ):
        assert isinstance(out, LockgateError)
        assert out.message.split(": ", 1)[1] in ("FormatError", "StackError"), out.message
