"""Hypothesis strategies for the decoder fuzz suite: models (ModelSpecs) of every datatype with
fixed and dynamic dimensions, and requests for them, from well-formed to hostile (huge, negative,
zero-next-to-huge and over-deep shapes, out-of-range numbers, lying sizes, junk)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from lockgate.serve.transport.tensors import DATATYPES, numpy_dtype, raw_from_array
from lockgate.types import ModelSpec, TensorSpec

# LOCKGATE_FUZZ_SCALE multiplies every property's examples (loadtests/fuzz.py runs long ones).
SCALE = max(1, int(os.environ.get("LOCKGATE_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int, seconds: float = 5.0) -> settings:
    """`examples` per run (times SCALE); `seconds` per example is generous on a busy machine:
    a decode takes microseconds, and only a runaway one comes near it."""
    return settings(
        max_examples=examples * SCALE,
        deadline=timedelta(seconds=seconds),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


NAMES = ("input", "a", "b")
DATATYPE_NAMES = sorted(DATATYPES)
# Dimensions a hostile client declares: beyond the element budget, int32, int64 and uint64.
HUGE = (2**20, 2**26, 2**26 + 1, 2**27, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1)
CONTENT_TYPES = (
    "",
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/octet-stream",
    "application/msgpack",
    "application/x-msgpack",
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/jsonx",
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def specs(draw: st.DrawFn, max_inputs: int = 3) -> ModelSpec:
    """A model with 1..max_inputs inputs of any datatype, rank 0-3, fixed or dynamic dims."""
    inputs = []
    for name in NAMES[: draw(st.integers(1, max_inputs))]:
        datatype = draw(st.sampled_from(DATATYPE_NAMES))
        shape = tuple(draw(st.lists(st.sampled_from([-1, -1, 0, 1, 2, 3]), max_size=3)))
        inputs.append(TensorSpec(name, datatype, shape))
    return ModelSpec("m", "1", tuple(inputs), (TensorSpec("out", "FP32", (-1,)),))


@st.composite
def shapes(draw: st.DrawFn, want: TensorSpec) -> Any:
    """A declared shape for `want`: mostly one the model accepts, else hostile or junk."""
    fitting = [d if d >= 0 else draw(st.integers(0, 3)) for d in want.shape]
    kind = draw(st.sampled_from(["fitting"] * 4 + ["huge", "wild", "deep", "junk"]))
    if kind == "fitting":
        return fitting
    if kind == "huge":  # the model's rank, a dynamic dim (or all of them) hostile
        return [draw(st.sampled_from((0, 1, *HUGE))) if d < 0 else d for d in want.shape]
    if kind == "wild":
        dims = st.one_of(st.integers(-3, 5), st.sampled_from(HUGE))
        return draw(st.lists(dims, max_size=6))
    if kind == "deep":
        return draw(st.lists(st.integers(0, 2), min_size=60, max_size=70))
    return draw(json_values)


hostile_shapes = st.one_of(
    st.lists(st.sampled_from([-1, 0, 1, 2, 16, *HUGE]), max_size=4),
    st.lists(st.just(1), min_size=63, max_size=66),
)


def small_count(shape: Any) -> int | None:
    """The element count of a well-formed shape of at most 64 elements, else None."""
    if not isinstance(shape, list) or len(shape) > 64:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 64 for d in shape):
        return None
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return count if count <= 64 else None


@st.composite
def arrays(draw: st.DrawFn, datatype: str, count: int) -> np.ndarray[Any, Any]:
    """`count` valid values of `datatype` (flat)."""
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        out = np.empty(count, dtype=object)
        out[:] = items
        return out
    dtype = numpy_dtype(datatype)
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    arr = np.frombuffer(raw, dtype=dtype).copy()
    if datatype == "BOOL":
        arr = arr.view(np.uint8) & 1
        return arr.astype(bool)
    if dtype.kind == "f":
        arr[~np.isfinite(arr)] = 0  # JSON cannot carry them
    return arr


def json_data(arr: np.ndarray[Any, Any]) -> list[Any]:
    if arr.dtype == object:
        return [x.decode("latin-1") for x in arr]
    return [x.item() for x in arr]  # type: ignore[union-attr]


@st.composite
def raw_blobs(draw: st.DrawFn, datatype: str, count: int | None) -> bytes:
    """Raw tensor bytes: exact for a small count, else (or sometimes) any bytes at all."""
    if count is not None and draw(st.booleans()):
        return raw_from_array(draw(arrays(datatype, count)))
    return draw(st.binary(max_size=80))


@st.composite
def request_docs(draw: st.DrawFn, spec: ModelSpec, binary: bool) -> tuple[dict[str, Any], bytes]:
    """A request document for `spec` (inputs in order, or shuffled, dropped, renamed, retyped)
    and the binary bytes its inputs point at (`binary_data_size`), when `binary`."""
    inputs, blobs = [], []
    for want in spec.inputs:
        if draw(st.integers(0, 9)) == 0:
            continue  # an input left out
        name = draw(st.sampled_from([want.name] * 6 + ["nope", ""]))
        datatype = draw(st.sampled_from([want.datatype] * 6 + [*DATATYPE_NAMES, "FP8"]))
        shape = draw(shapes(want))
        count = small_count(shape)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary and draw(st.integers(0, 4)):
            blob = draw(raw_blobs(datatype if datatype in DATATYPES else "UINT8", count))
            size = draw(st.sampled_from([len(blob)] * 4 + [0, len(blob) + 1, 2**40]))
            entry["parameters"] = {"binary_data_size": size}
            blobs.append(blob)
        elif count is not None and datatype in DATATYPES and draw(st.integers(0, 4)):
            entry["data"] = json_data(draw(arrays(datatype, count)))
        else:
            entry["data"] = draw(json_values)
        inputs.append(entry)
    if draw(st.integers(0, 9)) == 0:
        inputs.reverse()
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=8), json_values))
    if draw(st.integers(0, 3)) == 0:
        doc["outputs"] = draw(
            st.one_of(st.lists(st.fixed_dictionaries({"name": st.text(max_size=4)})), json_values)
        )
    if draw(st.integers(0, 3)) == 0:
        doc["parameters"] = draw(json_values)
    return doc, b"".join(blobs)
