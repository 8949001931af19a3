"""Traffic changes on a real state database (SQLite and PostgreSQL): validation, canary
arithmetic, optimistic concurrency and the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lockgate.control import traffic
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError

CATALOG = traffic.Catalog({"fraud": frozenset({"1", "2", "3"}), "other": frozenset({"1"})})


@pytest.fixture
def store(tmp_path: Path, state_url: str | None) -> StateStore:
    return StateStore(tmp_path, state_url)


def _variants(store: StateStore, name: str = "fraud") -> list[tuple[str, str, float]]:
    spec = traffic.current_endpoint(store.read(), CATALOG, name)
    return [(v.name, v.version, v.weight) for v in spec.variants]


def test_implicit_endpoint_materialises_on_first_change(store: StateStore) -> None:
    assert _variants(store) == [("stable", "3", 100.0)]  # implicit: latest
    store.apply(traffic.canary("fraud", None, "2", 5, CATALOG), actor="ops", expected_revision=0)
    assert _variants(store) == [("stable", "3", 95.0), ("canary", "2", 5.0)]
    # a newly registered version does not move a stored endpoint
    newer = traffic.Catalog({"fraud": frozenset({"1", "2", "3", "4"})})
    spec = traffic.current_endpoint(store.read(), newer, "fraud")
    assert [v.version for v in spec.variants] == ["3", "2"]


def test_canary_ramp_promote_and_rollback(store: StateStore) -> None:
    body = {"variants": [{"name": "stable", "model": "fraud", "version": 1, "weight": 100}]}
    store.apply(traffic.put_endpoint("fraud", body, CATALOG), actor="ops", expected_revision=None)
    for weight in (5, 25, 50):
        mutation = traffic.canary("fraud", None, "2", weight, CATALOG)
        store.apply(mutation, actor="ops", expected_revision=None)
        assert _variants(store) == [("stable", "1", 100.0 - weight), ("canary", "2", weight)]
    store.apply(traffic.rollback("fraud", CATALOG), actor="ops", expected_revision=None)
    assert _variants(store) == [("stable", "1", 100.0)]
    store.apply(
        traffic.canary("fraud", None, "3", 10, CATALOG), actor="ops", expected_revision=None
    )
    store.apply(traffic.promote("fraud", CATALOG), actor="ops", expected_revision=None)
    assert _variants(store) == [("stable", "3", 100.0)]


def test_switch_flips_all_traffic(store: StateStore) -> None:
    body = {
        "variants": [
            {"name": "blue", "model": "fraud", "version": "1", "weight": 100},
            {"name": "green", "model": "fraud", "version": "2", "weight": 0},
        ]
    }
    store.apply(traffic.put_endpoint("fraud", body, CATALOG), actor="ops", expected_revision=None)
    store.apply(traffic.switch("fraud", "green", CATALOG), actor="ops", expected_revision=None)
    assert _variants(store) == [("blue", "1", 0.0), ("green", "2", 100.0)]


def test_rescaling_keeps_an_exact_sum(store: StateStore) -> None:
    body = {
        "variants": [
            {"name": n, "model": "fraud", "version": v, "weight": w}
            for n, v, w in (("a", "1", 33.33), ("b", "2", 33.33), ("c", "3", 33.34))
        ]
    }
    store.apply(traffic.put_endpoint("fraud", body, CATALOG), actor="ops", expected_revision=None)
    store.apply(
        traffic.canary("fraud", None, "1", 7.77, CATALOG), actor="ops", expected_revision=None
    )
    weights = [w for _, _, w in _variants(store)]
    assert round(sum(weights), 6) == 100 and all(round(w, 2) == w for w in weights)


BAD: list[tuple[str, Any, ErrorKind, str]] = [
    ("sum", [("a", "1", 60), ("b", "2", 30)], ErrorKind.INVALID, "sum to 100"),
    ("negative", [("a", "1", 110), ("b", "2", -10)], ErrorKind.INVALID, "outside 0..100"),
    ("resolution", [("a", "1", 99.995), ("b", "2", 0.005)], ErrorKind.INVALID, "0.01%"),
    ("version", [("a", "9", 100)], ErrorKind.NOT_FOUND, "unknown version '9'"),
    ("duplicate", [("a", "1", 50), ("a", "2", 50)], ErrorKind.INVALID, "unique"),
    ("name", [("bad name", "1", 100)], ErrorKind.INVALID, "invalid variant name"),
]


@pytest.mark.parametrize(
    ("variants", "kind", "mentions"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_invalid_endpoints_change_nothing(
    store: StateStore, variants: Any, kind: ErrorKind, mentions: str
) -> None:
    body = {
        "variants": [
            {"name": n, "model": "fraud", "version": v, "weight": w} for n, v, w in variants
        ]
    }
    with pytest.raises(LockgateError) as info:
        store.apply(traffic.put_endpoint("fraud", body, CATALOG), actor="ops", expected_revision=0)
    assert info.value.kind is kind and mentions in info.value.message
    assert store.read().revision == 0 and store.audit() == []


def test_stale_revision_is_a_conflict(store: StateStore) -> None:
    store.apply(traffic.pin("fraud", "1", CATALOG), actor="ops", expected_revision=0)
    with pytest.raises(LockgateError) as info:
        store.apply(traffic.pin("fraud", "2", CATALOG), actor="ops", expected_revision=0)
    assert info.value.kind is ErrorKind.CONFLICT
    assert store.read().pins == frozenset({("fraud", "1")})


def test_pin_and_unpin(store: StateStore) -> None:
    store.apply(traffic.pin("fraud", "1", CATALOG), actor="ops", expected_revision=None)
    assert store.read().pins == frozenset({("fraud", "1")})
    store.apply(traffic.unpin("fraud", "1"), actor="ops", expected_revision=None)
    assert store.read().pins == frozenset()
    with pytest.raises(LockgateError, match="not pinned"):
        store.apply(traffic.unpin("fraud", "1"), actor="ops", expected_revision=None)


def test_audit_records_who_what_before_and_after(store: StateStore) -> None:
    store.apply(traffic.canary("fraud", None, "2", 5, CATALOG), actor="alice", expected_revision=0)
    store.apply(traffic.rollback("fraud", CATALOG), actor="bob", expected_revision=1)
    newest, oldest = store.audit()
    assert (oldest["actor"], oldest["action"], oldest["revision"]) == ("alice", "canary.set", 1)
    # before: the implicit endpoint as it served (latest version)
    assert [v["version"] for v in oldest["before"]["variants"]] == ["3"]
    assert [v["weight"] for v in oldest["after"]["variants"]] == [95.0, 5.0]
    assert (newest["actor"], newest["action"], newest["target"]) == (
        "bob",
        "canary.rollback",
        "fraud",
    )
    assert newest["before"] == oldest["after"] and newest["revision"] == 2
    assert store.audit(target="other") == []


def test_a_canary_is_ramped_without_naming_its_version_again(store: StateStore) -> None:
    def apply(mutation: Any) -> None:
        store.apply(mutation, actor="ops", expected_revision=None)

    with pytest.raises(LockgateError) as info:  # nothing to ramp yet
        apply(traffic.canary("fraud", None, None, 25, CATALOG))
    assert info.value.kind is ErrorKind.UNPROCESSABLE
    assert "endpoint 'fraud' has no canary to adjust: starting one needs a version" in str(
        info.value
    )
    assert store.read().revision == 0
    apply(traffic.canary("fraud", None, "2", 5, CATALOG))
    apply(traffic.canary("fraud", None, None, 25, CATALOG))
    assert _variants(store) == [("stable", "3", 75.0), ("canary", "2", 25.0)]
    apply(traffic.canary("fraud", "fraud", None, 50, CATALOG))  # the canary's own model is fine
    assert _variants(store) == [("stable", "3", 50.0), ("canary", "2", 50.0)]
    with pytest.raises(LockgateError, match="serves model 'fraud': name the version"):
        apply(traffic.canary("fraud", "other", None, 60, CATALOG))
    newest = store.audit(limit=1)[0]
    assert newest["action"] == "canary.set" and newest["after"]["variants"][1] == {
        "name": "canary",
        "model": "fraud",
        "version": "2",
        "weight": 50.0,
    }
