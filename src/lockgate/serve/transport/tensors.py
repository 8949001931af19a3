"""Open Inference Protocol datatypes <-> numpy, and the raw (binary) tensor layout shared by the
HTTP binary extension, msgpack bodies and gRPC raw contents."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from lockgate.errors import invalid
from lockgate.types import NUMERIC_DTYPES as NUMERIC_DTYPES  # defined there for monitor/ too
from lockgate.types import numpy_dtype as numpy_dtype

DATATYPES = frozenset((*NUMERIC_DTYPES, "BYTES"))
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in NUMERIC_DTYPES.items()}
_U32 = struct.Struct("<I")


def datatype_of(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise invalid(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def array_from_raw(
    name: str, datatype: str, shape: tuple[int, ...], buf: bytes | bytearray | memoryview
) -> np.ndarray[Any, Any]:
    """Interpret raw little-endian bytes as a tensor without copying (numeric types). The
    declared size is checked against the bytes present before anything is allocated."""
    count = element_count(shape)
    if datatype == "BYTES":
        if count * _U32.size > len(buf):  # every element has its 4-byte length
            raise invalid(
                f"input {name!r}: {len(buf)} bytes of data cannot hold the {count} BYTES "
                f"elements of shape {list(shape)} (each needs at least {_U32.size})"
            )
        return _bytes_from_raw(name, shape, count, buf)
    dtype = numpy_dtype(datatype)
    if len(buf) != count * dtype.itemsize:
        raise invalid(
            f"input {name!r}: {len(buf)} bytes of data for shape {list(shape)} of {datatype} "
            f"(expected {count * dtype.itemsize})"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
    if datatype == "BOOL" and count and np.frombuffer(buf, np.uint8).max() > 1:
        raise invalid(f"input {name!r}: BOOL data must be bytes 0 or 1")
    return arr


def _bytes_from_raw(
    name: str, shape: tuple[int, ...], count: int, buf: bytes | bytearray | memoryview
) -> np.ndarray[Any, Any]:
    mv = memoryview(buf)
    out = np.empty(count, dtype=object)
    pos, end = 0, len(mv)
    for i in range(count):
        if pos + 4 > end:
            raise invalid(f"input {name!r}: BYTES data ends inside element {i} of {count}")
        (n,) = _U32.unpack_from(mv, pos)
        pos += 4
        if pos + n > end:
            raise invalid(f"input {name!r}: BYTES element {i} claims {n} bytes past the data end")
        out[i] = bytes(mv[pos : pos + n])
        pos += n
    if pos != end:
        raise invalid(f"input {name!r}: {end - pos} trailing bytes after {count} BYTES elements")
    return out.reshape(shape)


def raw_from_array(arr: np.ndarray[Any, Any]) -> bytes:
    """The raw wire layout of a tensor: little-endian row-major, BYTES length-prefixed."""
    if arr.dtype.kind in "OSU":
        parts = []
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()
