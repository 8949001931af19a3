"""The typed control-plane model (ground floor: imports nothing above `errors`).

Endpoints, the state snapshot, state mutations and rollout plans are parsed from JSON (or TOML)
once, at the boundary where they enter (the admin API body, a state database row, a pipeline
file, an admin API answer), and everything inside works on these frozen objects. `to_doc()`
gives back the exact JSON shape the admin API returns and the state database stores:

    {"variants": [{"name": "blue", "model": "fraud", "version": "3", "weight": 100.0}, ...],
     "shadows":  [{"name": "challenger", "model": "fraud", "version": "4"}]}

Constructing an object validates it, so an invalid endpoint or plan cannot exist; every message
names the field (and the variant) it is about.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, Protocol

from lockgate.errors import invalid

Doc = dict[str, Any]
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STABLE = "stable"  # the variant of an implicit endpoint, and what a promoted canary becomes
CANARY = "canary"
_VARIANT_KEYS = ("name", "model", "version", "weight")


def checked_name(kind: str, name: str) -> str:
    """`name` if it is a valid endpoint or variant name, else INVALID saying why."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise invalid(f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return name


def weight_value(variant: str, raw: Any) -> float:
    """A traffic share in percent: a finite number in 0..100 on the 0.01% grid."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise invalid(f"variant {variant!r}: weight must be a number from 0 to 100, got {raw!r}")
    if not 0 <= raw <= 100:
        raise invalid(f"variant {variant!r}: weight {raw} is outside 0..100")
    if abs(raw * 100 - round(raw * 100)) > 1e-6:
        raise invalid(f"variant {variant!r}: weight {raw} is finer than the 0.01% resolution")
    return float(raw)


class VersionKey(NamedTuple):
    """One model version. A named tuple, so it is interchangeable with the `(model, version)`
    pairs the serving side keys its sessions, rings and metrics by."""

    model: str
    version: str


def _check_target(variant: str, model: Any, version: Any) -> None:
    for key, value in (("model", model), ("version", version)):
        if not isinstance(value, str) or not value:
            raise invalid(f"variant {variant!r}: {key} must be a non-empty string, got {value!r}")


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """A variant that gets a copy of the traffic; its answers are compared, never returned."""

    name: str
    model: str
    version: str

    def __post_init__(self) -> None:
        checked_name("variant", self.name)
        _check_target(self.name, self.model, self.version)

    @property
    def key(self) -> VersionKey:
        return VersionKey(self.model, self.version)

    def to_doc(self) -> Doc:
        return {"name": self.name, "model": self.model, "version": self.version}


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """A variant that answers `weight` percent of the endpoint's traffic."""

    name: str
    model: str
    version: str
    weight: float

    def __post_init__(self) -> None:
        checked_name("variant", self.name)
        _check_target(self.name, self.model, self.version)
        object.__setattr__(self, "weight", weight_value(self.name, self.weight))

    @property
    def key(self) -> VersionKey:
        return VersionKey(self.model, self.version)

    def to_doc(self) -> Doc:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "weight": self.weight,
        }


def _fields(raw: Any, where: str, keys: tuple[str, ...]) -> tuple[str, Any, Any]:
    """The name, model and version of one variant (or shadow) object of a document."""
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object with {', '.join(keys)}")
    unknown = raw.keys() - set(keys)
    if unknown:
        raise invalid(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise invalid(f"{where}.name must be a string, got {name!r}")
    version = raw.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)  # versions may be sent as numbers
    return name, raw.get("model"), version


def _variant(raw: Any, where: str) -> VariantSpec:
    name, model, version = _fields(raw, where, _VARIANT_KEYS)
    return VariantSpec(name, model, version, raw.get("weight"))


def _shadow(raw: Any, where: str) -> ShadowSpec:
    return ShadowSpec(*_fields(raw, where, _VARIANT_KEYS[:3]))


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint: weighted variants (summing to 100%) and shadows, names unique across both."""

    variants: tuple[VariantSpec, ...]
    shadows: tuple[ShadowSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "shadows", tuple(self.shadows))
        if not self.variants:
            raise invalid("'variants' must be a non-empty list")
        names = [v.name for v in self.members()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise invalid(f"variant names must be unique, repeated: {', '.join(repeated)}")
        total = sum(v.weight for v in self.variants)
        if abs(total - 100) > 1e-6:
            raise invalid(f"weights must sum to 100, got {total:g}")

    @classmethod
    def from_doc(cls, doc: Any) -> EndpointSpec:
        """Parse and validate an endpoint document (INVALID naming the field otherwise)."""
        if not isinstance(doc, dict):
            raise invalid("an endpoint must be an object with 'variants' (and optional 'shadows')")
        unknown = doc.keys() - {"variants", "shadows"}
        if unknown:
            raise invalid(f"unknown endpoint field(s): {', '.join(sorted(map(str, unknown)))}")
        variants, shadows = doc.get("variants"), doc.get("shadows", [])
        if not isinstance(variants, list) or not variants:
            raise invalid("'variants' must be a non-empty list")
        if not isinstance(shadows, list):
            raise invalid("'shadows' must be a list")
        return cls(
            tuple(_variant(v, f"variants[{i}]") for i, v in enumerate(variants)),
            tuple(_shadow(s, f"shadows[{i}]") for i, s in enumerate(shadows)),
        )

    @classmethod
    def implicit(cls, model: str, version: str) -> EndpointSpec:
        """How a model without an endpoint of its name is served: its latest version."""
        return cls((VariantSpec(STABLE, model, version, 100.0),))

    def to_doc(self) -> Doc:
        return {
            "variants": [v.to_doc() for v in self.variants],
            "shadows": [s.to_doc() for s in self.shadows],
        }

    def versions(self) -> frozenset[VersionKey]:
        """Every version the endpoint needs loaded: variants (even at 0%) and shadows."""
        return frozenset(v.key for v in self.members())

    def members(self) -> list[VariantSpec | ShadowSpec]:
        """Variants, then shadows, in the endpoint's order."""
        out: list[VariantSpec | ShadowSpec] = [*self.variants]
        out += self.shadows
        return out

    def variant(self, name: str) -> VariantSpec | None:
        return next((v for v in self.variants if v.name == name), None)

    def shadow(self, name: str) -> ShadowSpec | None:
        return next((s for s in self.shadows if s.name == name), None)


# -- the state and its changes ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class State:
    """One consistent snapshot of the state database: stored endpoints and pinned versions."""

    revision: int
    endpoints: dict[str, EndpointSpec]
    pins: frozenset[VersionKey]


@dataclass(frozen=True, slots=True)
class Change:
    """What a write did, as the audit log records it and the admin API answers it: `before` and
    `after` are JSON documents (an endpoint's `to_doc()`, `{"pinned": true}`, or None)."""

    action: str
    target: str
    before: Any
    after: Any
    forced: Any = None  # an admin's override of the gate policy: reason, role, what it allowed


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of a mutation: the next endpoints and pins, and the change that leads there."""

    endpoints: dict[str, EndpointSpec]
    pins: frozenset[VersionKey]
    change: Change


class Mutation(Protocol):
    """A state change as a pure function of the current state; it raises LockgateError to
    refuse. The store runs it inside its transaction and commits the Transition."""

    def __call__(self, state: State, /) -> Transition: ...


# -- rollout plans ------------------------------------------------------------------------------
# A rule: (accepted type, predicate, what the message says the value must be).
_Rule = tuple[type, Any, str]
_PLAN_RULES: dict[str, _Rule] = {
    "analysis_seconds": (float, lambda v: v > 0, "a number > 0"),
    "min_requests": (int, lambda v: v >= 0, "an integer >= 0"),
    "max_extensions": (int, lambda v: v >= 0, "an integer >= 0"),
    "max_error_rate": (float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "max_p99_ratio": (float, lambda v: v > 0, "a number > 0"),
    "p99_floor_seconds": (float, lambda v: v >= 0, "a number >= 0"),
    "abort_on_drift": (bool, lambda v: True, "true or false"),
    "max_disagreement": (float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "min_accuracy_delta": (float, lambda v: True, "a number"),
    "min_labels": (int, lambda v: v >= 1, "an integer >= 1"),
    "shadow_seconds": (float, lambda v: v >= 0, "a number >= 0"),
}
_OPTIONAL = frozenset({"max_disagreement", "min_accuracy_delta"})  # None: not checked


def _plan_value(where: str, key: str, value: Any) -> Any:
    """`value` checked against the rule of plan field `key` (and normalised), or INVALID."""
    if key == "steps":
        return _steps(where, value)
    if value is None and key in _OPTIONAL:
        return None
    kind, check, text = _PLAN_RULES[key]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and check(value)
    else:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and math.isfinite(value) and check(value)
    if not ok:
        absent = " (leave it out for none)" if key in _OPTIONAL else ""
        raise invalid(f"{where}.{key} must be {text}{absent}, got {value!r}")
    return kind(value)


def _steps(where: str, raw: Any) -> tuple[float, ...]:
    """Canary percents: strictly increasing in (0, 100], on the 0.01% weight grid, ending at
    100 (the last step precedes the promotion)."""
    if not isinstance(raw, list | tuple) or not raw:
        raise invalid(f"{where}.steps must be a non-empty list of percents, got {raw!r}")
    steps: list[float] = []
    for i, value in enumerate(raw):
        path = f"{where}.steps[{i}]"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 < value <= 100:
            raise invalid(f"{path} must be a number in (0, 100], got {value!r}")
        if abs(value * 100 - round(value * 100)) > 1e-6:
            raise invalid(f"{path} must be a multiple of 0.01 (the weight grid), got {value!r}")
        if steps and value <= steps[-1]:
            raise invalid(f"{where}.steps must be strictly increasing ({path} = {value!r})")
        steps.append(float(value))
    if steps[-1] != 100:
        raise invalid(f"{where}.steps must end at 100, got {steps[-1]:g}")
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """How a candidate is ramped and judged: the `[rollout]` keys of a pipeline file (besides
    the connection settings) and the plan stored with each rollout record, one schema for both,
    so a resumed rollout follows the plan it started with whatever the file says by then."""

    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)  # canary percents, ending at 100
    analysis_seconds: float = 30.0  # observation per step
    min_requests: int = 50  # canary requests needed before a step is judged
    max_extensions: int = 3  # extra intervals to wait for min_requests, then inconclusive
    max_error_rate: float = 0.01  # canary error share above this: roll back
    max_p99_ratio: float = 1.5  # canary p99 / stable p99 above this: roll back ...
    p99_floor_seconds: float = 0.005  # ... unless the canary p99 is below this (noise)
    abort_on_drift: bool = False  # a drift alert on the candidate version rolls back
    max_disagreement: float | None = None  # shadow rows disagreeing, share above this
    min_accuracy_delta: float | None = None  # canary - stable online accuracy below this
    min_labels: int = 30  # labels per side before accuracy is compared
    shadow_seconds: float = 0.0  # > 0: a shadow phase before the first step

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _plan_value("plan", f.name, getattr(self, f.name)))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], where: str = "plan") -> RolloutPlan:
        """Parse a plan; absent keys take their defaults, unknown keys are refused. Messages
        name the key as `<where>.<key>` (`rollout.steps[2]` for a pipeline file)."""
        known = cls.keys()
        unknown = sorted(str(k) for k in doc.keys() - set(known))
        if unknown:
            names = ", ".join(f"'{where}.{k}'" for k in unknown)
            raise invalid(f"unknown key {names} (known: {', '.join(known)})")
        return cls(**{key: _plan_value(where, key, value) for key, value in doc.items()})

    def to_doc(self) -> Doc:
        doc = asdict(self)
        doc["steps"] = list(self.steps)
        return doc
