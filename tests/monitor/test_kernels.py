"""Monitor kernels against independent numpy/scipy references on adversarial data."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, getcontext
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial import distance

from lockgate.monitor import bins
from lockgate.monitor.kernels import ddsketch as dd
from lockgate.monitor.kernels import divergence as dv
from lockgate.monitor.kernels import histogram as hist

Array = np.ndarray[Any, Any]
RNG = np.random.default_rng(20240611)


# --- data --------------------------------------------------------------------------------------


def _bimodal(rng: np.random.Generator, n: int) -> Array:
    return np.where(rng.random(n) < 0.3, rng.normal(-5.0, 0.5, n), rng.normal(3.0, 1.0, n))


def _heavy_ties(rng: np.random.Generator, n: int) -> Array:
    return np.where(rng.random(n) < 0.7, 0.0, rng.integers(1, 4, n).astype(np.float64))


COLUMNS: dict[str, Callable[[np.random.Generator, int], Array]] = {
    "normal": lambda rng, n: rng.normal(0.0, 1.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 2.0, n),
    "pareto": lambda rng, n: rng.pareto(1.1, n),
    "bimodal": _bimodal,
    "heavy-ties": _heavy_ties,
    "integers": lambda rng, n: rng.integers(-3, 4, n).astype(np.float64),
    "constant": lambda rng, n: np.full(n, 2.5),
}


def _adversarial(column: Array, edges: Array, rng: np.random.Generator) -> Array:
    """Sprinkle NaN, +-inf, the edges themselves and their float neighbours into a window."""
    out = column.copy()
    n = out.size
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    if edges.size:
        specials += [*edges, *np.nextafter(edges, np.inf), *np.nextafter(edges, -np.inf)]
    picks = rng.choice(n, size=min(n, 4 * len(specials)), replace=False)
    out[picks] = np.resize(np.array(specials), picks.size)
    return out


def reference_histogram(values: Array, edge_list: list[Array]) -> Array:
    """np.searchsorted per feature plus an explicit NaN count, in the kernel's layout."""
    width = max((e.size for e in edge_list), default=0)
    out = np.zeros((len(edge_list), width + 2), dtype=np.int64)
    for f, e in enumerate(edge_list):
        col = values[:, f].astype(np.float64)
        nan = np.isnan(col)
        idx = np.searchsorted(e, col[~nan], side="right")
        out[f, : e.size + 1] = np.bincount(idx, minlength=e.size + 1)
        out[f, -1] = nan.sum()
    return out


def _profile(
    kinds: list[str], rows: int, dtype: type[np.floating[Any]]
) -> tuple[Array, Array, Array, list[Array]]:
    """Reference edges (from data in ``dtype``, so edges hit exactly) and an adversarial window."""
    ref = np.stack([COLUMNS[k](RNG, 2000) for k in kinds], axis=1).astype(dtype)
    edge_list = [bins.quantile_edges(ref[:, f]) for f in range(len(kinds))]
    window = np.stack(
        [_adversarial(COLUMNS[k](RNG, rows), edge_list[f], RNG) for f, k in enumerate(kinds)],
        axis=1,
    ).astype(dtype)
    edges, n_edges = bins.padded_edges(edge_list)
    return window, edges, n_edges, edge_list


# --- numeric histograms ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kinds",
    [[k] for k in COLUMNS] + [list(COLUMNS)],
    ids=[*COLUMNS, "all-mixed-edge-counts"],
)
def test_histogram_matches_searchsorted(kinds: list[str], dtype: type[np.floating[Any]]) -> None:
    window, edges, n_edges, edge_list = _profile(kinds, 3000, dtype)
    counts = hist.new_counts(edges)
    hist.histogram_update(window, edges, n_edges, counts)
    np.testing.assert_array_equal(counts, reference_histogram(window, edge_list))
    assert counts.sum() == window.size


@pytest.mark.parametrize(
    "case", ["empty-window", "all-nan", "no-edges", "fortran-order", "bounded-block"]
)
def test_histogram_edge_cases(case: str) -> None:
    window, edges, n_edges, edge_list = _profile(
        ["lognormal", "constant", "pareto"], 2500, np.float64
    )
    if case == "empty-window":
        window = window[:0]
    elif case == "all-nan":
        window[:] = np.nan
    elif case == "no-edges":
        edge_list = [bins.quantile_edges(np.full(10, np.nan))] * 3
        edges, n_edges = bins.padded_edges(edge_list)
    elif case == "fortran-order":
        window = np.asfortranarray(window)
    else:  # a row count that is not a multiple of the kernel's block size
        window = window[: 1024 * 2 + 1]
    counts = hist.new_counts(edges)
    hist.histogram_update(window, edges, n_edges, counts)
    np.testing.assert_array_equal(counts, reference_histogram(window, edge_list))


def test_histogram_rejects_bad_shapes() -> None:
    window, edges, n_edges, _ = _profile(["normal", "normal"], 10, np.float64)
    with pytest.raises(ValueError):
        hist.histogram_update(window, edges, n_edges, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        hist.histogram_update(window[:, :1], edges, n_edges, hist.new_counts(edges))


def test_quantile_edges_ties_and_constants() -> None:
    up = float(np.nextafter(3.0, np.inf))  # the last edge: just above the maximum
    assert bins.quantile_edges(np.full(100, 3.0)).tolist() == [3.0, up]
    assert bins.quantile_edges([np.nan, np.inf, -np.inf]).size == 0
    ties = bins.quantile_edges(_heavy_ties(RNG, 10_000))
    assert ties[0] == 0.0 and set(ties[1:-1].tolist()) <= {1.0, 2.0} and ties[-1] == up
    edges = bins.quantile_edges(np.concatenate([RNG.lognormal(size=1000), [np.nan, np.inf]]), 20)
    assert edges.dtype == np.float64 and np.all(np.diff(edges) > 0) and np.all(np.isfinite(edges))
    assert edges.size == 21


def test_histogram_state_fits_memory_budget() -> None:
    edges, _ = bins.reference_edges(RNG.normal(size=(5000, 16)))
    counts = hist.new_counts(edges)
    assert counts.nbytes / 16 <= 2048


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 300),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 300), max_size=5),
)
def test_histogram_merge_is_exact(rows: int, seed: int, cuts: list[int]) -> None:
    window, edges, n_edges, _ = _profile(["bimodal", "heavy-ties"], max(rows, 1), np.float64)
    window = np.random.default_rng(seed).permutation(window)[:rows]
    whole = hist.new_counts(edges)
    hist.histogram_update(window, edges, n_edges, whole)
    merged = hist.new_counts(edges)
    for part in np.split(window, sorted(c for c in cuts if c <= rows)):
        partial = hist.new_counts(edges)
        hist.histogram_update(np.ascontiguousarray(part), edges, n_edges, partial)
        merged += partial
    assert np.array_equal(whole, merged)


# --- categories --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("top_k", [0, 3, 50], ids=["top0", "top3", "top50"])
def test_category_counts_match_dict_reference(dtype: type[np.integer[Any]], top_k: int) -> None:
    ref = np.stack([RNG.zipf(1.5, 5000) % 40 - 5, RNG.integers(0, 3, 5000), np.full(5000, 7)], 1)
    tables = [bins.category_table(ref[:, f], top_k) for f in range(3)]
    known, n_known, slots = bins.padded_categories(tables)
    codes = np.stack([RNG.integers(-10, 60, 4000) for _ in range(3)], axis=1).astype(dtype)
    counts = hist.new_category_counts(3, top_k)
    hist.category_update(codes, known, n_known, slots, counts)

    expected = np.zeros_like(counts)
    for f in range(3):
        values, freq = np.unique(ref[:, f], return_counts=True)
        ranked = sorted(zip(values.tolist(), freq.tolist(), strict=True), key=lambda t: -t[1])
        slot_of = {code: (i if i < top_k else top_k) for i, (code, _) in enumerate(ranked)}
        for code in codes[:, f].tolist():
            expected[f, slot_of.get(code, top_k + 1)] += 1
    np.testing.assert_array_equal(counts, expected)


# --- divergences -------------------------------------------------------------------------------


def np_psi(r: Array, w: Array, eps: float = 1e-4) -> float:
    p = np.maximum(r / r.sum(), eps)
    q = np.maximum(w / w.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def np_js(r: Array, w: Array) -> float:
    p, q = r / r.sum(), w / w.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0)
    return float(0.5 * kl_p.sum() + 0.5 * kl_q.sum())


SHIFTS: dict[str, Callable[[Array], Array]] = {
    "same": lambda x: x,
    "shift": lambda x: x + 0.3 * np.std(x),
    "scale": lambda x: 1.7 * x,
    "far-shift": lambda x: x + 10 * np.std(x) + 1,
    "half-nan": lambda x: np.where(RNG.random(x.size) < 0.5, np.nan, x),
    "tail": lambda x: np.concatenate([x, np.full(x.size // 20, np.max(x) * 3 + 1)]),
}
DIVERGENCE_CASES = [
    (k, s) for k in ["normal", "lognormal", "pareto", "bimodal", "heavy-ties"] for s in SHIFTS
]


def _binned(kind: str, shift: str) -> tuple[Array, ...]:
    ref = COLUMNS[kind](RNG, 4000)
    win = SHIFTS[shift](COLUMNS[kind](RNG, 3000))
    edges = bins.quantile_edges(ref)
    e2, n = bins.padded_edges([edges])
    rc, wc = hist.new_counts(e2), hist.new_counts(e2)
    hist.histogram_update(ref[:, None], e2, n, rc)
    hist.histogram_update(win[:, None], e2, n, wc)
    return ref, win, edges, rc[0, : edges.size + 1], wc[0, : edges.size + 1]


@pytest.mark.parametrize(
    ("kind", "shift"), DIVERGENCE_CASES, ids=[f"{k}-{s}" for k, s in DIVERGENCE_CASES]
)
def test_psi_js_match_numpy(kind: str, shift: str) -> None:
    _, _, _, rc, wc = _binned(kind, shift)
    assert abs(dv.psi(rc, wc) - np_psi(rc, wc)) <= 1e-12
    js = dv.js_divergence(rc, wc)
    assert abs(js - np_js(rc, wc)) <= 1e-12
    assert abs(js - distance.jensenshannon(rc, wc, base=2) ** 2) <= 1e-12
    assert 0.0 <= js <= 1.0


@pytest.mark.parametrize(
    ("kind", "shift"), DIVERGENCE_CASES, ids=[f"{k}-{s}" for k, s in DIVERGENCE_CASES]
)
def test_ks_within_max_bin_mass_of_scipy(kind: str, shift: str) -> None:
    ref, win, edges, rc, wc = _binned(kind, shift)
    r, w = ref[~np.isnan(ref)], win[~np.isnan(win)]
    exact = stats.ks_2samp(r, w).statistic
    bound = max(np.max(rc / rc.sum()), np.max(wc / wc.sum()))
    binned = dv.ks_binned(rc, wc)
    assert exact - bound - 1e-12 <= binned <= exact + 1e-12
    at_edges = max(abs(np.mean(r < e) - np.mean(w < e)) for e in edges)  # raw CDFs at the edges
    assert abs(binned - at_edges) <= 1e-12


@pytest.mark.parametrize(
    ("kind", "shift"), DIVERGENCE_CASES, ids=[f"{k}-{s}" for k, s in DIVERGENCE_CASES]
)
def test_wasserstein_within_half_bin_width_of_scipy(kind: str, shift: str) -> None:
    """Documented bound: W1 of the values winsorised to [e0, e_last], within
    sum over interior bins of (p_j + q_j) * width_j / 2, all divided by the reference std."""
    ref, win, edges, rc, wc = _binned(kind, shift)
    norm = bins.reference_scale(ref)
    lo, hi = edges[0], edges[-1]
    r, w = ref[np.isfinite(ref)], win[~np.isnan(win)]
    exact = stats.wasserstein_distance(np.clip(r, lo, hi), np.clip(w, lo, hi)) / norm
    p, q = rc / rc.sum(), wc / wc.sum()
    bound = float(np.sum((p[1:-1] + q[1:-1]) * np.diff(edges) / 2)) / norm
    binned = dv.wasserstein_binned(rc, wc, edges, norm)
    assert abs(binned - exact) <= bound + 1e-12


def test_drift_scores_match_per_feature_calls_and_report_nan_share() -> None:
    kinds = ["normal", "constant", "heavy-ties", "pareto"]
    ref = np.stack([COLUMNS[k](RNG, 3000) for k in kinds], axis=1)
    win = ref[RNG.permutation(3000)[:2000]] * 1.1
    win[:100, 2] = np.nan
    edges, n_edges = bins.reference_edges(ref)
    rc, wc = hist.new_counts(edges), hist.new_counts(edges)
    hist.histogram_update(ref, edges, n_edges, rc)
    hist.histogram_update(win, edges, n_edges, wc)
    norms = np.array([bins.reference_scale(ref[:, f]) for f in range(len(kinds))])
    scores = dv.drift_scores(rc, wc, edges, n_edges, norms, np.zeros(len(kinds), np.bool_))
    for f in range(len(kinds)):
        r, w, e = rc[f, : n_edges[f] + 1], wc[f, : n_edges[f] + 1], edges[f, : n_edges[f]]
        assert scores[f, dv.PSI] == dv.psi(r, w)
        assert scores[f, dv.JS] == dv.js_divergence(r, w)
        assert scores[f, dv.KS] == dv.ks_binned(r, w)
        assert scores[f, dv.WASSERSTEIN] == dv.wasserstein_binned(r, w, e, norms[f])
    np.testing.assert_array_equal(scores[:, dv.NAN_SHARE], [0.0, 0.0, 0.05, 0.0])
    assert scores[1, dv.WASSERSTEIN] < 1e-15  # constant reference: saturates (one ulp apart)
    assert np.isnan(scores[:, dv.TVD]).all()  # continuous: KS is the moved-mass measure


def test_empty_window_scores_are_nan_not_zero() -> None:
    rc = np.array([0, 5, 5, 1], dtype=np.int64)
    wc = np.zeros(4, dtype=np.int64)
    assert np.isnan(dv.psi(rc, wc)) and np.isnan(dv.js_divergence(rc, wc))
    assert np.isnan(dv.ks_binned(rc, wc))
    assert np.isnan(dv.wasserstein_binned(rc, wc, np.array([0.0, 1.0, 2.0]), 1.0))
    assert np.isnan(dv.wasserstein_binned(rc, rc, np.array([0.0, 1.0, 2.0]), 0.0))
    with pytest.raises(ValueError):
        dv.psi(rc, wc[:3])


# --- DDSketch bucket assignment ----------------------------------------------------------------


def test_octave_bounds_are_correctly_rounded_powers_of_two() -> None:
    getcontext().prec = 60
    exact = [float(Decimal(2) ** (Decimal(k) / Decimal(64))) for k in range(64)]
    assert dd.octave_bounds().tolist() == exact


def _reference_state(values: Array) -> Array:
    """Bucket assignment by np.searchsorted on the upper bounds (upper-inclusive buckets)."""
    state = dd.new_state()
    upper = dd.bucket_upper_bounds()
    positive = values[values > 0]
    inside = positive[(positive > dd.MIN_VALUE) & (positive <= dd.MAX_VALUE)]
    idx = np.searchsorted(upper, inside, side="left")
    state[dd.SLOT_FIRST_BUCKET : dd.SLOT_OVERFLOW] = np.bincount(idx, minlength=dd.N_BUCKETS)
    state[dd.SLOT_UNDERFLOW] = np.sum(positive <= dd.MIN_VALUE)
    state[dd.SLOT_OVERFLOW] = np.sum(positive > dd.MAX_VALUE)
    state[dd.SLOT_ZERO] = np.sum(values == 0)
    state[dd.SLOT_INVALID] = np.sum(~(values >= 0))
    summable = positive[positive < dd.SUM_CAP]
    state[dd.SLOT_SUM_NS] = sum(int(np.floor(v * 1e9 + 0.5)) for v in summable.tolist())
    return state


def test_sketch_buckets_exact_at_every_boundary() -> None:
    upper = dd.bucket_upper_bounds()
    specials = [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf, 5e-324, 1e-300, 1e300, 1e9, 2.0**11]
    values = np.concatenate(
        [
            upper,
            np.nextafter(upper, 0.0),
            np.nextafter(upper, np.inf),
            [dd.MIN_VALUE, np.nextafter(dd.MIN_VALUE, 1.0), np.nextafter(dd.MAX_VALUE, 1e9)],
            specials,
            RNG.lognormal(np.log(0.01), 3.0, 20_000),
        ]
    )
    state = dd.new_state()
    dd.sketch_add(values, state)
    np.testing.assert_array_equal(state, _reference_state(values))
    rel = np.abs(upper / np.exp2(np.arange(dd.INDEX_MIN, dd.INDEX_MAX + 1) / 64) - 1)
    assert rel.max() < 1e-15


def test_sketch_state_fits_16_kib() -> None:
    assert dd.new_state().nbytes <= 16 * 1024
