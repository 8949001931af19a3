"""LatencySketch: quantiles against exact rank quantiles, exact merges, export formats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.monitor.kernels import ddsketch as dd
from lockgate.monitor.sketch import LatencySketch

Array = np.ndarray[Any, Any]
RNG = np.random.default_rng(7)
RELATIVE_ACCURACY = (2 ** (1 / 64) - 1) / (2 ** (1 / 64) + 1)

LATENCIES: dict[str, Callable[[int], Array]] = {
    "lognormal": lambda n: RNG.lognormal(np.log(0.004), 0.8, n),
    "pareto": lambda n: 0.001 * (1 + RNG.pareto(1.2, n)),
    "bimodal": lambda n: np.where(RNG.random(n) < 0.9, 0.002, 0.25) * RNG.lognormal(0, 0.1, n),
    "constant": lambda n: np.full(n, 0.0123),
    "wide": lambda n: np.exp(RNG.uniform(np.log(2e-6), np.log(1000.0), n)),
    "tiny-n": lambda n: RNG.lognormal(np.log(0.01), 1.0, 3),
}
QS = [0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


@pytest.mark.parametrize("kind", list(LATENCIES))
def test_quantiles_within_relative_accuracy_of_exact_rank(kind: str) -> None:
    """Exact reference: numpy's "inverted_cdf" quantile, the sample of rank ceil(q * n) — the
    smallest value whose empirical CDF reaches q (no interpolation, always an observed value)."""
    values = LATENCIES[kind](50_000)
    sketch = LatencySketch()
    sketch.add(values)
    exact = np.quantile(values, QS, method="inverted_cdf")
    got = sketch.quantiles(QS)
    rel = np.abs(got - exact) / exact
    assert rel.max() <= RELATIVE_ACCURACY * (1 + 1e-9), (QS, got, exact)
    assert rel.max() <= 0.01
    assert sketch.quantile(0.5) == got[QS.index(0.5)]


def test_quantiles_of_zeros_out_of_range_and_empty() -> None:
    sketch = LatencySketch()
    assert np.isnan(sketch.quantile(0.5)) and sketch.count == 0
    sketch.add([0.0, 0.0, 1e-9, 5000.0, np.nan, -1.0])
    assert sketch.count == 4 and sketch.invalid == 2
    assert sketch.quantiles([0.25, 0.5, 0.75, 1.0]).tolist() == [0.0, 0.0, dd.MIN_VALUE, 2048.0]
    with pytest.raises(ValueError):
        sketch.quantile(1.5)


def test_sum_is_integer_nanoseconds() -> None:
    values = RNG.lognormal(np.log(0.004), 1.0, 10_000)
    sketch = LatencySketch()
    sketch.add(values)
    assert sketch.sum_ns == sum(int(np.floor(v * 1e9 + 0.5)) for v in values.tolist())
    assert sketch.sum == pytest.approx(values.sum(), rel=1e-9)


latency_values = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
        st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 2.0**-20, 2.0**11, 5e-324]),
    ),
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(values=latency_values, cuts=st.lists(st.integers(0, 200), max_size=6), order=st.randoms())
def test_merge_of_splits_equals_whole(values: list[float], cuts: list[int], order: Any) -> None:
    stream = np.array(values, dtype=np.float64)
    whole = LatencySketch()
    whole.add(stream)
    parts = [LatencySketch() for _ in range(len(cuts) + 1)]
    for sketch, chunk in zip(
        parts, np.split(stream, sorted(c for c in cuts if c <= len(stream))), strict=False
    ):
        sketch.add(chunk)
    order.shuffle(parts)
    merged = LatencySketch()
    for sketch in parts:
        merged.merge(sketch)
    assert np.array_equal(whole.state, merged.state)
    assert merged == whole and merged.sum_ns == whole.sum_ns
    assert np.array_equal(sum(p.state for p in parts), whole.state)  # merge is plain addition


def test_memory_budget() -> None:
    assert LatencySketch().state.nbytes <= 16 * 1024


def test_bytes_round_trip_and_rejections() -> None:
    sketch = LatencySketch()
    sketch.add(LATENCIES["pareto"](1000))
    data = sketch.to_bytes()
    assert LatencySketch.from_bytes(data) == sketch
    with pytest.raises(ValueError):
        LatencySketch.from_bytes(data[:-8])
    with pytest.raises(ValueError):
        LatencySketch.from_bytes(b"XXXX" + data[4:])
    with pytest.raises(ValueError):
        LatencySketch.from_state(np.zeros(10, dtype=np.int64))


def test_state_view_is_read_only_and_copy_is_independent() -> None:
    sketch = LatencySketch()
    sketch.add([0.01])
    with pytest.raises(ValueError):
        sketch.state[0] = 1
    clone = sketch.copy()
    clone.add([0.02])
    assert sketch.count == 1 and clone.count == 2
    clone.reset()
    assert clone.count == 0 and clone.sum_ns == 0


@pytest.mark.parametrize("kind", ["lognormal", "bimodal", "wide"])
def test_native_histogram_decodes_to_the_buckets(kind: str) -> None:
    values = np.concatenate([LATENCIES[kind](5000), [0.0, 1e-8, 1e5]])
    sketch = LatencySketch()
    sketch.add(values)
    native = sketch.native_histogram()
    decoded: dict[int, int] = {}
    index, count = 0, 0
    for span, (offset, length) in enumerate(native.spans):
        index = offset if span == 0 else index + offset
        for _ in range(length):
            count += native.deltas[len(decoded)]
            decoded[index] = count
            index += 1
    upper = dd.bucket_upper_bounds()
    inside = values[(values > dd.MIN_VALUE) & (values <= dd.MAX_VALUE)]
    expected: dict[int, int] = {}
    for i in np.searchsorted(upper, inside, side="left") + dd.INDEX_MIN:
        expected[int(i)] = expected.get(int(i), 0) + 1
    expected[dd.INDEX_MAX + 1] = 1  # the overflow value, folded just above the range
    assert {i: c for i, c in decoded.items() if c} == expected
    assert native.schema == 6 and native.zero_threshold == 2.0**-20
    assert native.zero_count == 2 and native.count == values.size
    assert native.count == native.zero_count + sum(decoded.values())


def test_cumulative_buckets_exact_on_boundaries_lower_bound_elsewhere() -> None:
    values = LATENCIES["lognormal"](20_000)
    sketch = LatencySketch()
    sketch.add(values)
    powers = [2.0**-10, 2.0**-8, 2.0**-7, 2.0**-5, 1.0, float("inf")]
    exact = [int(np.sum(values <= b)) for b in powers]
    assert sketch.cumulative_buckets(powers) == exact
    classic = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
    got = sketch.cumulative_buckets(classic)
    for bound, count in zip(classic, got, strict=True):
        assert np.sum(values <= bound / 2 ** (1 / 64)) <= count <= np.sum(values <= bound)
    with pytest.raises(ValueError):
        sketch.cumulative_buckets([1.0, 0.5])
