"""Latency sketch: a fixed-size integer array that merges by addition, with quantile read-out and
Prometheus export.

One :class:`LatencySketch` per model version and worker; ``/metrics`` of any worker adds the
arrays of all of them (and Prometheus sums replicas), which is exact because every field,
including the sum (integer nanoseconds), is an integer count. The bucket layout and its accuracy
are those of :mod:`lockgate.monitor.kernels.ddsketch` (Prometheus native-histogram schema 6).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lockgate.monitor.kernels import ddsketch as dd

_HEADER = struct.Struct("<4sBbHiiI")
_MAGIC = b"LGLS"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class NativeHistogram:
    """A sketch as a Prometheus native histogram (positive buckets only; latencies are >= 0).

    ``spans`` are ``(offset, length)`` pairs: the first offset is the absolute bucket index,
    later ones the number of empty buckets skipped since the previous span; ``deltas`` are the
    bucket counts of all spans in order, each as the difference to the previous one.
    Values at or below ``zero_threshold`` (2**-20 s) are in ``zero_count``; values above the
    sketch range (2048 s) are reported in the bucket just above ``INDEX_MAX``.
    """

    schema: int
    zero_threshold: float
    zero_count: int
    count: int
    sum: float
    spans: tuple[tuple[int, int], ...]
    deltas: tuple[int, ...]


@functools.cache
def _slot_values() -> NDArray[np.float64]:
    """The value reported for each slot of ``state[SLOT_ZERO:]``: 0 for zeros, the range limits
    for under- and overflow (quantiles there are clamped to the sketch range), and the bucket
    representative otherwise."""
    return np.concatenate(([0.0, dd.MIN_VALUE], dd.bucket_representatives(), [dd.MAX_VALUE]))


@functools.cache
def _upper_bounds() -> NDArray[np.float64]:
    return dd.bucket_upper_bounds()


class LatencySketch:
    """Mergeable latency distribution in seconds, relative accuracy 0.54 % on 0.95 us .. 2048 s."""

    __slots__ = ("_state",)
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(self) -> None:
        self._state = dd.new_state()

    @classmethod
    def from_state(cls, state: ArrayLike) -> LatencySketch:
        """A sketch owning a copy of ``state`` (e.g. the sum of several workers' arrays)."""
        array = np.array(state, dtype=np.int64, copy=True)
        if array.shape != (dd.STATE_SIZE,):
            raise ValueError(f"sketch state must have shape ({dd.STATE_SIZE},)")
        sketch = cls()
        sketch._state = array
        return sketch

    @property
    def state(self) -> NDArray[np.int64]:
        """The live state array (read-only view); add these to merge sketches elsewhere."""
        view = self._state.view()
        view.flags.writeable = False
        return view

    def add(self, values: ArrayLike) -> None:
        """Record latencies in seconds (any shape); NaN and negatives are counted as invalid."""
        array = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        dd.sketch_add(array, self._state)

    def merge(self, other: LatencySketch) -> None:
        """Add ``other`` into this sketch (exact, commutative, associative)."""
        self._state += other._state

    def reset(self) -> None:
        """Forget everything (start a new window)."""
        self._state[:] = 0

    def copy(self) -> LatencySketch:
        """An independent sketch with the same state."""
        return LatencySketch.from_state(self._state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySketch):
            return NotImplemented
        return bool(np.array_equal(self._state, other._state))

    @property
    def count(self) -> int:
        """Number of valid (non-negative, non-NaN) values."""
        return int(self._state[dd.SLOT_ZERO :].sum())

    @property
    def invalid(self) -> int:
        """Number of NaN or negative values seen (excluded from everything else)."""
        return int(self._state[dd.SLOT_INVALID])

    @property
    def sum_ns(self) -> int:
        """Sum of the values in integer nanoseconds (exact under merge)."""
        return int(self._state[dd.SLOT_SUM_NS])

    @property
    def sum(self) -> float:
        """Sum of the values in seconds."""
        return self.sum_ns / 1e9

    def quantiles(self, qs: ArrayLike) -> NDArray[np.float64]:
        """Quantiles with the rank definition of ``numpy.quantile(method="inverted_cdf")``.

        The q-quantile is the value of rank ``k = ceil(q * n)`` (1-based, clipped to ``[1, n]``,
        ``q * n`` in float64 as numpy computes it), i.e. the smallest value whose empirical CDF
        reaches q. The sketch returns its bucket's representative, within 0.54 % of it; zeros
        read as 0 and values outside the range as the range limits. NaN when empty.
        """
        q = np.asarray(qs, dtype=np.float64)
        if np.any(~((q >= 0.0) & (q <= 1.0))):
            raise ValueError("quantiles must be in [0, 1]")
        cumulative = np.cumsum(self._state[dd.SLOT_ZERO :])
        n = int(cumulative[-1])
        if n == 0:
            return np.full(q.shape, np.nan)
        rank = np.clip(np.ceil(q * n), 1, n)
        slot = np.searchsorted(cumulative, rank, side="left")
        out: NDArray[np.float64] = _slot_values()[slot]
        return out

    def quantile(self, q: float) -> float:
        """One quantile (see :meth:`quantiles`)."""
        return float(self.quantiles(q))

    def cumulative_buckets(self, upper_bounds: Sequence[float]) -> list[int]:
        """Classic Prometheus ``le`` buckets: for each bound, the values known to be ``<= le``.

        A bucket counts toward ``le`` when its whole range is ``<= le``, so the count is exact
        when ``le`` is a bucket boundary (any ``2**(k/64)``, e.g. powers of two) and otherwise
        misses only the one bucket straddling ``le`` (values within 1.1 % of it). ``+inf`` gives
        the total count; bounds must be non-decreasing, as Prometheus requires.
        """
        bounds = np.asarray(upper_bounds, dtype=np.float64)
        if bounds.size and np.any(np.diff(bounds) < 0):
            raise ValueError("bucket bounds must be non-decreasing")
        state = self._state
        first, over = dd.SLOT_FIRST_BUCKET, dd.SLOT_OVERFLOW
        cumulative = np.concatenate(([0], np.cumsum(state[first:over])))
        n_full = np.searchsorted(_upper_bounds(), bounds, side="right")
        result = cumulative[n_full] + np.where(bounds >= dd.MIN_VALUE, state[dd.SLOT_UNDERFLOW], 0)
        result = result + np.where(bounds >= 0.0, state[dd.SLOT_ZERO], 0)
        result = np.where(np.isposinf(bounds), self.count, result)
        return [int(c) for c in result]

    def native_histogram(self) -> NativeHistogram:
        """The sketch as Prometheus native-histogram fields (schema 6): :class:`NativeHistogram`.

        Runs of buckets separated by at most two empty ones share a span (as the Go client does).
        """
        state = self._state
        counts = state[dd.SLOT_FIRST_BUCKET : dd.SLOT_OVERFLOW + 1]  # last: overflow
        nonzero = np.flatnonzero(counts)
        spans: list[tuple[int, int]] = []
        values: list[NDArray[np.int64]] = []
        if nonzero.size:
            cut = np.flatnonzero(np.diff(nonzero) > 3)
            starts = nonzero[np.concatenate(([0], cut + 1))]
            ends = nonzero[np.concatenate((cut, [nonzero.size - 1]))]
            previous_end = None
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                offset = start + dd.INDEX_MIN if previous_end is None else start - previous_end - 1
                spans.append((offset, end - start + 1))
                values.append(counts[start : end + 1])
                previous_end = end
        flat = np.concatenate(values) if values else np.zeros(0, dtype=np.int64)
        deltas = np.diff(flat, prepend=0)
        return NativeHistogram(
            schema=dd.SCHEMA,
            zero_threshold=dd.MIN_VALUE,
            zero_count=int(state[dd.SLOT_ZERO] + state[dd.SLOT_UNDERFLOW]),
            count=self.count,
            sum=self.sum,
            spans=tuple(spans),
            deltas=tuple(int(d) for d in deltas),
        )

    def to_bytes(self) -> bytes:
        """Portable encoding for shipping to other replicas: a 20-byte header that pins the
        layout, then the state as little-endian int64."""
        header = _HEADER.pack(
            _MAGIC, _VERSION, dd.SCHEMA, 0, dd.INDEX_MIN, dd.INDEX_MAX, dd.STATE_SIZE
        )
        return header + self._state.astype("<i8", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        """Decode :meth:`to_bytes`; raises ValueError on any other layout."""
        if len(data) != _HEADER.size + 8 * dd.STATE_SIZE:
            raise ValueError("sketch bytes have the wrong length")
        magic, version, schema, _, index_min, index_max, size = _HEADER.unpack_from(data)
        layout = (dd.SCHEMA, dd.INDEX_MIN, dd.INDEX_MAX, dd.STATE_SIZE)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a lockgate latency sketch")
        if (schema, index_min, index_max, size) != layout:
            raise ValueError("sketch layout differs from this build")
        return cls.from_state(np.frombuffer(data, dtype="<i8", offset=_HEADER.size))
