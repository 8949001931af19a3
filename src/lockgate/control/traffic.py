"""Traffic changes as pure functions: current state in, a Transition (the next endpoints and
pins, and the audit record) out.

Each operator action (create, weights, blue-green switch, canary, shadow, pin) is validated
here and in the typed model (lockgate.specs) and nowhere else, so the admin API, the CLI and the
retrain worker refuse the same mistakes with the same messages.

A model without an endpoint of its own name is served by an implicit endpoint of the newest
version the gate policy allows (lockgate.control.policy); the first change to it materialises
that endpoint (variant `stable`), which from then on stays put when new versions are registered.

`enforced` wraps any change in the gate policy: the dry run and the commit both check it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lockgate.control.policy import Force, GatePolicy, gate_status
from lockgate.control.state import Change, Mutation, State, Transition
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.specs import (
    CANARY,
    STABLE,
    EndpointSpec,
    ShadowSpec,
    VariantSpec,
    VersionKey,
    checked_name,
    weight_value,
)

Edit = Callable[[State], tuple[EndpointSpec | None, EndpointSpec | None]]


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the registry holds: {model: {versions}}, the gate verdicts recorded with them
    ({(model, version): passed}; absent: never evaluated), and the policy that judges them."""

    versions: Mapping[str, frozenset[str]]
    verdicts: Mapping[tuple[str, str], bool] = field(default_factory=dict)
    policy: GatePolicy = field(default_factory=GatePolicy)

    def latest(self, model: str) -> str:
        versions = self.versions.get(model)
        if not versions:
            raise not_found(f"unknown model {model!r}")
        return max(versions, key=int)

    def status(self, key: VersionKey) -> str:
        return gate_status(self.verdicts.get(key))

    def implicit_version(self, model: str) -> str:
        """The version the implicit endpoint of `model` serves (see GatePolicy)."""
        versions = self.versions.get(model)
        if not versions:
            raise not_found(f"unknown model {model!r}")
        return self.policy.implicit_version(
            {v: self.status(VersionKey(model, v)) for v in versions}
        )

    def check(self, model: str, version: str) -> None:
        if model not in self.versions:
            raise not_found(f"unknown model {model!r}")
        if version not in self.versions[model]:
            raise not_found(f"unknown version {version!r} of model {model!r}")


def current_endpoint(state: State, catalog: Catalog, name: str) -> EndpointSpec:
    """The endpoint as it serves now: stored, or the implicit one of model `name`."""
    spec = state.endpoints.get(name)
    if spec is not None:
        return spec
    if catalog.versions.get(name):
        return EndpointSpec.implicit(name, catalog.implicit_version(name))
    raise not_found(f"unknown endpoint {name!r}")


def _served(state: State, catalog: Catalog, name: str) -> EndpointSpec | None:
    spec = state.endpoints.get(name)
    if spec is None and catalog.versions.get(name):
        spec = EndpointSpec.implicit(name, catalog.implicit_version(name))
    return spec


_NOT_JUDGED = frozenset({"canary.rollback", "version.load", "version.unload"})


def enforced(mutation: Mutation, catalog: Catalog, force: Force | None = None) -> Mutation:
    """`mutation`, refused (CONFLICT naming the policy, the versions and the limit) when it
    raises an ungated version's share of its endpoint above the limit. With `force` (an
    admin's, with a reason) it goes through and its audit record says what was overridden.
    A canary rollback is never refused: it returns traffic to whom served it before."""

    def run(state: State) -> Transition:
        step = mutation(state)
        change = step.change
        if change.action in _NOT_JUDGED:
            problems: list[str] = []
        else:
            after = State(state.revision, step.endpoints, step.pins)
            problems = catalog.policy.violations(
                change.target,
                _served(state, catalog, change.target),
                _served(after, catalog, change.target),
                catalog.status,
            )
        if force is not None:
            forced = catalog.policy.record(force, problems)
            return replace(step, change=replace(change, forced=forced))
        if problems:
            raise LockgateError(ErrorKind.CONFLICT, "; ".join(problems))
        return step

    return run


def validate_endpoint(name: str, raw: Any, catalog: Catalog) -> EndpointSpec:
    """A whole endpoint document from a client: names, weights and registered versions."""
    checked_name("endpoint", name)
    spec = EndpointSpec.from_doc(raw)
    for v in spec.members():
        catalog.check(v.model, v.version)
    return spec


def _doc(spec: EndpointSpec | None) -> dict[str, Any] | None:
    return None if spec is None else spec.to_doc()


def _edit(action: str, target: str, build: Edit) -> Mutation:
    """Wrap an endpoint edit `build(state) -> (before, after)` as a state mutation; `after`
    None deletes the stored endpoint."""

    def run(state: State) -> Transition:
        before, after = build(state)
        endpoints = dict(state.endpoints)
        if after is None:
            endpoints.pop(target, None)
        else:
            endpoints[target] = after
        return Transition(endpoints, state.pins, Change(action, target, _doc(before), _doc(after)))

    return run


# -- operator actions ---------------------------------------------------------------------------
def put_endpoint(name: str, raw: Any, catalog: Catalog) -> Mutation:
    spec = validate_endpoint(name, raw, catalog)
    return _edit("endpoint.put", name, lambda s: (s.endpoints.get(name), spec))


def delete_endpoint(name: str) -> Mutation:
    def build(state: State) -> tuple[EndpointSpec, None]:
        if name not in state.endpoints:
            raise not_found(f"no stored endpoint {name!r} (implicit endpoints cannot be deleted)")
        return state.endpoints[name], None

    return _edit("endpoint.delete", name, build)


def set_weights(name: str, weights: Any, catalog: Catalog) -> Mutation:
    if not isinstance(weights, dict) or not weights:
        raise invalid("'weights' must be an object {variant: weight}")

    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        unknown = weights.keys() - {v.name for v in before.variants}
        if unknown:
            raise not_found(f"endpoint {name!r} has no variant(s) {', '.join(sorted(unknown))}")
        variants = [
            replace(v, weight=weight_value(v.name, weights[v.name])) if v.name in weights else v
            for v in before.variants
        ]
        return before, replace(before, variants=tuple(variants))

    return _edit("endpoint.weights", name, build)


def switch(name: str, to: str, catalog: Catalog) -> Mutation:
    """Blue-green: all traffic to variant `to`, none to the others (which stay loaded)."""

    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        if before.variant(to) is None:
            raise not_found(f"endpoint {name!r} has no variant {to!r}")
        variants = [replace(v, weight=100.0 if v.name == to else 0.0) for v in before.variants]
        return before, replace(before, variants=tuple(variants))

    return _edit("endpoint.switch", name, build)


def canary(
    name: str, model: str | None, version: str | None, weight: Any, catalog: Catalog
) -> Mutation:
    """Start or adjust the canary: variant `canary` at `weight`%, the rest scaled to fill.
    Without a version the existing canary is ramped (UNPROCESSABLE when there is none)."""
    share = weight_value(CANARY, weight)

    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        target = _canary_target(name, before, model, version)
        catalog.check(*target)
        others = [v for v in before.variants if v.name != CANARY]
        if not others:
            raise LockgateError(ErrorKind.UNPROCESSABLE, f"endpoint {name!r} has no stable variant")
        variants = (*_rescale(others, 100.0 - share), VariantSpec(CANARY, *target, share))
        return before, replace(before, variants=variants)

    return _edit("canary.set", name, build)


def _canary_target(
    name: str, spec: EndpointSpec, model: str | None, version: str | None
) -> VersionKey:
    """The version a canary change puts at the canary: the one named, or the current canary's."""
    if version is not None:
        return VersionKey(model or _default_model(spec), version)
    current = spec.variant(CANARY)
    if current is None:
        raise LockgateError(
            ErrorKind.UNPROCESSABLE,
            f"endpoint {name!r} has no canary to adjust: starting one needs a version",
        )
    if model is not None and model != current.model:
        raise invalid(f"the canary of {name!r} serves model {current.model!r}: name the version")
    return current.key


def promote(name: str, catalog: Catalog) -> Mutation:
    """The canary takes all traffic and becomes the stable variant; the old ones leave."""

    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        promoted = replace(_canary_of(name, before), name=STABLE, weight=100.0)
        return before, replace(before, variants=(promoted,))

    return _edit("canary.promote", name, build)


def rollback(name: str, catalog: Catalog) -> Mutation:
    """Remove the canary; the remaining variants get their traffic back in proportion."""

    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        _canary_of(name, before)
        others = _rescale([v for v in before.variants if v.name != CANARY], 100.0)
        return before, replace(before, variants=tuple(others))

    return _edit("canary.rollback", name, build)


def add_shadow(
    name: str, variant: str, model: str | None, version: str, catalog: Catalog
) -> Mutation:
    checked_name("variant", variant)

    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        shadow = ShadowSpec(variant, model or _default_model(before), version)
        catalog.check(*shadow.key)
        if variant in {v.name for v in before.members()}:
            raise LockgateError(
                ErrorKind.CONFLICT, f"endpoint {name!r} already has a variant {variant!r}"
            )
        return before, replace(before, shadows=(*before.shadows, shadow))

    return _edit("shadow.add", name, build)


def remove_shadow(name: str, variant: str, catalog: Catalog) -> Mutation:
    def build(state: State) -> tuple[EndpointSpec, EndpointSpec]:
        before = current_endpoint(state, catalog, name)
        if before.shadow(variant) is None:
            raise not_found(f"endpoint {name!r} has no shadow {variant!r}")
        shadows = tuple(s for s in before.shadows if s.name != variant)
        return before, replace(before, shadows=shadows)

    return _edit("shadow.remove", name, build)


def pin(model: str, version: str, catalog: Catalog) -> Mutation:
    """Keep a version loaded and warm without traffic (explicit-version calls, quick switches)."""
    catalog.check(model, version)

    def run(state: State) -> Transition:
        pins = state.pins | {VersionKey(model, version)}
        change = Change("version.load", f"{model}/{version}", None, {"pinned": True})
        return Transition(state.endpoints, pins, change)

    return run


def unpin(model: str, version: str) -> Mutation:
    """Drop the pin; the version stays loaded for as long as it still receives traffic."""

    def run(state: State) -> Transition:
        key = VersionKey(model, version)
        if key not in state.pins:
            raise not_found(f"{model} v{version} is not pinned")
        change = Change("version.unload", f"{model}/{version}", {"pinned": True}, None)
        return Transition(state.endpoints, state.pins - {key}, change)

    return run


def _default_model(spec: EndpointSpec) -> str:
    models = {v.model for v in spec.variants}
    if len(models) != 1:
        raise invalid("the endpoint serves several models: name the model")
    return models.pop()


def _canary_of(name: str, spec: EndpointSpec) -> VariantSpec:
    found = spec.variant(CANARY)
    if found is None:
        raise LockgateError(ErrorKind.UNPROCESSABLE, f"endpoint {name!r} has no canary")
    return found


def _rescale(variants: Sequence[VariantSpec], total: float) -> list[VariantSpec]:
    """Scale weights to `total` keeping proportions (equal shares when all are 0), in 0.01%
    steps, with the rounding remainder on the largest variant so the sum is exact."""
    current = sum(v.weight for v in variants)
    weights = [
        round(total * (v.weight / current if current > 0 else 1 / len(variants)), 2)
        for v in variants
    ]
    largest = max(range(len(weights)), key=weights.__getitem__)
    weights[largest] = round(weights[largest] + total - sum(weights), 2)
    return [replace(v, weight=w) for v, w in zip(variants, weights, strict=True)]
