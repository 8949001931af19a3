"""The route table: endpoint -> weighted variants (+ shadows), immutable and swapped whole, so the
hot path reads it without a lock.

Each variant owns a contiguous range of 10,000 buckets, in the endpoint's variant order. A request
with a routing key always lands in the same bucket; ramping a canary from 5% to 25% moves the
range boundary, so keys only ever move from the stable variant to the canary, never back and
forth. Requests without a key draw a bucket at random (a weighted random choice).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from lockgate.errors import invalid, not_found
from lockgate.specs import EndpointSpec

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    model: str
    version: str
    weight: float = 0.0  # percent; shadows have none
    # (model, version), computed once: read per request
    key: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.model, self.version))


def sticky_bucket(key: str) -> int:
    """A stable bucket for a routing key, identical in every process and on every host."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


def bucket_bounds(weights: Iterable[float]) -> tuple[int, ...]:
    """Cumulative upper bucket bounds for weights in percent (0.01% resolution)."""
    bounds, total = [], 0
    for weight in weights:
        total += round(weight * BUCKETS / 100)
        bounds.append(total)
    if total != BUCKETS:
        raise invalid(f"weights must sum to 100, got {total * 100 / BUCKETS:g}")
    return tuple(bounds)


@dataclass(frozen=True, slots=True)
class EndpointRoute:
    name: str
    variants: tuple[Variant, ...]
    bounds: tuple[int, ...]
    shadows: tuple[Variant, ...] = ()
    # Variants whose versions failed to load: the ones above serve their share (see `without`).
    fallback: tuple[Variant, ...] = ()
    # The variant with the most traffic: its schema is the endpoint's metadata and its queue
    # decides admission. Computed once: read per request.
    primary: Variant = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "primary", max(self.variants, key=lambda v: v.weight))

    def pick(self, routing_key: str | None) -> Variant:
        if len(self.variants) == 1:
            return self.variants[0]
        # a traffic split, not security: the stdlib generator is right here (random() is C,
        # randrange a few Python calls)
        if routing_key is None:
            bucket = int(random.random() * BUCKETS)
        else:
            bucket = sticky_bucket(routing_key)
        return self.variants[bisect.bisect_right(self.bounds, bucket)]

    def versions(self) -> set[tuple[str, str]]:
        return {v.key for v in (*self.variants, *self.shadows)}

    def without(self, failed: Collection[tuple[str, str]]) -> EndpointRoute | None:
        """This endpoint served by the variants whose versions are not in `failed`: their
        weights scaled up to 100 (equal shares when all of them had none, as a blue-green
        standby), shadows of failed versions dropped, the variants left out named in
        `fallback`. None when no variant is left."""
        kept = tuple(v for v in self.variants if v.key not in failed)
        if not kept:
            return None
        total = sum(v.weight for v in kept)
        shares = [v.weight / total * 100 if total else 100 / len(kept) for v in kept]
        variants = tuple(
            Variant(v.name, v.model, v.version, share)
            for v, share in zip(kept, shares, strict=True)
        )
        bounds = tuple(round(c * BUCKETS / 100) for c in itertools.accumulate(shares))
        return EndpointRoute(
            self.name,
            variants,
            (*bounds[:-1], BUCKETS),
            tuple(s for s in self.shadows if s.key not in failed),
            fallback=tuple(v for v in self.variants if v.key in failed),
        )


def endpoint_from_spec(name: str, spec: EndpointSpec) -> EndpointRoute:
    """The route of an endpoint (validated when its spec was built)."""
    variants = tuple(Variant(v.name, v.model, v.version, v.weight) for v in spec.variants)
    shadows = tuple(Variant(s.name, s.model, s.version) for s in spec.shadows)
    return EndpointRoute(name, variants, bucket_bounds(v.weight for v in variants), shadows)


@dataclass(frozen=True, slots=True)
class RouteTable:
    revision: int
    endpoints: Mapping[str, EndpointRoute]

    def resolve(self, name: str) -> EndpointRoute:
        route = self.endpoints.get(name)
        if route is None:
            raise not_found(f"unknown model {name!r}")
        return route

    def versions(self) -> set[tuple[str, str]]:
        """Every model version that receives traffic (or a shadow copy of it)."""
        out: set[tuple[str, str]] = set()
        for route in self.endpoints.values():
            out |= route.versions()
        return out


def build_route_table(
    revision: int, endpoint_specs: Mapping[str, EndpointSpec], implicit: Mapping[str, str]
) -> RouteTable:
    """Explicit endpoints from the state database, plus one implicit endpoint per model that has
    none of its name, serving the version `implicit` names for it (the newest the gate policy
    allows; variant `stable`, as the admin API shows it and as the endpoint keeps it once a
    change stores it)."""
    endpoints = {name: endpoint_from_spec(name, spec) for name, spec in endpoint_specs.items()}
    for model, version in implicit.items():
        if model not in endpoints:
            endpoints[model] = endpoint_from_spec(model, EndpointSpec.implicit(model, version))
    return RouteTable(revision, endpoints)
