"""Features derived from inputs too wide, or not numeric, to follow value by value.

A numeric input with more values per row than the monitor follows (an image, an embedding) is
summarised per row: its mean, std and L2 norm, and a seeded random projection to a few
dimensions (`tensor:mean`, `tensor:std`, `tensor:l2`, `tensor:proj0` ...). A string input
(BYTES, one value per row) is summarised by its length in bytes, whether it is empty, and a
stable hash of the value into `TEXT_BUCKETS` buckets (`tensor:length`, `tensor:empty`,
`tensor:hash`, the last a categorical feature). The derived columns are then ordinary monitored
features: the reference profile is built from the same derivation of the reference data.

A row wider than `SAMPLE_VALUES` is read through a fixed sample: `SAMPLE_BLOCKS` blocks of
`BLOCK` consecutive values, evenly spaced over the row (`sample_blocks`). Its moments are those of
the sample (the norm scaled to the row's width) and its projection taps lie in it, so an image
costs a few hundred cache lines instead of all of its own: a [3, 224, 224] FP32 image read from
memory, as under load each new one is, costs about a quarter of reading all 600 KB (30 against
120 us in `benchmarks/wide_bench.py`), which matters when the model itself reads it only once.
The sample is fixed per width, so the reference and the traffic are summarised alike; a
brightness or contrast change moves it as it moves the whole row. Profiles stored with summary
version 1 (before the sample) keep reading every value (`Derivation.version`).

The projection is a very sparse random projection (Li, Hastie and Church, 2006): each of its
`PROJECTIONS` directions has `taps` nonzero weights +-1/sqrt(taps) on distinct coordinates of
the row's sample, all drawn from a generator seeded with (seed, tensor name, width). The seed is
stored with the version's profiles, so the reference and every gateway draw the same matrix.

A wide batch is summarised by one compiled kernel (`kernels.summary.wide_summary`, GIL released):
per row, one pass over its sample sums the values and their squares in float64, then each
direction gathers its taps while the sample is still in cache; nothing per row in Python. The
moments see every value of the sample, a projection only its taps: a NaN or inf reaches the
projections that tap it, and the moments when it lies in the sample, as in numpy.
`Projection.apply` and `dense` are the references.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from lockgate.monitor.kernels.summary import fnv1a_buckets, wide_summary

Array = np.ndarray[Any, Any]

DEFAULT_SEED = 19_2024  # the projection seed of profiles that do not store one
PROJECTIONS = 8  # directions of the random projection of a wide input
MIN_TAPS = 256  # nonzero weights per direction, at least (all values when narrower)
TEXT_BUCKETS = 64  # hash buckets of a string input's categorical feature
SAMPLE_BLOCKS = 256  # blocks of a wide row's sample
BLOCK = 16  # values per block: a 64-byte cache line of float32
SAMPLE_VALUES = SAMPLE_BLOCKS * BLOCK  # rows up to this wide are read whole
SUMMARY_VERSION = 2  # 2: wide rows read through their sample; 1: every value
WIDE_STATS = ("mean", "std", "l2")
TEXT_STATS = ("length", "empty", "hash")

Kind = Literal["wide", "text"]


@dataclass(frozen=True)
class Projection:
    """A sparse ``[width, dims]`` projection kept as its nonzero rows: ``columns`` (ascending
    coordinates with a nonzero weight) and ``weights[len(columns), dims]``."""

    columns: Array
    weights: Array

    def apply(self, values: Array) -> Array:
        """``values[rows, width] @ matrix`` as float32, touching only the tapped columns."""
        taken = np.take(values, self.columns, axis=1).astype(np.float32, copy=False)
        return np.asarray(taken @ self.weights, dtype=np.float32)

    def dense(self, width: int) -> Array:
        """The whole matrix (for checks: `apply` never builds it)."""
        matrix = np.zeros((width, self.weights.shape[1]), np.float32)
        matrix[self.columns] = self.weights
        return matrix

    @cached_property
    def taps(self) -> tuple[Array, Array]:
        """Per direction, its nonzero weights: (coordinates ``[dims, taps]`` int64, weights
        ``[dims, taps]`` float64), as the summary kernel gathers them."""
        directions, rows = np.nonzero(self.weights.T)  # by direction, then ascending column
        counts = np.bincount(directions, minlength=self.weights.shape[1])
        if counts.size and counts.min() != counts.max():
            raise ValueError(f"projection directions of unequal taps: {counts.tolist()}")
        shape = (self.weights.shape[1], counts.max() if counts.size else 0)
        coordinates = self.columns[rows].reshape(shape)
        return coordinates, self.weights.T[directions, rows].astype(np.float64).reshape(shape)


def sample_blocks(width: int, version: int = SUMMARY_VERSION) -> tuple[Array, int]:
    """The sample a row of `width` values is read through: (block starts, block length), the
    whole row (``[0]``, `width`) up to `SAMPLE_VALUES` values or in summary version 1."""
    if version < 2 or width <= SAMPLE_VALUES:
        return np.zeros(1, np.int64), width
    step = (width - BLOCK) // (SAMPLE_BLOCKS - 1)  # >= BLOCK: the blocks are disjoint
    return np.arange(SAMPLE_BLOCKS, dtype=np.int64) * step, BLOCK


def sample_positions(width: int, version: int = SUMMARY_VERSION) -> Array:
    """The coordinates of a row's sample, ascending (all of them for a narrow row)."""
    starts, block = sample_blocks(width, version)
    return (starts[:, None] + np.arange(block, dtype=np.int64)).ravel()


def projection(
    seed: int, tensor: str, width: int, dims: int = PROJECTIONS, version: int = SUMMARY_VERSION
) -> Projection:
    """The projection of `tensor` (`width` values per row) on the row's sample, drawn from
    `seed`: the same arguments give the same matrix on every host."""
    positions = sample_positions(width, version)
    taps = min(positions.size, max(MIN_TAPS, math.ceil(math.sqrt(positions.size))))
    rng = np.random.default_rng([seed, zlib.crc32(tensor.encode()), width])
    picks = np.stack(
        [positions[rng.choice(positions.size, taps, replace=False)] for _ in range(dims)]
    )
    signs = rng.choice(np.array([-1.0, 1.0]), size=(dims, taps))
    columns = np.unique(picks)
    weights = np.zeros((columns.size, dims), np.float32)
    for d in range(dims):  # dims iterations, once per version
        weights[np.searchsorted(columns, picks[d]), d] = signs[d] / math.sqrt(taps)
    return Projection(columns.astype(np.int64), weights)


@dataclass(frozen=True)
class Derivation:
    """How a version's wide inputs are summarised, stored with its profiles so that every
    gateway summarises the traffic as the reference was: the projections' seed, the summary
    version (`SUMMARY_VERSION`)."""

    seed: int = DEFAULT_SEED
    version: int = SUMMARY_VERSION


CURRENT_DERIVATION = Derivation()  # of profiles built now


@dataclass(frozen=True)
class Summary:
    """How one input tensor is summarised into feature columns."""

    tensor: str
    kind: Kind
    width: int  # values per monitored row
    derivation: Derivation = CURRENT_DERIVATION  # that of the profiles this summary feeds

    @property
    def names(self) -> list[str]:
        if self.kind == "text":
            return [f"{self.tensor}:{s}" for s in TEXT_STATS]
        projected = [f"{self.tensor}:proj{i}" for i in range(PROJECTIONS)]
        return [f"{self.tensor}:{s}" for s in WIDE_STATS] + projected

    @property
    def categorical(self) -> list[int]:
        """Columns (offsets among `names`) that are categories, whatever the reference shows."""
        return [TEXT_STATS.index("hash")] if self.kind == "text" else []

    @cached_property
    def projection(self) -> Projection:
        d = self.derivation
        return projection(d.seed, self.tensor, self.width, version=d.version)

    @cached_property
    def sample(self) -> tuple[Array, int]:
        """(block starts, block length) of the values a row's moments read."""
        return sample_blocks(self.width, self.derivation.version)

    def columns(self, values: Array, rows: int) -> Array:
        """The derived features ``[rows, len(names)]`` (float32) of a batch whose values hold
        `rows` monitored rows of `width` values."""
        if self.kind == "text":
            return text_columns(values)
        return self._wide(values.reshape(rows, self.width))

    def _wide(self, values: Array) -> Array:
        """One compiled pass per row (`wide_summary`): float32, float64 and uint8 (pixels) as
        they come, so only the sample is read (a copy only when not C-contiguous); other
        integers and float16 as float32 (exact), wider or non-native floats as float64."""
        if values.dtype not in _AS_THEY_COME:
            wide = values.dtype.kind == "f" and values.dtype.itemsize >= 8
            values = values.astype(np.float64 if wide else np.float32)
        values = np.ascontiguousarray(values)
        out = np.empty((values.shape[0], len(WIDE_STATS) + PROJECTIONS), np.float32)
        taps, weights = self.projection.taps
        starts, block = self.sample
        wide_summary(values, starts, block, taps, weights, out)
        return out


_AS_THEY_COME = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint8))


def text_columns(values: Array) -> Array:
    """``[values, 3]``, one monitored row per value: its length in bytes, 1.0 when empty, the
    FNV-1a bucket of the whole value (str values count as their UTF-8 bytes)."""
    items = _as_bytes(values)
    lengths = np.fromiter(map(len, items), np.int64, count=len(items))
    buckets = np.empty(len(items), np.int64)
    data = np.frombuffer(b"".join(items), np.uint8)
    fnv1a_buckets(data, np.cumsum(lengths), TEXT_BUCKETS, buckets)
    out = np.empty((len(items), len(TEXT_STATS)), np.float32)
    out[:, 0] = lengths
    out[:, 1] = lengths == 0
    out[:, 2] = buckets
    return out


def _as_bytes(values: Array) -> list[bytes]:
    values = values.reshape(-1)
    if values.dtype.kind == "U":
        values = np.char.encode(values, "utf-8")
    items = values.tolist()
    if values.dtype.kind == "O" and not all(map(bytes.__instancecheck__, items)):
        # str objects (made in-process, not decoded from a request): encode them
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in items]
    return items  # type: ignore[no-any-return]
