"""A reference profile: what a model version's training data looks like to the drift monitor.

Per feature: the slots every window is counted in (quantile bins with open-ended slots beyond
the reference range, or one slot per category: :mod:`lockgate.monitor.bins`), the reference's
counts in them, its std (the Wasserstein norm), and for continuous features a sorted sample of
its values, against which each window's KS and Wasserstein are computed exactly
(:mod:`lockgate.monitor.kernels.exact`). Built once per version, frozen, serialised as ``.npz``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lockgate.monitor import bins as binning
from lockgate.monitor.floors import psi_floor_factors
from lockgate.monitor.kernels.histogram import histogram_update, new_counts

MAX_SAMPLE = 20_000
"""Sorted reference values kept per continuous feature. A longer reference keeps evenly spaced
order statistics, which moves its empirical CDF by at most ``1 / MAX_SAMPLE`` anywhere: the
exact KS against the kept sample is within that of the KS against the whole reference."""
_FORMAT = 2  # 2 adds ``categorical``, ``samples``, ``n_samples``; format 1 still loads
_ARRAYS = ("edges", "n_edges", "counts", "norms", "categorical", "samples", "n_samples")
_DTYPES: dict[str, type[np.generic]] = {
    "edges": np.float64,
    "n_edges": np.int64,
    "counts": np.int64,
    "norms": np.float64,
    "categorical": np.bool_,
    "samples": np.float64,
    "n_samples": np.int64,
}


def _frozen(array: ArrayLike, dtype: type[np.generic]) -> NDArray[Any]:
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """What a model version's training data looks like, frozen: the bins every window is counted
    in and the reference counts they are compared with. Arrays are read-only copies."""

    names: tuple[str, ...]
    edges: NDArray[np.float64]  # [F, M] quantile edges, +inf padded (bins.padded_edges)
    n_edges: NDArray[np.int64]  # [F]
    counts: NDArray[np.int64]  # [F, M + 2] reference histogram, NaN in the last column
    norms: NDArray[np.float64]  # [F] reference std (bins.reference_scale) for Wasserstein
    rows: int  # N, reference rows
    # [F] True: edges give each reference category its own slot (bins.category_edges)
    categorical: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))
    # [F, S] ascending non-NaN reference values per continuous feature, NaN padded, and [F]
    # how many: the exact KS and Wasserstein (none: binned, as snapshots carry profiles)
    samples: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    n_samples: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _chi2_factors: dict[float, NDArray[np.float64]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        f, m = np.shape(self.edges)
        if len(self.names) != f or len(set(self.names)) != f:
            raise ValueError("need one unique name per feature")
        if np.size(self.categorical) == 0:
            object.__setattr__(self, "categorical", np.zeros(f, np.bool_))
        if np.size(self.n_samples) == 0:
            object.__setattr__(self, "samples", np.zeros((f, 0)))
            object.__setattr__(self, "n_samples", np.zeros(f, np.int64))
        shapes = tuple(np.shape(getattr(self, k)) for k in _ARRAYS[1:])
        s = np.shape(self.samples)[1] if np.ndim(self.samples) == 2 else -1
        if shapes != ((f,), (f, m + 2), (f,), (f,), (f, s), (f,)):
            raise ValueError("profile arrays do not match edges[F, M]")
        if not np.all((np.asarray(self.n_samples) >= 0) & (np.asarray(self.n_samples) <= s)):
            raise ValueError("n_samples out of range")
        for name in _ARRAYS:
            object.__setattr__(self, name, _frozen(getattr(self, name), _DTYPES[name]))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @property
    def n_features(self) -> int:
        """F, the number of features (columns)."""
        return len(self.names)

    # Derived once (the arrays are frozen): every window's evaluation needs them.
    @cached_property
    def finite_rows(self) -> NDArray[np.int64]:
        """Finite reference values per feature: the N of the noise floors (NaN is excluded)."""
        return _frozen(self.counts[:, :-1].sum(axis=1), np.int64)

    @cached_property
    def bins(self) -> NDArray[np.int64]:
        """B per feature: finite slots holding reference mass (the chi-square cells)."""
        return _frozen((self.counts[:, :-1] > 0).sum(axis=1), np.int64)

    def chi2_factors(self, alpha: float) -> NDArray[np.float64]:
        """Per feature, the PSI floor over ``1/n + 1/N`` at level ``alpha`` (module doc);
        remembered per level, since every window of the profile asks again."""
        factors = self._chi2_factors.get(alpha)
        if factors is None:
            factors = _frozen(psi_floor_factors(self.bins, alpha), np.float64)
            self._chi2_factors[alpha] = factors
        return factors

    @property
    def has_samples(self) -> bool:
        """True when some feature has a sorted reference sample (exact KS and Wasserstein)."""
        return bool(self.n_samples.any())

    def to_npz_bytes(self, samples: bool = True) -> bytes:
        """Serialise (numpy ``.npz``, no pickle) to cache next to a model version; without the
        `samples` (a fraction of the size) it scores windows on bins only."""
        buf = io.BytesIO()
        keep = _ARRAYS if samples else _ARRAYS[:-2]
        arrays = {k: getattr(self, k) for k in keep}
        names = np.array(self.names, dtype=np.str_)
        np.savez(buf, format=_FORMAT, names=names, rows=self.rows, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> ReferenceProfile:
        """Inverse of :meth:`to_npz_bytes`, bit-exact; raises ValueError on another layout."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["format"]) not in (1, _FORMAT):
                raise ValueError(f"unsupported profile format {int(z['format'])}")
            names = tuple(str(n) for n in z["names"])
            arrays = {k: z[k] for k in _ARRAYS if k in z}
            return cls(names=names, rows=int(z["rows"]), **arrays)


def categorical_mask(table: NDArray[np.float64], declared: Sequence[int] = ()) -> NDArray[np.bool_]:
    """Which columns of a reference ``[N, F]`` are categorical: the ``declared`` indices, and
    every column :func:`~lockgate.monitor.bins.is_categorical` finds (few integer values)."""
    mask = np.array([binning.is_categorical(table[:, f]) for f in range(table.shape[1])], bool)
    for f in declared:
        if not 0 <= f < table.shape[1]:
            raise ValueError(f"categorical feature {f} is not in 0..{table.shape[1] - 1}")
        mask[f] = True
    return mask


def build_profile(
    reference: ArrayLike,
    names: Sequence[str] | None = None,
    bins: int = binning.DEFAULT_BINS,
    categorical: Sequence[int] = (),
) -> ReferenceProfile:
    """Profile of a 2-D reference ``[N, F]``: per feature either category edges (declared in
    `categorical`, or detected) or quantile edges (ties and constant columns collapse to fewer
    edges), the reference histogram over them, and per-feature std norms."""
    table = np.asarray(reference, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] == 0:
        raise ValueError("reference must be 2-D (rows, features) with at least one feature")
    cat = categorical_mask(table, categorical)
    edges, n_edges = binning.reference_edges(table, bins, cat)
    counts = new_counts(edges)
    histogram_update(np.ascontiguousarray(table), edges, n_edges, counts)
    norms = np.array([binning.reference_scale(table[:, f]) for f in range(table.shape[1])])
    labels = tuple(names) if names is not None else tuple(f"f{i}" for i in range(table.shape[1]))
    samples, n_samples = sorted_samples(table, ~cat)
    return ReferenceProfile(
        labels, edges, n_edges, counts, norms, table.shape[0], cat, samples, n_samples
    )


def sorted_samples(
    table: NDArray[np.float64], keep: NDArray[np.bool_], limit: int = MAX_SAMPLE
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """``(samples[F, S], n_samples[F])``: per kept column its ascending non-NaN values (-0.0
    folded into 0.0), down to ``limit`` evenly spaced order statistics; NaN padded."""
    columns = []
    for f in range(table.shape[1]):
        col = np.sort(table[:, f][~np.isnan(table[:, f])] + 0.0) if keep[f] else np.empty(0)
        if col.size > limit:  # the middle order statistic of each of `limit` equal runs
            col = col[((np.arange(limit) + 0.5) * col.size / limit).astype(np.int64)]
        columns.append(col)
    n_samples = np.array([c.size for c in columns], dtype=np.int64)
    samples = np.full((table.shape[1], int(n_samples.max(initial=0))), np.nan)
    for f, col in enumerate(columns):
        samples[f, : col.size] = col
    return samples, n_samples
