"""Histogram kernels: fold a whole 2-D slice ``values[rows, features]`` into per-feature counts.

Numeric features (:func:`histogram_update`)
    Each feature ``f`` has ``m = n_edges[f]`` strictly increasing float64 edges, stored in row
    ``f`` of a 2-D ``edges`` array of width ``M >= m`` (padding after ``m`` is ignored; the
    reference side pads with ``+inf``). The counts array is ``int64[n_features, M + 2]``:

    - slot ``0``: underflow, ``v < e[0]`` and -inf;
    - slot ``j`` for ``1 <= j < m``: interior bin ``e[j-1] <= v < e[j]``;
    - slot ``m``: overflow, ``v >= e[m-1]`` and +inf;
    - slots ``m+1 .. M``: unused by this feature (always 0);
    - slot ``M + 1`` (:data:`NAN_SLOT`, the last column): NaN.

    For finite and infinite values the slot is exactly ``numpy.searchsorted(e, v, side="right")``:
    bins are closed on the left and open on the right, so a value equal to an edge belongs to the
    bin that starts at that edge. float32 values are widened to float64 (exactly) before comparing;
    numba has no float16, so callers widen float16 inputs to float32 first. The
    NaN slot sits at a fixed column so that every feature shares one layout and the drift kernels
    can skip it without knowing ``m``; the unused slots are zero in reference and window alike, so
    they do not move any drift score.

Categorical features (:func:`category_update`)
    Integer codes. Per feature a sorted array of the codes seen in the reference (``known``) maps
    each known code to a slot: ``0 .. K-1`` for the reference's top-K codes, ``K`` ("other") for
    codes seen in the reference but not in its top-K. Codes never seen in the reference go to
    slot ``K + 1`` ("unseen"), a data-quality signal on its own. Counts are
    ``int64[n_features, K + 2]``.

All updates add into ``counts`` in place, so the state of several workers or replicas merges
exactly by adding their arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.jit import jit

NAN_SLOT = -1
"""Column of the NaN count in a numeric histogram state (the last one)."""

_BLOCK_ROWS = 1024
"""Rows per block: one block of one feature (8 KiB of float64) stays in L1 while every edge is
compared against it."""


def new_counts(edges: NDArray[np.float64]) -> NDArray[np.int64]:
    """A zeroed numeric histogram state for a padded ``edges[n_features, M]`` array."""
    return np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=np.int64)


def new_category_counts(n_features: int, top_k: int) -> NDArray[np.int64]:
    """A zeroed categorical count state: ``top_k`` slots, then "other", then "unseen"."""
    return np.zeros((n_features, top_k + 2), dtype=np.int64)


@jit
def histogram_update(
    values: NDArray[np.floating[Any]],
    edges: NDArray[np.float64],
    n_edges: NDArray[np.int64],
    counts: NDArray[np.int64],
) -> None:
    """Add every value of ``values[rows, features]`` to its bin in ``counts`` (layout above).

    Instead of a binary search per value (branchy: ~50 M values/s), each block of one feature is
    copied to a contiguous float64 buffer and the bin index is accumulated as the number of edges
    ``<= v`` — a branch-free, vectorised compare per edge — which is what makes the kernel run at
    several hundred million values per second for ~11 edges.
    """
    rows = values.shape[0]
    n_features = values.shape[1]
    width = edges.shape[1]
    if edges.shape[0] != n_features or n_edges.shape[0] != n_features:
        raise ValueError("edges and n_edges must have one row per feature")
    if counts.shape[0] != n_features or counts.shape[1] != width + 2:
        raise ValueError("counts must have shape (n_features, edges.shape[1] + 2)")
    for f in range(n_features):
        if n_edges[f] < 0 or n_edges[f] > width:
            raise ValueError("n_edges out of range")
    nan_slot = width + 1
    vbuf = np.empty(_BLOCK_ROWS, dtype=np.float64)
    idx = np.empty(_BLOCK_ROWS, dtype=np.int32)
    for r0 in range(0, rows, _BLOCK_ROWS):
        nb = min(rows, r0 + _BLOCK_ROWS) - r0
        for f in range(n_features):
            for k in range(nb):
                vbuf[k] = values[r0 + k, f]
                idx[k] = 0
            for j in range(n_edges[f]):
                e = edges[f, j]
                for k in range(nb):
                    idx[k] += vbuf[k] >= e
            row = counts[f]
            for k in range(nb):
                slot = idx[k]
                if vbuf[k] != vbuf[k]:
                    slot = nan_slot
                row[slot] += 1


@jit
def category_update(
    codes: NDArray[np.integer[Any]],
    known: NDArray[np.int64],
    n_known: NDArray[np.int64],
    slots: NDArray[np.int64],
    counts: NDArray[np.int64],
) -> None:
    """Add integer ``codes[rows, features]`` to per-feature category counts (layout above).

    ``known[f, :n_known[f]]`` is sorted ascending and ``slots[f, j]`` is the slot of
    ``known[f, j]`` (``0 .. K`` where ``K = counts.shape[1] - 2``); anything else is "unseen".
    """
    rows = codes.shape[0]
    n_features = codes.shape[1]
    width = counts.shape[1]
    if known.shape[0] != n_features or slots.shape[0] != n_features:
        raise ValueError("known and slots must have one row per feature")
    if n_known.shape[0] != n_features or counts.shape[0] != n_features or width < 2:
        raise ValueError("n_known/counts must have one row per feature and >= 2 slots")
    if known.shape[1] != slots.shape[1]:
        raise ValueError("known and slots must have the same width")
    for f in range(n_features):
        if n_known[f] < 0 or n_known[f] > known.shape[1]:
            raise ValueError("n_known out of range")
        for j in range(n_known[f]):
            if slots[f, j] < 0 or slots[f, j] > width - 2:
                raise ValueError("slot out of range")
    unseen = width - 1
    for f in range(n_features):
        m = n_known[f]
        row = counts[f]
        for r in range(rows):
            c = codes[r, f]
            lo = 0
            hi = m
            while lo < hi:
                mid = (lo + hi) >> 1
                if known[f, mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < m and known[f, lo] == c:
                row[slots[f, lo]] += 1
            else:
                row[unseen] += 1
