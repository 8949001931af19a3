"""Tensor `data` as JSON (or msgpack lists) -> numpy arrays, refusing every lossy conversion:
floats for integers, numbers for BOOL, and values beyond the datatype's range (an integer that
does not fit, a float that would become infinite)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lockgate.errors import LockgateError, invalid
from lockgate.serve.transport.tensors import element_count, numpy_dtype

_INT_KINDS = "iu"
# The smallest magnitudes that round to infinity in the narrower float types: the largest finite
# value plus half a unit in the last place (the tie rounds to even, which is infinity).
_OVERFLOW = {"FP16": 65520.0, "FP32": 2.0**128 * (1 - 2.0**-25)}


def array_from_json(
    name: str, datatype: str, shape: tuple[int, ...], data: Any
) -> np.ndarray[Any, Any]:
    """JSON `data` (flat or nested, row-major) -> array of `shape`. Everything allocated here is
    proportional to the data present, not to the declared shape."""
    if not isinstance(data, list):
        data = [data]
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(x, (str, bytes)) for x in flat):
            raise invalid(f"input {name!r}: BYTES data must be strings")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = [x.encode() if isinstance(x, str) else x for x in flat]
    else:
        try:
            arr = np.asarray(data)
            if arr.dtype.kind == "f" and numpy_dtype(datatype).kind in _INT_KINDS:
                # Integers beyond int64 mixed with others make numpy pick float64: judge the
                # exact Python ints instead (rare, so the per-element check is affordable).
                arr = _exact_ints(name, datatype, data, arr)
        except ValueError:
            raise invalid(
                f"input {name!r}: data is ragged (nested lists of unequal length)"
            ) from None
        arr = _cast(name, datatype, arr)
    if arr.size != count:
        raise invalid(
            f"input {name!r}: {arr.size} data elements for shape {list(shape)} ({count} expected)"
        )
    return arr.reshape(shape)


def _cast(name: str, datatype: str, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    dtype = numpy_dtype(datatype)
    kind = arr.dtype.kind
    if arr.size == 0:
        return arr.astype(dtype)
    if datatype == "BOOL":
        if kind != "b":
            raise invalid(f"input {name!r}: BOOL data must be true/false")
        return arr
    if kind not in "biuf":
        raise invalid(f"input {name!r}: {datatype} data must be numbers")
    if dtype.kind in _INT_KINDS:
        if kind not in _INT_KINDS:
            raise invalid(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            bad = arr[(arr < info.min) | (arr > info.max)]
            raise out_of_range(name, datatype, bad.flat[0])
        return arr.astype(dtype, copy=False)
    if kind == "b":
        raise invalid(f"input {name!r}: {datatype} data must be numbers")
    limit = _OVERFLOW.get(datatype)
    if limit is not None and arr.dtype.itemsize > dtype.itemsize and not _surely_below(arr, limit):
        # Checked before the cast, which would turn such values into inf (and warn).
        magnitude = np.abs(arr.astype(np.float64, copy=False))
        bad = (magnitude >= limit) & np.isfinite(magnitude)  # inf itself is representable
        if bad.any():
            raise out_of_range(name, datatype, arr[bad].flat[0])
    return arr.astype(dtype, copy=False)


def _surely_below(arr: np.ndarray[Any, Any], limit: float) -> bool:
    """True when every |value| < limit, by one cheap reduction: no element's square exceeds the
    sum of squares. False (check each) for integers, NaN, inf, or a sum of squares that big."""
    return bool(arr.dtype.kind == "f" and np.vdot(arr, arr) < limit * limit)


def out_of_range(name: str, datatype: str, value: Any) -> LockgateError:
    dtype = numpy_dtype(datatype)
    info: Any = np.iinfo(dtype) if dtype.kind in _INT_KINDS else np.finfo(dtype)
    return invalid(
        f"input {name!r}: value {value} out of range for {datatype} ({info.min} to {info.max})"
    )


def _exact_ints(
    name: str, datatype: str, data: list[Any], arr: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    flat = _flatten(data)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
        return arr  # genuinely floats: _cast refuses them with the usual message
    info = np.iinfo(numpy_dtype(datatype))
    for x in flat:
        if not info.min <= x <= info.max:
            raise out_of_range(name, datatype, x)
    return np.asarray(flat, dtype=numpy_dtype(datatype)).reshape(arr.shape)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out
