"""Reference-profile side of the histograms: bin edges and category tables from training data.

This runs once per model version at registration (plain numpy, no JIT); its outputs are the
frozen inputs of :mod:`lockgate.monitor.kernels.histogram`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

DEFAULT_BINS = 10


def quantile_edges(reference_column: ArrayLike, bins: int = DEFAULT_BINS) -> NDArray[np.float64]:
    """Strictly increasing float64 edges at the reference quantiles ``0, 1/bins, ..., 1``.

    NaN and +-inf are ignored. Quantiles are actual data values (``method="inverted_cdf"``), so
    integer-valued features get edges on their values instead of between them, and tied
    quantiles collapse into one edge: heavy ties give fewer edges, a constant column gives one
    edge, and a column with no finite value gives none (everything finite lands in slot 0).
    With the first edge at the minimum and the last at the maximum, the reference puts nothing
    in the underflow slot and only its maximum in the overflow slot, so those two slots count
    values outside the training range.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    column = np.asarray(reference_column, dtype=np.float64).ravel()
    finite = column[np.isfinite(column)]
    if finite.size == 0:
        return np.empty(0, dtype=np.float64)
    qs = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1), method="inverted_cdf")
    edges: NDArray[np.float64] = np.unique(qs + 0.0)  # + 0.0 folds -0.0 into 0.0
    return edges


def padded_edges(
    edge_list: Sequence[NDArray[np.float64]],
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Stack per-feature edges into ``(edges[n_features, M], n_edges[n_features])``, padding
    with +inf, as :func:`~lockgate.monitor.kernels.histogram.histogram_update` takes them."""
    n_edges = np.array([len(e) for e in edge_list], dtype=np.int64)
    width = int(n_edges.max()) if len(edge_list) else 0
    edges = np.full((len(edge_list), width), np.inf, dtype=np.float64)
    for f, e in enumerate(edge_list):
        row = np.asarray(e, dtype=np.float64)
        if row.ndim != 1 or (row.size > 1 and not np.all(np.diff(row) > 0)):
            raise ValueError(f"edges of feature {f} are not strictly increasing")
        edges[f, : row.size] = row
    return edges, n_edges


def reference_edges(
    reference: ArrayLike, bins: int = DEFAULT_BINS
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Quantile edges of every column of a 2-D reference ``[rows, features]``, padded."""
    table = np.asarray(reference, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError("reference must be 2-D (rows, features)")
    return padded_edges([quantile_edges(table[:, f], bins) for f in range(table.shape[1])])


def reference_scale(reference_column: ArrayLike) -> float:
    """The norm of the normed Wasserstein distance: the standard deviation of the finite
    reference values (ddof=0, as Evidently). 1.0 when it is zero or undefined; then the
    reference has at most one edge and the binned distance is 0 anyway."""
    column = np.asarray(reference_column, dtype=np.float64).ravel()
    finite = column[np.isfinite(column)]
    std = float(np.std(finite)) if finite.size else 0.0
    return std if np.isfinite(std) and std > 0.0 else 1.0


def category_table(
    reference_codes: ArrayLike, top_k: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(known, slots)`` for one categorical feature: the sorted distinct reference codes and
    the count slot of each — ``0 .. top_k - 1`` for the most frequent (ties: smaller code first),
    ``top_k`` ("other") for the rest. Codes absent here are counted as "unseen"."""
    if top_k < 0:
        raise ValueError("top_k must be >= 0")
    codes = np.asarray(reference_codes).ravel()
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError("category codes must be integers")
    known, freq = np.unique(codes.astype(np.int64), return_counts=True)
    order = np.lexsort((known, -freq))  # by frequency descending, then code ascending
    slots = np.full(known.size, top_k, dtype=np.int64)
    top = order[:top_k]
    slots[top] = np.arange(top.size, dtype=np.int64)
    return known, slots


def padded_categories(
    tables: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Stack per-feature ``(known, slots)`` into ``(known2d, n_known, slots2d)`` for
    :func:`~lockgate.monitor.kernels.histogram.category_update` (padding is never read)."""
    n_known = np.array([len(k) for k, _ in tables], dtype=np.int64)
    width = int(n_known.max()) if len(tables) else 0
    known2d = np.full((len(tables), width), np.iinfo(np.int64).max, dtype=np.int64)
    slots2d = np.zeros((len(tables), width), dtype=np.int64)
    for f, (known, slots) in enumerate(tables):
        known2d[f, : known.size] = known
        slots2d[f, : slots.size] = slots
    return known2d, n_known, slots2d
