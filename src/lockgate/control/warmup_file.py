"""A version's warm-up inputs (`warmup.npz`, one array per input name), given at registration
with `--warmup FILE.npz` and stored with the version (Triton's model_warmup, as data).

They are checked against the schema and run once through the model at registration, so that
a gateway's warm-up never depends on made-up data the model may rightly refuse (unknown
categories, a sample rate of 0, an empty recurrent state). Strings are stored as unicode
arrays (no pickle).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.errors import invalid
from lockgate.types import ModelSpec, TensorSpec, numpy_dtype

WARMUP_FILE = "warmup.npz"
Array = np.ndarray[Any, Any]
Arrays = dict[str, Array]


def read_warmup(source: Path | Mapping[str, Any], spec: ModelSpec, what: str = "warm-up") -> Arrays:
    """The warm-up arrays of `source` (an `.npz` file or arrays by input name), checked
    against the inputs of `spec` and converted to their datatypes. INVALID naming the input
    when they do not fit (`what` names the data: warm-up, reference)."""
    if isinstance(source, Path):
        try:
            with np.load(source, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            raise invalid(f"cannot read the {what} file {source}: {exc}") from None
    else:
        arrays = {name: np.asarray(value) for name, value in source.items()}
    names = {t.name for t in spec.inputs}
    missing, extra = sorted(names - arrays.keys()), sorted(arrays.keys() - names)
    if missing or extra:
        parts = [f"lacks input(s) {', '.join(missing)}" if missing else ""]
        parts.append(f"has arrays for no input: {', '.join(extra)}" if extra else "")
        raise invalid(
            f"the {what} data {' and '.join(p for p in parts if p)} "
            f"(one array per input: {', '.join(sorted(names))})"
        )
    return {t.name: _convert(t, arrays[t.name], what) for t in spec.inputs}


def _convert(t: TensorSpec, array: Array, what: str) -> Array:
    kind = array.dtype.kind
    if t.datatype == "BYTES":
        if kind == "S":
            try:
                array = np.char.decode(array, "utf-8")
            except UnicodeDecodeError:
                raise invalid(f"{what} input {t.name!r} is not valid UTF-8") from None
        elif kind == "O" and all(isinstance(v, str | bytes) for v in array.reshape(-1)):
            array = np.array(
                [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.reshape(-1)],
                dtype=str,
            ).reshape(array.shape)
        elif kind != "U":
            raise invalid(f"{what} input {t.name!r} must hold strings, got {array.dtype}")
    elif kind not in "biuf":
        raise invalid(f"{what} input {t.name!r} must be numeric ({t.datatype}), got {array.dtype}")
    else:
        array = array.astype(numpy_dtype(t.datatype))
    if len(array.shape) != len(t.shape) or any(
        d >= 0 and g != d for g, d in zip(array.shape, t.shape, strict=True)
    ):
        raise invalid(
            f"{what} input {t.name!r} has shape {list(array.shape)}, the model's is "
            f"{list(t.shape)} (-1 = any)"
        )
    if t.shape and t.shape[0] == -1 and array.shape[0] == 0:
        raise invalid(f"{what} input {t.name!r} has no rows")
    return array


def feeds_for_session(arrays: Arrays) -> Arrays:
    """Arrays as an onnxruntime session takes them (strings as `str` objects)."""
    return {k: a.astype(object) if a.dtype.kind == "U" else a for k, a in arrays.items()}


def to_npz_bytes(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def load_npz(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
