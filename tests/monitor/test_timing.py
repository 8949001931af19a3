"""kernels/timing.py: first-row latencies grouped by route, against numpy's masks."""

from __future__ import annotations

import numpy as np
import pytest

from lockgate.monitor.kernels.timing import first_rows_by_route


@pytest.mark.parametrize("seed", range(8))
def test_groups_are_numpys_masks_in_row_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.choice([0, 1, 600, 5000]))
    route = rng.integers(0, int(rng.integers(1, 9)), size=rows).astype(np.int16)
    first = rng.random(rows) < rng.uniform(0.2, 1.0)
    latency = rng.lognormal(-7, 1, size=rows).astype(np.float32)
    latency[rng.random(rows) < 0.01] = np.nan
    queue = rng.lognormal(-9, 1, size=rows).astype(np.float32)
    grouped, offsets, queued = first_rows_by_route(route, first, latency, queue)
    codes = route[first]
    assert offsets[0] == 0 and offsets[-1] == codes.shape[0]
    for code in range(max(offsets.shape[0] - 1, int(codes.max(initial=-1)) + 1)):
        want = latency[first][codes == code].astype(np.float64)
        np.testing.assert_array_equal(grouped[offsets[code] : offsets[code + 1]], want)
    np.testing.assert_array_equal(queued, queue[first].astype(np.float64))


def test_a_negative_route_code_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        first_rows_by_route(
            np.array([-1], np.int16),
            np.array([True]),
            np.zeros(1, np.float32),
            np.zeros(1, np.float32),
        )
