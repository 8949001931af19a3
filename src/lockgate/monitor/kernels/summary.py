"""A stable hash bucket per string for text inputs: FNV-1a, 64 bits, the same on every process,
host and Python version (Python's ``hash`` of bytes is salted per process)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lockgate.monitor.kernels.jit import jit

Array = np.ndarray[Any, Any]

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


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
