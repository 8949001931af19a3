"""The route table: contiguous bucket ranges, sticky keys that only ever move towards the canary,
and implicit endpoints for models without one."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from scipy import stats

from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.route import (
    BUCKETS,
    EndpointRoute,
    RouteTable,
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


def _three_way() -> EndpointRoute:
    spec = {
        "variants": [
            {"name": "a", "model": "m", "version": "1", "weight": 70},
            {"name": "b", "model": "m", "version": "2", "weight": 20},
            {"name": "c", "model": "n", "version": "5", "weight": 10},
        ],
        "shadows": [{"name": "s", "model": "m", "version": "3"}],
    }
    return endpoint_from_spec("e", EndpointSpec.from_doc(spec))


def test_a_keyed_request_goes_to_the_variant_owning_its_bucket() -> None:
    route = _three_way()
    assert route.bounds == (7000, 9000, 10000)
    for i in range(3000):
        key = f"account-{i}"
        # the documented mapping, computed here on its own: blake2b-64 little-endian mod 10,000
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "little") % 10_000
        assert sticky_bucket(key) == bucket
        expected = "a" if bucket < 7000 else "b" if bucket < 9000 else "c"
        assert route.pick(key).name == expected, key


def test_the_sticky_mapping_does_not_depend_on_the_process() -> None:
    """Replicas and workers must agree: the bucket is not Python's salted hash()."""
    keys = [f"user-{i}" for i in range(50)]
    code = (
        "import sys; from lockgate.serve.route import sticky_bucket; "
        "print(*[sticky_bucket(k) for k in sys.argv[1:]])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, *keys],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert [int(b) for b in out.split()] == [sticky_bucket(k) for k in keys]


def test_unkeyed_requests_follow_the_weights() -> None:
    route = _three_way()
    state = random.getstate()
    random.seed(20240611)
    try:
        picks = Counter(route.pick(None).name for _ in range(30_000))
    finally:
        random.setstate(state)
    observed = [picks["a"], picks["b"], picks["c"]]
    assert sum(observed) == 30_000 and "s" not in picks  # a shadow is never picked
    assert stats.chisquare(observed, [21_000, 6_000, 3_000]).pvalue > 0.001


def test_a_single_variant_takes_everything_and_is_primary() -> None:
    table = build_route_table(3, {}, {"m": "4"})
    route = table.resolve("m")
    assert route.variants == (Variant(STABLE, "m", "4", 100.0),) and route.bounds == (BUCKETS,)
    assert {route.pick(None) for _ in range(100)} == {route.primary}
    assert route.pick("any-key") is route.primary
    assert table.revision == 3


def test_primary_variant_and_versions_include_shadows() -> None:
    route = _three_way()
    assert route.primary.name == "a"  # the most traffic: its schema and queue speak for e
    assert route.versions() == {("m", "1"), ("m", "2"), ("n", "5"), ("m", "3")}
    assert route.shadows == (Variant("s", "m", "3"),) and route.shadows[0].weight == 0.0
    assert route.variants[2].key == ("n", "5")
    table = RouteTable(9, {"e": route})
    assert table.resolve("e") is route and table.versions() == route.versions()
    with pytest.raises(LockgateError) as info:
        table.resolve("m")  # a model name is not an endpoint unless the table says so
    assert info.value.kind is ErrorKind.NOT_FOUND


def test_an_endpoint_spec_with_an_integer_version_routes_to_its_string_key() -> None:
    spec = {"variants": [{"name": "v", "model": "m", "version": 2, "weight": 100}]}
    assert endpoint_from_spec("m", EndpointSpec.from_doc(spec)).pick(None).key == ("m", "2")


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
