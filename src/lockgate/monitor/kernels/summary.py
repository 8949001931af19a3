"""Per-row summaries of inputs too wide to follow value by value.

- ``wide_summary``: an image or embedding row's mean, std, L2 norm and sparse random projections,
  in one pass over the row's sample (the whole row, or fixed blocks of a wide one) and then its
  projection taps, which lie in the sample, while it is in cache.
- ``fnv1a_buckets``: a stable hash bucket per string for text inputs: FNV-1a, 64 bits, the same
  on every process, host and Python version (Python's ``hash`` of bytes is salted per process).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lockgate.monitor.kernels.jit import jit, jit_sums

Array = np.ndarray[Any, Any]

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
MOMENTS = 3  # mean, std, l2: the columns before the projections in ``wide_summary``'s output


@jit_sums
def wide_summary(
    values: Array, starts: Array, block: int, taps: Array, weights: Array, out: Array
) -> None:
    """``out[i]`` = (mean, std, L2 norm, projection 0 .. dims-1) of row ``values[i]`` (float32,
    float64 or uint8, ``[rows, width]``), into ``out[rows, 3 + dims]`` (float32).

    The moments read the row's sample: the ``block`` values from each of ``starts`` (ascending,
    the blocks disjoint; ``[0]`` and ``width`` for the whole row). Their sums and sums of squares
    accumulate in float64 (the fast-math flag ``reassoc`` lets them vectorise); std is
    ``sqrt(max(E[x^2] - mean^2, 0))`` over the sample, the norm ``sqrt(sum x^2 * width / n)``
    of its ``n`` values (the row's own when the sample is the row). Projection ``d`` is the sum
    over ``k`` of ``weights[d, k] * values[i, taps[d, k]]``: it reads only its own taps, so a
    NaN or inf elsewhere in the sample reaches the moments but not that projection, and one
    outside the sample neither (NaN comparisons are false: a NaN variance stays NaN). A zero
    width gives a NaN mean and std, as numpy does."""
    rows, width = values.shape
    dims, count = taps.shape
    if weights.shape != taps.shape:
        raise ValueError("taps and weights must have the same shape")
    if out.shape[0] != rows or out.shape[1] != MOMENTS + dims:
        raise ValueError("out must be [rows, 3 + dims]")
    for d in range(dims):  # a tap outside the row would read out of bounds
        for k in range(count):
            if taps[d, k] < 0 or taps[d, k] >= width:
                raise ValueError("a tap is outside the row")
    for b in range(starts.shape[0]):  # so would a block, and overlapping ones count twice
        low = starts[b - 1] + block if b else 0
        if block < 0 or starts[b] < low or starts[b] + block > width:
            raise ValueError("the sample's blocks must be disjoint, ascending, in the row")
    sampled = starts.shape[0] * block
    scale = width / sampled if sampled else 1.0
    for i in range(rows):
        row = values[i]
        total = 0.0
        squares = 0.0
        for b in range(starts.shape[0]):
            chunk = row[starts[b] : starts[b] + block]
            for j in range(block):  # from 0: indices known non-negative, so it vectorises
                v = np.float64(chunk[j])
                total += v
                squares += v * v
        mean = total / sampled
        variance = squares / sampled - mean * mean
        if variance < 0.0:  # rounding; a NaN variance stays NaN
            variance = 0.0
        out[i, 0] = mean
        out[i, 1] = np.sqrt(variance)
        out[i, 2] = np.sqrt(squares * scale)
        for d in range(dims):  # the sample is in cache: gather this direction's taps
            projected = 0.0
            for k in range(count):
                projected += weights[d, k] * np.float64(row[taps[d, k]])
            out[i, MOMENTS + d] = projected


@jit
def fnv1a_buckets(data: Array, ends: Array, buckets: int, out: Array) -> None:
    """The FNV-1a hash of each value of ``data`` (uint8, the values back to back, value ``i``
    ending at ``ends[i]``) modulo ``buckets``, into ``out``."""
    start = 0
    for i in range(ends.shape[0]):
        h = FNV_OFFSET
        for j in range(start, ends[i]):
            h = (h ^ np.uint64(data[j])) * FNV_PRIME
        out[i] = np.int64(h % np.uint64(buckets))
        start = ends[i]
