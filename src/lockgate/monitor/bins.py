"""Reference-profile side of the histograms: bin edges and category tables from training data.

This runs once per model version at registration (plain numpy, no JIT); its outputs are the
frozen inputs of :mod:`lockgate.monitor.kernels.histogram`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

DEFAULT_BINS = 10
MAX_AUTO_CATEGORIES = 20
"""At most this many distinct integer values make a feature categorical without being declared."""
MAX_CATEGORIES = 64
"""Categories a declared categorical feature may have (two count slots each)."""


def quantile_edges(reference_column: ArrayLike, bins: int = DEFAULT_BINS) -> NDArray[np.float64]:
    """Strictly increasing float64 edges at the reference quantiles ``0, 1/bins, ..., 1``.

    NaN and +-inf are ignored. Quantiles are actual data values (``method="inverted_cdf"``), so
    integer-valued features get edges on their values instead of between them, and tied
    quantiles collapse into one edge: heavy ties give fewer edges, a constant column gives two
    (the constant and the next double), and a column with no finite value gives none
    (everything finite lands in slot 0). The first edge is the minimum and the last the double
    just above the maximum, so the reference puts nothing in the underflow and overflow slots:
    they count exactly the values outside the training range (a new extreme value or category
    is visible on its own instead of joining the top bin).
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    column = np.asarray(reference_column, dtype=np.float64).ravel()
    finite = column[np.isfinite(column)]
    if finite.size == 0:
        return np.empty(0, dtype=np.float64)
    qs = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1), method="inverted_cdf")
    edges: NDArray[np.float64] = np.unique(qs + 0.0)  # + 0.0 folds -0.0 into 0.0
    if edges[-1] == edges[0]:
        edges = np.append(edges, edges[-1])
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def is_categorical(reference_column: ArrayLike, max_categories: int = MAX_AUTO_CATEGORIES) -> bool:
    """A column is taken as categorical when its finite reference values are integers with at
    most ``max_categories`` distinct values (codes, flags, small counts): binning those as
    continuous hides a new category in the top bin and dilutes frequency changes."""
    column = np.asarray(reference_column, dtype=np.float64).ravel()
    finite = column[np.isfinite(column)]
    if finite.size == 0 or not np.all(finite == np.floor(finite)):
        return False
    return int(np.unique(finite).size) <= max_categories


def category_edges(reference_column: ArrayLike) -> NDArray[np.float64]:
    """Edges that give each distinct finite reference value (category) ``c`` its own slot
    ``[c, nextafter(c))`` (widened to hold ``float32(c)`` too); the slots between and outside
    categories hold the values the reference never had ("unseen"). ValueError past
    :data:`MAX_CATEGORIES` categories, or for categories one float32 apart."""
    column = np.asarray(reference_column, dtype=np.float64).ravel()
    categories = np.unique(column[np.isfinite(column)] + 0.0)
    if categories.size > MAX_CATEGORIES:
        raise ValueError(f"{categories.size} categories, at most {MAX_CATEGORIES} are monitored")
    # A category's slot also holds its float32 rounding: FP32 inputs arrive widened from float32
    # (0.1 as 0.10000000149...), and integers up to 2**24 are the same in both.
    with np.errstate(over="ignore"):
        rounded = categories.astype(np.float32).astype(np.float64)
    edges = np.empty(2 * categories.size, dtype=np.float64)
    edges[0::2] = np.minimum(categories, rounded)
    edges[1::2] = np.nextafter(np.maximum(categories, rounded), np.inf)
    if edges.size > 1 and not np.all(np.diff(edges) > 0):  # one float32, or adjacent doubles
        raise ValueError("categories too close together to get a slot each")
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
    reference: ArrayLike, bins: int = DEFAULT_BINS, categorical: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Edges of every column of a 2-D reference ``[rows, features]``, padded: category edges
    where ``categorical[f]`` (bool per feature), quantile edges elsewhere."""
    table = np.asarray(reference, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError("reference must be 2-D (rows, features)")
    cat = np.zeros(table.shape[1], np.bool_) if categorical is None else np.asarray(categorical)
    return padded_edges(
        [
            category_edges(table[:, f]) if cat[f] else quantile_edges(table[:, f], bins)
            for f in range(table.shape[1])
        ]
    )


def reference_scale(reference_column: ArrayLike) -> float:
    """The norm of the normed Wasserstein distance: the standard deviation of the finite
    reference values (ddof=0, as Evidently). 1.0 when it is zero or undefined; then the
    reference has at most one edge and the binned distance is 0 anyway."""
    column = np.asarray(reference_column, dtype=np.float64).ravel()
    finite = column[np.isfinite(column)]
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: inf std, falls back
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
