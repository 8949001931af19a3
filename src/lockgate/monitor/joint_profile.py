"""The reference side of joint (multivariate) drift: a seeded random-Fourier-feature map of the
continuous inputs, the reference's mean embedding, and the null quantile the alarm threshold is
scaled from. Built once at profile time and stored with the version's profiles.

Per-feature tests cannot see a change in how features move together (a correlation flipping
sign with unchanged marginals). The maximum mean discrepancy with a Gaussian kernel can: it is
the distance between the mean embeddings of two distributions, zero only when they are equal.
With ``D`` random Fourier features ``z`` (:mod:`lockgate.monitor.kernels.rff`) the embedding is
a ``D``-vector, and a window's score is

    score = || mean z(window) - mean z(reference) ||^2

(the biased, V-statistic estimate of MMD^2: never negative, and the window side is a plain sum
that merges by addition). Inputs are standardised with the reference's per-feature mean and std;
the bandwidth is the median pairwise distance of standardised reference rows (the median
heuristic); ``omega`` and ``phase`` come from a fixed seed, so every build of the same reference
is identical.

Null distribution: when the window's rows come from the reference distribution, the difference
of the two means is asymptotically normal with covariance ``(1/n + 1/N) Sigma``, ``Sigma`` the
covariance of ``z`` under the reference (n window rows, N reference rows), so

    score / (1/n + 1/N)  ->  sum_i lambda_i chi2_1      (lambda: eigenvalues of Sigma)

The profile stores the ``1 - alpha`` quantile ``q`` of that weighted chi-square (Monte Carlo
with a fixed seed), and a window alarms when ``score > q (1/n + 1/N)``: the threshold follows
the window's size. ``alpha = 0.002`` keeps the measured false-alarm rate below 1 % per window at
100 to 10,000 rows, also for an unlucky reference sample (``benchmarks/joint_drift.py``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lockgate.monitor.kernels.rff import rff_score, rff_threshold, rff_update

FEATURES = 128  # D: the embedding's size (RFF kernel error ~ 1 / sqrt(D) per pair, averaged out)
SEED = 20240519  # fixed: every worker, replica and rebuild gets the same map
ALPHA = 0.002  # nominal false-alarm rate per window (module doc)
MAX_COLUMNS = 64  # joint columns kept (the first continuous ones): the kernel costs K * D per row
MIN_ROWS = 100  # complete reference rows needed to estimate the embedding and its covariance
BANDWIDTH_ROWS = 1000  # rows sampled for the median heuristic (~500,000 pairs)
NULL_DRAWS = 50_000  # Monte Carlo draws of the weighted chi-square (~100 beyond the quantile)
NULL_TAIL = 1e-3  # eigenvalues past this share of the trace enter by their mean only
_FORMAT = 1
_ARRAYS = ("columns", "center", "scale", "omega", "phase", "embedding")


def _frozen(array: ArrayLike, dtype: type[np.generic]) -> NDArray[Any]:
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class JointProfile:
    """What the joint-drift monitor compares windows with (module doc). Arrays are read-only."""

    names: tuple[str, ...]  # [K] the joint columns' feature names
    columns: NDArray[np.int64]  # [K] their indices in the monitored input row
    center: NDArray[np.float64]  # [K] reference mean
    scale: NDArray[np.float64]  # [K] 1 / reference std
    omega: NDArray[np.float64]  # [K, D] frequencies, N(0, 1 / bandwidth^2)
    phase: NDArray[np.float64]  # [D] U[0, 2 pi)
    embedding: NDArray[np.float64]  # [D] the reference's mean of z
    null_quantile: float  # q: 1 - alpha quantile of score / (1/n + 1/N) under the null
    alpha: float
    bandwidth: float
    rows: int  # N: complete reference rows
    seed: int

    def __post_init__(self) -> None:
        k, d = np.shape(self.omega)
        shapes = tuple(np.shape(getattr(self, a)) for a in _ARRAYS)
        if len(self.names) != k or shapes != ((k,), (k,), (k,), (k, d), (d,), (d,)):
            raise ValueError("joint profile arrays do not match omega[K, D]")
        if not (self.rows > 0 and self.null_quantile > 0 and 0 < self.alpha < 1):
            raise ValueError("need rows > 0, null_quantile > 0 and 0 < alpha < 1")
        for name in _ARRAYS:
            dtype = np.int64 if name == "columns" else np.float64
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @property
    def features(self) -> int:
        """D, the embedding's size."""
        return int(self.omega.shape[1])

    def threshold(self, rows: int) -> float:
        """The alarm threshold of a window of ``rows`` complete rows: ``q (1/n + 1/N)``."""
        return float(rff_threshold(self.null_quantile, rows, self.rows))

    def score(self, sums: NDArray[np.float64], rows: int) -> float:
        """The biased MMD^2 estimate of a window (module doc); NaN without rows."""
        if rows <= 0:
            return math.nan
        return float(rff_score(np.asarray(sums, np.float64), rows, self.embedding))

    def to_npz_bytes(self) -> bytes:
        """Serialise (numpy ``.npz``, no pickle)."""
        buf = io.BytesIO()
        scalars = {
            k: getattr(self, k) for k in ("null_quantile", "alpha", "bandwidth", "rows", "seed")
        }
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        names = np.array(self.names, dtype=np.str_)
        np.savez(buf, format=_FORMAT, names=names, **arrays, **scalars)
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> JointProfile:
        """Inverse of :meth:`to_npz_bytes`, bit-exact; ValueError on another layout."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["format"]) != _FORMAT:
                raise ValueError(f"unsupported joint profile format {int(z['format'])}")
            return cls(
                names=tuple(str(n) for n in z["names"]),
                **{k: z[k] for k in _ARRAYS},
                null_quantile=float(z["null_quantile"]),
                alpha=float(z["alpha"]),
                bandwidth=float(z["bandwidth"]),
                rows=int(z["rows"]),
                seed=int(z["seed"]),
            )


def joint_columns(table: NDArray[np.float64], continuous: NDArray[np.bool_]) -> list[int]:
    """The columns joint drift follows: continuous ones that vary (finite, non-zero std), the
    first :data:`MAX_COLUMNS` of them. Categorical codes are left out: distances between codes
    mean nothing to a Gaussian kernel, and their mix is tested exactly per feature."""
    chosen = []
    for f in np.flatnonzero(continuous):
        col = table[:, f][np.isfinite(table[:, f])]
        if col.size > 1 and np.std(col) > 0.0 and math.isfinite(float(np.std(col))):
            chosen.append(int(f))
    return chosen[:MAX_COLUMNS]


def median_bandwidth(x: NDArray[np.float64], rng: np.random.Generator) -> float:
    """Median pairwise Euclidean distance of (up to :data:`BANDWIDTH_ROWS` sampled) rows; 1.0
    when that is zero (more than half the rows are equal)."""
    if x.shape[0] > BANDWIDTH_ROWS:
        x = x[rng.choice(x.shape[0], BANDWIDTH_ROWS, replace=False)]
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    upper = np.triu_indices(x.shape[0], 1)
    median = math.sqrt(max(float(np.median(d2[upper])), 0.0))
    return median if median > 0.0 else 1.0


def null_quantile(eigenvalues: NDArray[np.float64], alpha: float, seed: int) -> float:
    """The ``1 - alpha`` quantile of ``sum_i lambda_i chi2_1`` by Monte Carlo (fixed seed).
    The smallest eigenvalues, together under :data:`NULL_TAIL` of the trace, are added as
    their mean: a sum of many small terms barely varies, and drawing them costs the most."""
    rng = np.random.default_rng(seed)
    lam = np.sort(np.clip(eigenvalues, 0.0, None))[::-1]
    total = float(lam.sum())
    if total <= 0.0:
        return math.ulp(1.0)
    keep = int(np.searchsorted(np.cumsum(lam) / total, 1.0 - NULL_TAIL)) + 1
    rest = float(lam[keep:].sum())
    chunk = 10_000
    draws = [
        (rng.standard_normal((chunk, keep), dtype=np.float32) ** 2) @ lam[:keep]
        for _ in range(NULL_DRAWS // chunk)
    ]
    return float(np.quantile(np.concatenate(draws), 1.0 - alpha)) + rest


def build_joint_profile(
    reference: ArrayLike,
    names: Sequence[str],
    continuous: NDArray[np.bool_],
    features: int = FEATURES,
    alpha: float = ALPHA,
    seed: int = SEED,
) -> JointProfile | None:
    """The joint profile of reference rows ``[N, F]`` (columns named ``names``), or None when
    fewer than two columns qualify (:func:`joint_columns`) or fewer than :data:`MIN_ROWS` rows
    have every one of them finite."""
    table = np.asarray(reference, dtype=np.float64)
    columns = joint_columns(table, np.asarray(continuous, dtype=np.bool_))
    if len(columns) < 2:
        return None
    x = table[:, columns]
    x = x[np.isfinite(x).all(axis=1)]
    if x.shape[0] < MIN_ROWS:
        return None
    center, std = x.mean(axis=0), x.std(axis=0)
    scale = 1.0 / std
    standard = (x - center) * scale
    rng = np.random.default_rng(seed)
    bandwidth = median_bandwidth(standard, rng)
    omega = rng.standard_normal((len(columns), features)) / bandwidth
    phase = rng.uniform(0.0, 2.0 * math.pi, features)
    z = math.sqrt(2.0 / features) * np.cos(standard @ omega + phase)
    eigenvalues = np.linalg.eigvalsh(np.cov(z, rowvar=False, bias=True))
    sums = np.zeros(features)
    rows = rff_update(
        np.ascontiguousarray(x), np.arange(len(columns)), center, scale, omega, phase, sums
    )
    return JointProfile(
        names=tuple(names[c] for c in columns),
        columns=np.array(columns, dtype=np.int64),
        center=center,
        scale=scale,
        omega=omega,
        phase=phase,
        embedding=sums * (math.sqrt(2.0 / features) / rows),
        null_quantile=null_quantile(eigenvalues, alpha, seed + 1),
        alpha=alpha,
        bandwidth=bandwidth,
        rows=int(rows),
        seed=seed,
    )
