"""The compiled wide-input summary (`kernels.summary.wide_summary`, through `Summary.columns`)
against numpy in float64: mean, std, L2 norm of the row's sample (the whole row, or the values
at `sample_positions` of a wide one) and the projection as a dense matrix product, for float32
and float64 rows (offset rows where float32 sums would lose the std), rows holding NaN and inf,
no rows, zero width, and inputs of any layout, byte order or writeability."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from lockgate.monitor import derived
from lockgate.monitor.kernels.summary import wide_summary

Array = np.ndarray[Any, Any]
COLUMNS = len(derived.WIDE_STATS) + derived.PROJECTIONS


def reference(values: Array, dense: Array, positions: Array | None = None) -> Array:
    """[rows, 11] in float64 by numpy: the moments of the values at `positions` (all of them
    when None; the norm scaled to the row's width), each projection the sum of its own nonzero
    weights times their coordinates (the dense product, where the row is finite)."""
    x = values.astype(np.float64)
    sample = x if positions is None else x[:, positions]
    scale = x.shape[1] / sample.shape[1] if sample.shape[1] else 1.0
    matrix = dense.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        projected = [
            (x[:, np.flatnonzero(matrix[:, d])] * matrix[np.flatnonzero(matrix[:, d]), d]).sum(1)
            for d in range(matrix.shape[1])
        ]
        norm = np.sqrt(np.square(sample).sum(axis=1) * scale)
        moments = [sample.mean(axis=1), sample.std(axis=1), norm]
    return np.column_stack([*moments, *projected])


def rows_of(rng: np.random.Generator, rows: int, width: int) -> Array:
    """Rows of different scales and offsets: pixels, centred values, a large offset with a
    small spread (the std cancels badly in float32), a constant row (std exactly 0)."""
    out = rng.normal(size=(rows, width))
    out[0] = rng.uniform(0, 255, width)
    out[1] = 1000.0 + rng.normal(size=width)
    out[2] = 3.5
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("width", "version"),
    [(300, 2), (3072, 2), (4097, 2), (150_528, 2), (150_528, 1)],
    ids=["300", "3072", "4097-sampled", "150528-sampled", "150528-whole-v1"],
)
def test_the_summary_matches_numpy_in_float64(
    dtype: type[np.generic], width: int, version: int
) -> None:
    values = rows_of(np.random.default_rng(width), 4, width).astype(dtype)
    s = derived.Summary("x", "wide", width, derived.Derivation(3, version))
    got = s.columns(values, 4)
    assert got.shape == (4, COLUMNS) and got.dtype == np.float32
    positions = derived.sample_positions(width, version)
    assert (positions.size < width) == (version == 2 and width > derived.SAMPLE_VALUES)
    assert np.isin(s.projection.columns, positions).all()  # the taps lie in the sample
    want = reference(values, s.projection.dense(width), positions)
    # float64 sums: only the final rounding to float32 remains (std: the cancellation of
    # E[x^2] - mean^2 in float64 as well, 1e-10 here)
    np.testing.assert_allclose(got[:, [0, 2]], want[:, [0, 2]], rtol=2e-7)
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-6, atol=1e-7)
    assert got[2, 1] == 0.0  # a constant row
    np.testing.assert_allclose(got[:, 3:], want[:, 3:], rtol=2e-7, atol=1e-6)
    dense = values.astype(np.float64) @ s.projection.dense(width).astype(np.float64)
    np.testing.assert_allclose(got[:, 3:], dense, rtol=2e-7, atol=1e-6)
    if width <= 3072:  # the sparse reference agrees too (float32 gather and matmul)
        np.testing.assert_allclose(got[:, 3:], s.projection.apply(values), rtol=1e-4, atol=1e-3)


def test_nan_and_inf_propagate_as_in_numpy() -> None:
    """Moments see the whole row; a projection only its own taps: a NaN or inf elsewhere does
    not reach it. NaN stays NaN (never clamped to a std of 0), inf - inf is NaN."""
    width = 3072
    s = derived.Summary("x", "wide", width, derived.Derivation(8))
    coordinates, weights = s.projection.taps
    untapped = np.setdiff1d(np.arange(width), coordinates.ravel())[0]
    tapped = coordinates[0, 5]  # a coordinate of direction 0
    values = np.random.default_rng(1).normal(size=(7, width)).astype(np.float32)
    values[0, tapped] = np.nan
    values[1, untapped] = np.nan
    values[2, tapped] = np.inf
    values[3, untapped] = -np.inf
    # +inf and -inf on two taps of direction 1 of the same sign: inf - inf there too
    same = np.flatnonzero(weights[1] * weights[1, 0] > 0)[:2]
    values[4, coordinates[1, same]] = [np.inf, -np.inf]
    values[5] = np.nan
    got = s.columns(values, 7)
    want = reference(values, s.projection.dense(width))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(got[[0, 1, 5], :3]).all()
    assert np.isnan(got[4, :2]).all() and got[4, 2] == np.inf  # inf - inf; inf^2 + inf^2
    assert np.isinf(got[[2, 3], 0]).all() and np.isnan(got[[2, 3], 1]).all()
    assert np.isnan(got[0, 3]) and np.isfinite(got[1, 3:]).all()
    assert np.isinf(got[2, 3]) and np.isfinite(got[3, 3:]).all() and np.isnan(got[4, 4])
    assert np.isnan(got[5]).sum() == COLUMNS


def test_a_value_outside_the_sample_reaches_nothing() -> None:
    """A wide row's moments and projections read only its sample: a NaN elsewhere changes no
    feature, one inside it makes the moments NaN."""
    width = 3 * 224 * 224
    s = derived.Summary("x", "wide", width, derived.Derivation(8))
    positions = derived.sample_positions(width)
    outside = np.setdiff1d(np.arange(width), positions)[::997]
    values = np.random.default_rng(5).normal(size=(2, width)).astype(np.float32)
    clean = s.columns(values, 2)
    values[0, outside] = np.nan
    values[1, positions[positions.size // 2]] = np.nan
    got = s.columns(values, 2)
    np.testing.assert_array_equal(got[0], clean[0])
    assert np.isnan(got[1, :3]).all()


def test_no_rows_and_zero_width() -> None:
    """No rows: no columns. Zero width (the layout never summarises one, but the kernel takes
    it): mean and std NaN as numpy's, norm 0, projections of no taps 0."""
    s = derived.Summary("x", "wide", 3072)
    assert s.columns(np.empty((0, 3, 32, 32), np.float32), 0).shape == (0, COLUMNS)
    empty = derived.Summary("x", "wide", 0).columns(np.empty((2, 0), np.float32), 2)
    with warnings.catch_warnings():  # numpy warns of the mean of nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        want = reference(np.empty((2, 0)), np.zeros((0, derived.PROJECTIONS)))
    np.testing.assert_array_equal(empty, want.astype(np.float32))
    assert np.isnan(empty[:, :2]).all() and (empty[:, 2:] == 0).all()


def test_layout_byte_order_and_writeability_do_not_change_the_result() -> None:
    width = 768
    s = derived.Summary("emb", "wide", width, derived.Derivation(4))
    wide = np.random.default_rng(2).normal(size=(5, 2 * width))
    for dtype in (np.float32, np.float64):
        values = np.ascontiguousarray(wide[:, ::2], dtype=dtype)
        want = s.columns(values, 5)
        strided = wide.astype(dtype)[:, ::2]
        assert not strided.flags.c_contiguous
        np.testing.assert_array_equal(s.columns(strided, 5), want)
        np.testing.assert_array_equal(s.columns(np.asfortranarray(values), 5), want)
        swapped = values.astype(values.dtype.newbyteorder(">"))
        np.testing.assert_array_equal(s.columns(swapped, 5), want)
        readonly = np.frombuffer(values.tobytes(), dtype).reshape(5, width)  # as decoded
        assert not readonly.flags.writeable
        np.testing.assert_array_equal(s.columns(readonly, 5), want)


@pytest.mark.parametrize("width", [3 * 32 * 32, 3 * 96 * 96], ids=["whole", "sampled"])
def test_integers_and_float16_are_summarised_as_float32(width: int) -> None:
    """uint8 pixels go to the kernel as they are (no converted copy of the whole row), the
    other types as float32: the same features either way."""
    s = derived.Summary("image", "wide", width, derived.Derivation(6))
    pixels = np.random.default_rng(3).integers(0, 256, size=(3, width))
    for dtype in (np.uint8, np.int64, np.float16):
        values = pixels.astype(dtype)
        np.testing.assert_array_equal(s.columns(values, 3), s.columns(pixels.astype(np.float32), 3))


@pytest.mark.parametrize(("version", "taps"), [(2, 256), (1, 388)])  # 1: ceil(sqrt(width))
def test_the_taps_are_the_dense_matrix_by_direction(version: int, taps: int) -> None:
    width = 150_528
    p = derived.projection(5, "image", width, version=version)
    coordinates, weights = p.taps
    dense = p.dense(width)
    assert coordinates.shape == weights.shape == (derived.PROJECTIONS, taps)
    for d in range(derived.PROJECTIONS):
        np.testing.assert_array_equal(coordinates[d], np.flatnonzero(dense[:, d]))
        np.testing.assert_array_equal(weights[d], dense[coordinates[d], d])


def test_the_kernel_writes_only_its_rows() -> None:
    """Called directly on a slice of a larger output, as the ring could: nothing else moves."""
    s = derived.Summary("x", "wide", 300)
    values = np.random.default_rng(4).normal(size=(3, 300)).astype(np.float32)
    out = np.full((5, COLUMNS), -7.0, np.float32)
    coordinates, weights = s.projection.taps
    wide_summary(values, np.zeros(1, np.int64), 300, coordinates, weights, out[1:4])
    np.testing.assert_array_equal(out[1:4], s.columns(values, 3))
    assert (out[[0, 4]] == -7.0).all()


def test_the_kernel_refuses_mismatched_shapes_taps_outside_the_row_and_bad_blocks() -> None:
    s = derived.Summary("x", "wide", 300)
    values = np.zeros((2, 300), np.float32)
    coordinates, weights = s.projection.taps
    out = np.empty((2, COLUMNS), np.float32)
    whole = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="same shape"):
        wide_summary(values, whole, 300, coordinates, weights[:, 1:].copy(), out)
    with pytest.raises(ValueError, match="rows, 3 \\+ dims"):
        wide_summary(values, whole, 300, coordinates, weights, out[:, 1:])
    with pytest.raises(ValueError, match="outside the row"):
        wide_summary(values[:, :100].copy(), whole, 100, coordinates, weights, out)
    for starts, block in (([0, 10], 16), ([10, 0], 4), ([290], 16), ([0], 301), ([0], -1)):
        with pytest.raises(ValueError, match="disjoint, ascending, in the row"):
            wide_summary(values, np.array(starts, np.int64), block, coordinates, weights, out)
