"""What a request may declare, checked before a decoder allocates anything proportional to it.

A declared shape is only a claim: a 100-byte body can declare 2**40 elements. Every decoder passes
each input's name, datatype and shape, as they arrived, through `InputLimits.declared` before it
builds the input's array. An input the model does not have, a datatype or shape the model refuses,
a rank beyond numpy's, a negative dimension or more elements than a request may carry is then an
error that has cost nothing; the decoder goes on to check the declared size against the bytes
actually present (tensors.py). Products are Python ints: they cannot overflow.
"""

from __future__ import annotations

from typing import Any

from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.serve.transport.tensors import DATATYPES
from lockgate.types import ModelSpec, TensorSpec

MAX_RANK = 64  # numpy's limit on dimensions
_SHOWN = 80  # characters of a client's value quoted in an error message


def shown(value: Any) -> str:
    """`repr(value)`, cut short: error messages quote what the client sent, never all of it."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def reason(exc: BaseException) -> str:
    """An exception's message, or its type's name when it has none (some msgpack errors)."""
    return str(exc) or type(exc).__name__


class InputLimits:
    """One request's checks: the model's inputs, and what is left of its element budget."""

    __slots__ = ("left", "max_elements", "spec")

    def __init__(self, spec: ModelSpec, max_elements: int) -> None:
        self.spec = spec
        self.max_elements = max_elements
        self.left = max_elements

    def input(self, name: Any) -> TensorSpec:
        """The model's input called `name`; refused when the model has none of that name."""
        want = self.spec.input(name) if type(name) is str else None
        if want is None:
            expected = ", ".join(i.name for i in self.spec.inputs)
            raise invalid(
                f"unknown input {shown(name)} for model {self.spec.name} (expects: {expected})"
            )
        return want

    def declared(self, name: Any, datatype: Any, shape: Any) -> tuple[TensorSpec, tuple[int, ...]]:
        """Check an input as declared (name, datatype, shape) and take its elements from the
        budget; returns the model's spec of that input (its name is safe to quote) and the
        shape: integers >= 0 (`type`, not isinstance: True is not a dimension), the model's
        rank and its fixed dimensions (-1 = any). One pass: this runs for every input."""
        want = self.input(name)
        if datatype != want.datatype:
            raise _datatype_error(want, datatype)
        fixed = want.shape
        if (type(shape) is list or type(shape) is tuple) and len(shape) == len(fixed) <= MAX_RANK:
            count = span = 1
            for i, d in enumerate(shape):
                w = fixed[i]
                if type(d) is not int or d < 0 or (d != w and w >= 0):
                    break
                count *= d
                span *= d or 1
            else:
                self._take(want, shape, count, span)
                return want, tuple(shape)
        raise _shape_error(want, shape)

    def take(self, want: TensorSpec, dims: tuple[int, ...]) -> None:
        """Take the elements of `dims` (already checked) from the budget."""
        count = span = 1
        for d in dims:
            count *= d
            span *= d or 1
        self._take(want, dims, count, span)

    def _take(self, want: TensorSpec, dims: Any, count: int, span: int) -> None:
        # `span` counts a zero dimension as one: numpy refuses an empty array whose other
        # dimensions multiply beyond its limits.
        if span > self.left:
            raise LockgateError(
                ErrorKind.TOO_LARGE,
                f"input {want.name!r}: shape {shown(list(dims))} is beyond the limit of "
                f"{self.max_elements} elements per request (all inputs together)",
            )
        self.left -= count


def _datatype_error(want: TensorSpec, datatype: Any) -> LockgateError:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        return invalid(f"input {want.name!r}: unsupported datatype {shown(datatype)}")
    return invalid(
        f"input {want.name!r}: datatype {datatype} does not match the model's {want.datatype}"
    )


def _shape_error(want: TensorSpec, shape: Any) -> LockgateError:
    """Which rule a refused shape broke."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK:
        return invalid(
            f"input {want.name!r}: shape must be a list of at most {MAX_RANK} non-negative "
            f"integers, got {shown(shape)}"
        )
    if not all(type(d) is int and d >= 0 for d in shape):
        return invalid(
            f"input {want.name!r}: shape must be a list of non-negative integers, "
            f"got {shown(shape)}"
        )
    return invalid(
        f"input {want.name!r}: shape {shown(list(shape))} does not match the model's "
        f"{list(want.shape)} (-1 = any)"
    )
