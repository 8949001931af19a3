"""Log-bucket latency sketch (DDSketch-style) on the Prometheus native-histogram schema 6 layout.

Bucket ``i`` holds the values ``2**((i-1)/64) < v <= 2**(i/64)`` — exactly the buckets of a
Prometheus native histogram with schema 6 (upper bound inclusive), so the state can be exported
without re-bucketing. Reading a quantile as the bucket's representative ``2*lo*hi/(lo+hi)`` is
within ``(2**(1/64) - 1) / (2**(1/64) + 1) ~= 0.54 %`` of any value in the bucket.

The whole state is one ``int64[STATE_SIZE]`` array (15,944 bytes), so merging workers or
replicas is ``a + b``, bit-exact and order-independent. Slots:

- ``SLOT_SUM_NS``: sum of the values in integer nanoseconds (each rounded half-up); values that
  are not finite or are >= ``SUM_CAP`` seconds are not summed. Integers keep merged sums exact.
- ``SLOT_INVALID``: NaN and negative values (not part of the count).
- ``2 .. 5``: reserved, zero.
- ``SLOT_ZERO``: ``v == 0``.
- ``SLOT_UNDERFLOW``: ``0 < v <= MIN_VALUE`` (2**-20 s ~= 0.95 us), subnormals included.
- ``SLOT_FIRST_BUCKET + (i - INDEX_MIN)``: bucket ``i``, ``INDEX_MIN <= i <= INDEX_MAX``.
- ``SLOT_OVERFLOW``: ``v > MAX_VALUE`` (2**11 s = 2048 s) and +inf.

Slots ``SLOT_ZERO .. SLOT_OVERFLOW`` are contiguous and in value order, so quantiles are a
cumulative sum over ``state[SLOT_ZERO:]``.

The bucket index comes from the float's bits, not from ``log2``: the exponent gives the octave,
and the top 8 mantissa bits select one of 256 cells, each narrower than the narrowest bucket, so
a cell contains at most one bucket boundary; one integer compare against that boundary finishes
the index. Boundaries are the correctly rounded float64 values of ``2**(k/64)`` (the table
below), so the assignment is exact at every boundary and matches
``searchsorted(bucket_upper_bounds(), v, side="left")``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.jit import jit

SCHEMA = 6
BUCKETS_PER_OCTAVE = 64
INDEX_MIN = -1279
INDEX_MAX = 704
N_BUCKETS = INDEX_MAX - INDEX_MIN + 1
MIN_VALUE = 2.0**-20
MAX_VALUE = 2.0**11
SUM_CAP = 1e9

SLOT_SUM_NS = 0
SLOT_INVALID = 1
SLOT_ZERO = 6
SLOT_UNDERFLOW = 7
SLOT_FIRST_BUCKET = 8
SLOT_OVERFLOW = SLOT_FIRST_BUCKET + N_BUCKETS
STATE_SIZE = SLOT_OVERFLOW + 1

# Mantissa bits (52) of the correctly rounded float64 2**(k/64), k = 0..63; the same boundaries
# as the schema-6 table of the Prometheus client libraries (theirs are halved, in [0.5, 1)).
_OCTAVE_HEX = """
    0000000000000 02c9a3e778061 059b0d3158574 0874518759bc8 0b5586cf9890f 0e3ec32d3d1a2
    11301d0125b51 1429aaea92de0 172b83c7d517b 1a35beb6fcb75 1d4873168b9aa 2063b88628cd6
    2387a6e756238 26b4565e27cdd 29e9df51fdee1 2d285a6e4030b 306fe0a31b715 33c08b26416ff
    371a7373aa9cb 3a7db34e59ff7 3dea64c123422 4160a21f72e2a 44e086061892d 486a2b5c13cd0
    4bfdad5362a27 4f9b2769d2ca7 5342b569d4f82 56f4736b527da 5ab07dd485429 5e76f15ad2148
    6247eb03a5585 6623882552225 6a09e667f3bcd 6dfb23c651a2f 71f75e8ec5f74 75feb564267c9
    7a11473eb0187 7e2f336cf4e62 82589994cce13 868d99b4492ed 8ace5422aa0db 8f1ae99157736
    93737b0cdc5e5 97d829fde4e50 9c49182a3f090 a0c667b5de565 a5503b23e255d a9e6b5579fdbf
    ae89f995ad3ad b33a2b84f15fb b7f76f2fb5e47 bcc1e904bc1d2 c199bdd85529c c67f12e57d14b
    cb720dcef9069 d072d4a07897c d5818dcfba487 da9e603db3285 dfc97337b9b5f e502ee78b3ff6
    ea4afa2a490da efa1bee615a27 f50765b6e4540 fa7c1819e90d8
"""
_MANTISSA_BITS = 52
_CELL_BITS = 8
_CELL_SHIFT = _MANTISSA_BITS - _CELL_BITS
_MANTISSA_MASK = (1 << _MANTISSA_BITS) - 1


def octave_bounds() -> NDArray[np.float64]:
    """The 64 float64 bucket boundaries ``2**(k/64)`` within one octave ``[1, 2)``."""
    mantissas = np.array([int(h, 16) for h in _OCTAVE_HEX.split()], dtype=np.int64)
    bounds: NDArray[np.float64] = (mantissas | np.int64(1023 << _MANTISSA_BITS)).view(np.float64)
    return bounds


def _cell_tables() -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per mantissa cell: boundaries strictly below the cell, and the boundary inside it (or
    2**52, above every mantissa, when it holds none)."""
    mantissas = octave_bounds().view(np.int64) & _MANTISSA_MASK
    cells = mantissas >> _CELL_SHIFT
    if len(np.unique(cells)) != BUCKETS_PER_OCTAVE:
        raise AssertionError("a mantissa cell holds two bucket boundaries")
    n_cells = 1 << _CELL_BITS
    below = np.searchsorted(cells, np.arange(n_cells), side="left").astype(np.int64)
    inside = np.full(n_cells, 1 << _MANTISSA_BITS, dtype=np.int64)
    inside[cells] = mantissas
    return below, inside


_CELL_BELOW, _CELL_BOUNDARY = _cell_tables()


def bucket_upper_bounds() -> NDArray[np.float64]:
    """Upper bound of every bucket, ``float64[N_BUCKETS]``: ``2**(i/64)`` for i in range."""
    index = np.arange(INDEX_MIN, INDEX_MAX + 1)
    return np.ldexp(octave_bounds()[index % BUCKETS_PER_OCTAVE], index // BUCKETS_PER_OCTAVE)


def bucket_representatives() -> NDArray[np.float64]:
    """Value reported for each bucket: ``2*lo*hi/(lo+hi)``, the point with the smallest worst-case
    relative error over ``(lo, hi]``."""
    hi = bucket_upper_bounds()
    lo = np.concatenate(([MIN_VALUE], hi[:-1]))
    rep: NDArray[np.float64] = 2.0 * lo * hi / (lo + hi)
    return rep


def new_state() -> NDArray[np.int64]:
    """A zeroed sketch state."""
    return np.zeros(STATE_SIZE, dtype=np.int64)


@jit
def sketch_add(values: NDArray[np.float64], state: NDArray[np.int64]) -> None:
    """Add a C-contiguous float64 array of latencies (seconds) to ``state`` in one pass."""
    if state.shape[0] != STATE_SIZE:
        raise ValueError("state has the wrong size")
    bits = values.view(np.int64)
    below = _CELL_BELOW
    boundary = _CELL_BOUNDARY
    total_ns = np.int64(0)
    for n in range(values.shape[0]):
        v = values[n]
        if v > 0.0:
            b = bits[n]
            mantissa = b & _MANTISSA_MASK
            cell = mantissa >> _CELL_SHIFT
            index = BUCKETS_PER_OCTAVE * ((b >> _MANTISSA_BITS) - 1023) + below[cell]
            index += mantissa > boundary[cell]
            slot = min(max(index - INDEX_MIN + SLOT_FIRST_BUCKET, SLOT_UNDERFLOW), SLOT_OVERFLOW)
            state[slot] += 1
            ns = v * 1e9 + 0.5 if v < SUM_CAP else 0.0
            total_ns += np.int64(ns)
        elif v == 0.0:
            state[SLOT_ZERO] += 1
        else:
            state[SLOT_INVALID] += 1
    state[SLOT_SUM_NS] += total_ns
