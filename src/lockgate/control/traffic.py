"""Traffic changes as pure functions: current state in, new state and an audit record out.

Each operator action (create, weights, blue-green switch, canary, shadow, pin) is validated
here and nowhere else, so the admin API, the CLI and the retrain worker refuse the same mistakes
with the same messages. An endpoint is a JSON document:

    {"variants": [{"name": "blue", "model": "fraud", "version": "3", "weight": 100}, ...],
     "shadows":  [{"name": "challenger", "model": "fraud", "version": "4"}]}

A model without an endpoint of its own name is served by an implicit endpoint of its latest
version; the first change to it materialises that endpoint (variant `stable`), which from then on
stays put when new versions are registered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockgate.control.registry import NAME_PATTERN
from lockgate.control.state import Change, Mutation, State
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found

Spec = dict[str, Any]
Key = tuple[str, str]
STABLE = "stable"
CANARY = "canary"


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the registry holds: {model: {versions}}, and each model's latest version."""

    versions: Mapping[str, frozenset[str]]

    def latest(self, model: str) -> str:
        versions = self.versions.get(model)
        if not versions:
            raise not_found(f"unknown model {model!r}")
        return max(versions, key=int)

    def check(self, model: str, version: str) -> None:
        if model not in self.versions:
            raise not_found(f"unknown model {model!r}")
        if version not in self.versions[model]:
            raise not_found(f"unknown version {version!r} of model {model!r}")


def endpoint_versions(spec: Spec) -> set[Key]:
    return {(v["model"], v["version"]) for v in (*spec["variants"], *spec.get("shadows", ()))}


def current_endpoint(state: State, catalog: Catalog, name: str) -> Spec:
    """The endpoint as it serves now: stored, or the implicit one of model `name`."""
    spec = state.endpoints.get(name)
    if spec is not None:
        return {"variants": list(spec["variants"]), "shadows": list(spec.get("shadows", []))}
    if catalog.versions.get(name):
        version = catalog.latest(name)
        return {"variants": [_variant(STABLE, name, version, 100.0)], "shadows": []}
    raise not_found(f"unknown endpoint {name!r}")


def _variant(name: str, model: str, version: str, weight: float) -> Spec:
    return {"name": name, "model": model, "version": version, "weight": weight}


def validate_endpoint(name: str, raw: Any, catalog: Catalog) -> Spec:
    """A whole endpoint document from a client: names, versions and weights checked."""
    _check_name("endpoint", name)
    if not isinstance(raw, dict):
        raise invalid("an endpoint must be an object with 'variants' (and optional 'shadows')")
    unknown = raw.keys() - {"variants", "shadows"}
    if unknown:
        raise invalid(f"unknown endpoint field(s): {', '.join(sorted(unknown))}")
    variants = raw.get("variants")
    shadows = raw.get("shadows", [])
    if not isinstance(variants, list) or not variants:
        raise invalid("'variants' must be a non-empty list")
    if not isinstance(shadows, list):
        raise invalid("'shadows' must be a list")
    spec: Spec = {
        "variants": [_checked_variant(v, catalog, weighted=True) for v in variants],
        "shadows": [_checked_variant(s, catalog, weighted=False) for s in shadows],
    }
    names = [v["name"] for v in (*spec["variants"], *spec["shadows"])]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise invalid(f"variant names must be unique, repeated: {', '.join(duplicates)}")
    check_weights(spec["variants"])
    return spec


def _checked_variant(raw: Any, catalog: Catalog, *, weighted: bool) -> Spec:
    if not isinstance(raw, dict):
        raise invalid("each variant must be an object with name, model, version")
    name, model, version = raw.get("name"), raw.get("model"), raw.get("version")
    if not isinstance(name, str):
        raise invalid("each variant needs a 'name' string")
    _check_name("variant", name)
    if not isinstance(model, str):
        raise invalid(f"variant {name!r} needs a 'model' string")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str):
        raise invalid(f"variant {name!r} needs a 'version'")
    catalog.check(model, version)
    out: Spec = {"name": name, "model": model, "version": version}
    if weighted:
        out["weight"] = _weight(name, raw.get("weight"))
    return out


def _weight(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise invalid(f"variant {name!r}: weight must be a number from 0 to 100")
    if not 0 <= raw <= 100:
        raise invalid(f"variant {name!r}: weight {raw} is outside 0..100")
    if abs(raw * 100 - round(raw * 100)) > 1e-6:
        raise invalid(f"variant {name!r}: weight {raw} is finer than the 0.01% resolution")
    return float(raw)


def check_weights(variants: list[Spec]) -> None:
    total = sum(v["weight"] for v in variants)
    if abs(total - 100) > 1e-6:
        raise invalid(f"weights must sum to 100, got {total:g}")


def _check_name(kind: str, name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise invalid(f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")


def _mutation(action: str, target: str, build: Any) -> Mutation:
    """Wrap an endpoint edit `build(state) -> (before, after)` as a state mutation."""

    def run(state: State) -> tuple[dict[str, Spec], frozenset[Key], Change]:
        before, after = build(state)
        endpoints = dict(state.endpoints)
        if after is None:
            endpoints.pop(target, None)
        else:
            endpoints[target] = after
        return endpoints, state.pins, Change(action, target, before, after)

    return run


# -- operator actions ---------------------------------------------------------------------------
def put_endpoint(name: str, raw: Any, catalog: Catalog) -> Mutation:
    spec = validate_endpoint(name, raw, catalog)
    return _mutation("endpoint.put", name, lambda s: (s.endpoints.get(name), spec))


def delete_endpoint(name: str) -> Mutation:
    def build(state: State) -> tuple[Spec, None]:
        if name not in state.endpoints:
            raise not_found(f"no stored endpoint {name!r} (implicit endpoints cannot be deleted)")
        return state.endpoints[name], None

    return _mutation("endpoint.delete", name, build)


def set_weights(name: str, weights: Any, catalog: Catalog) -> Mutation:
    if not isinstance(weights, dict) or not weights:
        raise invalid("'weights' must be an object {variant: weight}")

    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        after = {"variants": [dict(v) for v in before["variants"]], "shadows": before["shadows"]}
        known = {v["name"] for v in after["variants"]}
        unknown = weights.keys() - known
        if unknown:
            raise not_found(f"endpoint {name!r} has no variant(s) {', '.join(sorted(unknown))}")
        for variant in after["variants"]:
            if variant["name"] in weights:
                variant["weight"] = _weight(variant["name"], weights[variant["name"]])
        check_weights(after["variants"])
        return before, after

    return _mutation("endpoint.weights", name, build)


def switch(name: str, to: str, catalog: Catalog) -> Mutation:
    """Blue-green: all traffic to variant `to`, none to the others (which stay loaded)."""

    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        if to not in {v["name"] for v in before["variants"]}:
            raise not_found(f"endpoint {name!r} has no variant {to!r}")
        after = {
            "variants": [
                {**v, "weight": 100.0 if v["name"] == to else 0.0} for v in before["variants"]
            ],
            "shadows": before["shadows"],
        }
        return before, after

    return _mutation("endpoint.switch", name, build)


def canary(name: str, model: str | None, version: str, weight: Any, catalog: Catalog) -> Mutation:
    """Start or adjust the canary: variant `canary` at `weight`%, the rest scaled to fill."""
    share = _weight(CANARY, weight)

    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        target_model = model or _default_model(before)
        catalog.check(target_model, version)
        others = [dict(v) for v in before["variants"] if v["name"] != CANARY]
        if not others:
            raise LockgateError(ErrorKind.UNPROCESSABLE, f"endpoint {name!r} has no stable variant")
        _rescale(others, 100.0 - share)
        variants = [*others, _variant(CANARY, target_model, version, share)]
        return before, {"variants": variants, "shadows": before["shadows"]}

    return _mutation("canary.set", name, build)


def promote(name: str, catalog: Catalog) -> Mutation:
    """The canary takes all traffic and becomes the stable variant; the old ones leave."""

    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        canary_variant = _canary_of(name, before)
        promoted = {**canary_variant, "name": STABLE, "weight": 100.0}
        return before, {"variants": [promoted], "shadows": before["shadows"]}

    return _mutation("canary.promote", name, build)


def rollback(name: str, catalog: Catalog) -> Mutation:
    """Remove the canary; the remaining variants get their traffic back in proportion."""

    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        _canary_of(name, before)
        others = [dict(v) for v in before["variants"] if v["name"] != CANARY]
        _rescale(others, 100.0)
        return before, {"variants": others, "shadows": before["shadows"]}

    return _mutation("canary.rollback", name, build)


def add_shadow(
    name: str, variant: str, model: str | None, version: str, catalog: Catalog
) -> Mutation:
    _check_name("variant", variant)

    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        target_model = model or _default_model(before)
        catalog.check(target_model, version)
        if variant in {v["name"] for v in (*before["variants"], *before["shadows"])}:
            raise LockgateError(
                ErrorKind.CONFLICT, f"endpoint {name!r} already has a variant {variant!r}"
            )
        shadow = {"name": variant, "model": target_model, "version": version}
        return before, {"variants": before["variants"], "shadows": [*before["shadows"], shadow]}

    return _mutation("shadow.add", name, build)


def remove_shadow(name: str, variant: str, catalog: Catalog) -> Mutation:
    def build(state: State) -> tuple[Spec, Spec]:
        before = current_endpoint(state, catalog, name)
        shadows = [s for s in before["shadows"] if s["name"] != variant]
        if len(shadows) == len(before["shadows"]):
            raise not_found(f"endpoint {name!r} has no shadow {variant!r}")
        return before, {"variants": before["variants"], "shadows": shadows}

    return _mutation("shadow.remove", name, build)


def pin(model: str, version: str, catalog: Catalog) -> Mutation:
    """Keep a version loaded and warm without traffic (explicit-version calls, quick switches)."""
    catalog.check(model, version)

    def run(state: State) -> tuple[dict[str, Spec], frozenset[Key], Change]:
        pins = state.pins | {(model, version)}
        change = Change("version.load", f"{model}/{version}", None, {"pinned": True})
        return state.endpoints, pins, change

    return run


def unpin(model: str, version: str) -> Mutation:
    """Drop the pin; the version stays loaded for as long as it still receives traffic."""

    def run(state: State) -> tuple[dict[str, Spec], frozenset[Key], Change]:
        key = (model, version)
        if key not in state.pins:
            raise not_found(f"{model} v{version} is not pinned")
        change = Change("version.unload", f"{model}/{version}", {"pinned": True}, None)
        return state.endpoints, state.pins - {key}, change

    return run


def _default_model(spec: Spec) -> str:
    models: set[str] = {v["model"] for v in spec["variants"]}
    if len(models) != 1:
        raise invalid("the endpoint serves several models: name the model")
    return models.pop()


def _canary_of(name: str, spec: Spec) -> Spec:
    for v in spec["variants"]:
        if v["name"] == CANARY:
            return dict(v)
    raise LockgateError(ErrorKind.UNPROCESSABLE, f"endpoint {name!r} has no canary")


def _rescale(variants: list[Spec], total: float) -> None:
    """Scale weights to `total` keeping proportions (equal shares when all are 0), in 0.01%
    steps, with the rounding remainder on the largest variant so the sum is exact."""
    current = sum(v["weight"] for v in variants)
    for v in variants:
        share = v["weight"] / current if current > 0 else 1 / len(variants)
        v["weight"] = round(total * share, 2)
    largest = max(variants, key=lambda v: v["weight"])
    largest["weight"] = round(largest["weight"] + total - sum(v["weight"] for v in variants), 2)
