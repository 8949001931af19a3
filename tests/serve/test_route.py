"""The route table: contiguous bucket ranges, sticky keys that only ever move towards the canary,
and implicit endpoints for models without one."""

from __future__ import annotations

import pytest
from scipy import stats

from lockgate.errors import LockgateError
from lockgate.serve.route import (
    BUCKETS,
    EndpointRoute,
    Variant,
    bucket_bounds,
    build_route_table,
    endpoint_from_spec,
    sticky_bucket,
)
from lockgate.specs import STABLE, EndpointSpec, ShadowSpec, VariantSpec


def _canary_route(canary_weight: float) -> EndpointRoute:
    spec = EndpointSpec(
        (
            VariantSpec("stable", "m", "1", 100 - canary_weight),
            VariantSpec("canary", "m", "2", canary_weight),
        )
    )
    return endpoint_from_spec("m", spec)


def test_bucket_bounds_are_cumulative_and_exact() -> None:
    assert bucket_bounds([90, 10]) == (9000, 10000)
    assert bucket_bounds([0, 100, 0]) == (0, 10000, 10000)
    assert bucket_bounds([33.33, 33.33, 33.34]) == (3333, 6666, 10000)
    with pytest.raises(LockgateError, match="sum to 100"):
        bucket_bounds([50, 49])


def test_sticky_bucket_is_stable_and_uniform() -> None:
    assert sticky_bucket("user-42") == sticky_bucket("user-42")
    counts = [0] * 10
    for i in range(20_000):
        counts[sticky_bucket(f"user-{i}") * 10 // BUCKETS] += 1
    assert stats.chisquare(counts).pvalue > 0.001


def test_keys_only_move_from_stable_to_canary_while_ramping() -> None:
    keys = [f"customer-{i}" for i in range(10_000)]
    previous = {k: "stable" for k in keys}
    for weight in (5, 25, 50, 100):
        route = _canary_route(weight)
        current = {k: route.pick(k).name for k in keys}
        moved_back = [k for k in keys if previous[k] == "canary" and current[k] == "stable"]
        assert not moved_back, f"{len(moved_back)} keys left the canary at {weight}%"
        share = sum(v == "canary" for v in current.values()) / len(keys)
        assert abs(share - weight / 100) < 0.02
        previous = current


def test_zero_weight_variants_never_get_traffic() -> None:
    route = _canary_route(0)
    assert {route.pick(None).name for _ in range(2000)} == {"stable"}
    assert {route.pick(f"k{i}").name for i in range(2000)} == {"stable"}


def test_implicit_endpoints_serve_the_latest_version() -> None:
    spec = EndpointSpec((VariantSpec("a", "m", "1", 100),), (ShadowSpec("s", "m", "2"),))
    table = build_route_table(7, {"m": spec}, {"m": "3", "other": "2"})
    assert table.resolve("m").variants == (Variant("a", "m", "1", 100.0),)  # stored wins
    assert table.resolve("m").shadows == (Variant("s", "m", "2"),)
    # the implicit endpoint's variant has the name the admin API shows and a stored one keeps
    assert table.resolve("other").variants == (Variant(STABLE, "other", "2", 100.0),)
    assert table.versions() == {("m", "1"), ("m", "2"), ("other", "2")}
    with pytest.raises(LockgateError, match="unknown model 'nope'"):
        table.resolve("nope")


def _route(*weights: float, shadows: int = 0) -> EndpointRoute:
    variants = tuple(Variant(f"v{i}", "m", str(i), w) for i, w in enumerate(weights, 1))
    extra = tuple(Variant(f"s{i}", "s", str(i)) for i in range(1, shadows + 1))
    return EndpointRoute("e", variants, bucket_bounds(weights), extra)


def test_without_scales_the_loaded_variants_up_to_the_whole_share() -> None:
    route = _route(60, 30, 10, shadows=2).without({("m", "2"), ("s", "1")})
    assert route is not None
    assert [(v.name, round(v.weight, 6)) for v in route.variants] == [
        ("v1", 85.714286),
        ("v3", 14.285714),
    ]
    assert route.bounds[-1] == BUCKETS
    assert [v.name for v in route.fallback] == ["v2"] and [s.name for s in route.shadows] == ["s2"]
    picked = {route.pick(f"user-{i}").name for i in range(2000)}
    assert picked == {"v1", "v3"}  # no key lands on the variant that cannot serve


def test_without_gives_a_standby_everything_and_none_when_nothing_is_left() -> None:
    standby = _route(100, 0).without({("m", "1")})
    assert standby is not None
    assert [(v.name, v.weight) for v in standby.variants] == [("v2", 100.0)]
    assert standby.bounds == (BUCKETS,)
    assert _route(100, 0).without({("m", "1"), ("m", "2")}) is None
    even = _route(0, 0, 100).without({("m", "3")})
    assert even is not None and [v.weight for v in even.variants] == [50.0, 50.0]
    assert even.bounds == (5000, BUCKETS)
