"""The gate policy: how much of an endpoint's traffic a version may take before its gates passed.

A version is *gated* when its recorded gate results (`gates.json`, written by the retrain
worker or `lockgate models evaluate`) passed; otherwise it is *ungated*: not evaluated, or its
gates failed. An ungated version may take at most `ungated_max_percent` of an endpoint's
traffic (the gateway's `--ungated-max-percent`, default 5), so it can never be switched or
promoted to 100%; shadows take no traffic and are always allowed. 100 turns the policy off.

The policy judges *changes*, not states: a change is refused only when it raises an ungated
version's share of the endpoint above the limit. A state that already exceeds it (written
before the policy, or forced by an admin) keeps serving, may be reduced, and a canary rollback
(the way back) is never refused. An admin may force a refused change with a reason; the audit
log records the override.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lockgate.errors import invalid
from lockgate.specs import EndpointSpec, VersionKey

PASSED, FAILED, NONE = "passed", "failed", "none"  # a version's gate status
DEFAULT_UNGATED_MAX_PERCENT = 5.0
FLAG = "--ungated-max-percent"
POLICY = "ungated-max-percent"
_EPSILON = 1e-6


def gate_status(passed: bool | None) -> str:
    """PASSED, FAILED or NONE from a version's recorded verdict (None: no results)."""
    if passed is None:
        return NONE
    return PASSED if passed else FAILED


def limit_value(raw: Any) -> float:
    """A limit in percent: a finite number in 0..100 (INVALID naming the flag otherwise)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise invalid(f"{FLAG} must be a number from 0 to 100, got {raw!r}")
    if not 0 <= raw <= 100:
        raise invalid(f"{FLAG} must be from 0 to 100, got {raw:g}")
    return float(raw)


@dataclass(frozen=True, slots=True)
class Force:
    """An admin's override of the policy for one change, with the reason they gave."""

    reason: str
    role: str


@dataclass(frozen=True, slots=True)
class GatePolicy:
    ungated_max_percent: float = DEFAULT_UNGATED_MAX_PERCENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "ungated_max_percent", limit_value(self.ungated_max_percent))

    @property
    def enabled(self) -> bool:
        return self.ungated_max_percent < 100

    def implicit_version(self, statuses: Mapping[str, str]) -> str:
        """The version an implicit endpoint serves at 100%, from {version: gate status}: the
        newest passed one; without any, the newest never evaluated (a home of hand-registered
        models keeps serving its latest); when every version failed, the newest (an implicit
        endpoint always serves something). With the policy off: the newest."""
        newest = sorted(statuses, key=int, reverse=True)
        if not self.enabled:
            return newest[0]
        for wanted in (PASSED, NONE):
            found = next((v for v in newest if statuses[v] == wanted), None)
            if found is not None:
                return found
        return newest[0]

    def violations(
        self,
        endpoint: str,
        before: EndpointSpec | None,
        after: EndpointSpec | None,
        status_of: Callable[[VersionKey], str],
    ) -> list[str]:
        """Why the change from `before` to `after` breaks the policy (empty: it does not): one
        message per ungated version whose share rises above the limit."""
        if not self.enabled or after is None:
            return []
        was = shares(before)
        out = []
        for key, share in sorted(shares(after).items()):
            if share <= self.ungated_max_percent + _EPSILON or share <= was.get(key, 0) + _EPSILON:
                continue
            status = status_of(key)
            if status != PASSED:
                out.append(self.refusal(endpoint, key, status, share))
        return out

    def refusal(self, endpoint: str, key: VersionKey, status: str, share: float) -> str:
        model, version = key
        limit = f"{self.ungated_max_percent:g}%"
        why = "its recorded gates failed" if status == FAILED else "it was never evaluated"
        fix = (
            "register a version that passes"
            if status == FAILED
            else f"run `lockgate models evaluate {model} {version} --data FILE`"
        )
        return (
            f"version {version} of {model} has no passed gates ({why}): it may take at most "
            f"{limit} of traffic ({FLAG}), this change gives it {share:g}% of endpoint "
            f"{endpoint!r}; {fix} or force as admin"
        )

    def record(self, force: Force, overridden: list[str]) -> dict[str, Any]:
        """What the audit log keeps of a forced change."""
        return {
            "policy": POLICY,
            "limit": self.ungated_max_percent,
            "reason": force.reason,
            "role": force.role,
            "overridden": overridden,
        }


def shares(spec: EndpointSpec | None) -> dict[VersionKey, float]:
    """Each version's share of the endpoint's traffic (variants of one version add up)."""
    out: dict[VersionKey, float] = {}
    for v in spec.variants if spec is not None else ():
        out[v.key] = out.get(v.key, 0.0) + v.weight
    return out
