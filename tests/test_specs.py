"""The typed control-plane model: endpoint documents round-trip to the exact JSON the admin API
and the state database use, every invalid document is refused with a message naming the field,
and one rollout plan schema serves the pipeline file and the rollout store."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from lockgate import specs
from lockgate.errors import ErrorKind, LockgateError
from lockgate.specs import (
    STABLE,
    EndpointSpec,
    RolloutPlan,
    ShadowSpec,
    VariantSpec,
    VersionKey,
)

# As the admin API answers and the state database stores it (key order included).
STORED = (
    b'{"variants":[{"name":"blue","model":"fraud","version":"3","weight":70.0},'
    b'{"name":"green","model":"fraud","version":"4","weight":30.0},'
    b'{"name":"idle","model":"other","version":"1","weight":0.0}],'
    b'"shadows":[{"name":"mirror","model":"fraud","version":"5"}]}'
)


def variant(name: str = "a", version: Any = "1", weight: Any = 100, **more: Any) -> dict[str, Any]:
    return {"name": name, "model": "m", "version": version, "weight": weight, **more}


def test_a_stored_document_round_trips_byte_for_byte() -> None:
    spec = EndpointSpec.from_doc(orjson.loads(STORED))
    assert spec == EndpointSpec(
        (
            VariantSpec("blue", "fraud", "3", 70.0),
            VariantSpec("green", "fraud", "4", 30.0),
            VariantSpec("idle", "other", "1", 0.0),
        ),
        (ShadowSpec("mirror", "fraud", "5"),),
    )
    assert orjson.dumps(spec.to_doc()) == STORED
    assert EndpointSpec.from_doc(spec.to_doc()) == spec


def test_client_documents_are_normalised() -> None:
    """Versions may be numbers and weights integers; `shadows` may be left out."""
    spec = EndpointSpec.from_doc({"variants": [variant(version=7, weight=100)]})
    assert spec.to_doc() == {
        "variants": [{"name": "a", "model": "m", "version": "7", "weight": 100.0}],
        "shadows": [],
    }
    assert isinstance(spec.variants[0].weight, float)


def test_versions_name_every_version_the_endpoint_needs() -> None:
    spec = EndpointSpec.from_doc(orjson.loads(STORED))
    expected = {("fraud", "3"), ("fraud", "4"), ("other", "1"), ("fraud", "5")}
    assert spec.versions() == frozenset(VersionKey(*k) for k in expected)
    assert spec.versions() == expected  # interchangeable with (model, version) pairs
    assert VersionKey("fraud", "3").model == "fraud" and spec.variants[0].key.version == "3"
    assert spec.variant("green") == VariantSpec("green", "fraud", "4", 30.0)
    assert spec.variant("mirror") is None and spec.shadow("mirror") is not None


def test_implicit_endpoint_is_the_stable_variant_of_the_latest_version() -> None:
    spec = EndpointSpec.implicit("fraud", "9")
    assert spec.to_doc() == {
        "variants": [{"name": STABLE, "model": "fraud", "version": "9", "weight": 100.0}],
        "shadows": [],
    }


def test_specs_are_immutable() -> None:
    spec = EndpointSpec.implicit("fraud", "9")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.variants[0].weight = 50.0  # type: ignore[misc]
    assert not hasattr(spec, "__dict__") and not hasattr(spec.variants[0], "__dict__")
    assert isinstance(EndpointSpec([VariantSpec("a", "m", "1", 100)]).variants, tuple)


BAD: list[tuple[str, Any, str]] = [
    ("not-an-object", [], "an endpoint must be an object with 'variants'"),
    ("unknown-field", {"variants": [variant()], "colour": 1}, "unknown endpoint field(s): colour"),
    ("no-variants", {"shadows": []}, "'variants' must be a non-empty list"),
    ("empty", {"variants": []}, "'variants' must be a non-empty list"),
    ("variants-not-list", {"variants": "a"}, "'variants' must be a non-empty list"),
    ("shadows-not-list", {"variants": [variant()], "shadows": {}}, "'shadows' must be a list"),
    ("item", {"variants": [3]}, "variants[0] must be an object with name, model, version, weight"),
    ("typo", {"variants": [variant(wieght=1)]}, "variants[0]: unknown field(s) wieght"),
    ("name-type", {"variants": [variant(name=3)]}, "variants[0].name must be a string, got 3"),
    ("name", {"variants": [variant(name="bad name")]}, "invalid variant name 'bad name'"),
    ("model", {"variants": [{**variant(), "model": ""}]}, "variant 'a': model must be a non-empty"),
    ("version", {"variants": [variant(version=True)]}, "variant 'a': version must be a non-empty"),
    ("no-version", {"variants": [{"name": "a", "model": "m", "weight": 100}]}, "'a': version"),
    ("weight-type", {"variants": [variant(weight="100")]}, "variant 'a': weight must be a number"),
    (
        "weight-nan",
        {"variants": [variant(weight=math.nan)]},
        "variant 'a': weight must be a number",
    ),
    ("no-weight", {"variants": [variant(weight=None)]}, "variant 'a': weight must be a number"),
    ("weight-range", {"variants": [variant(weight=101)]}, "variant 'a': weight 101 is outside"),
    ("resolution", {"variants": [variant(weight=99.999)]}, "finer than the 0.01% resolution"),
    ("sum", {"variants": [variant(weight=90)]}, "weights must sum to 100, got 90"),
    (
        "duplicate",
        {"variants": [variant()], "shadows": [{"name": "a", "model": "m", "version": "2"}]},
        "variant names must be unique, repeated: a",
    ),
    (
        "shadow-weight",
        {"variants": [variant()], "shadows": [variant("s", weight=0)]},
        "shadows[0]: unknown field(s) weight",
    ),
    ("shadow-item", {"variants": [variant()], "shadows": ["s"]}, "shadows[0] must be an object"),
]


@pytest.mark.parametrize(("doc", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_documents_are_refused_naming_the_field(doc: Any, message: str) -> None:
    with pytest.raises(LockgateError) as info:
        EndpointSpec.from_doc(doc)
    assert info.value.kind is ErrorKind.INVALID
    assert message in info.value.message, info.value.message


def test_constructing_an_invalid_spec_is_refused_too() -> None:
    """Specs built in code (a rescaled canary, a CLI's arguments) pass the same checks."""
    with pytest.raises(LockgateError, match=r"weight 150 is outside 0\.\.100"):
        VariantSpec("a", "m", "1", 150)
    with pytest.raises(LockgateError, match="must sum to 100, got 60"):
        EndpointSpec((VariantSpec("a", "m", "1", 60),))
    with pytest.raises(LockgateError, match="non-empty list"):
        EndpointSpec(())
    with pytest.raises(LockgateError, match="invalid variant name"):
        ShadowSpec("-x", "m", "1")
    spec = EndpointSpec.implicit("m", "1")
    with pytest.raises(LockgateError, match="must sum to 100"):
        dataclasses.replace(spec, variants=(dataclasses.replace(spec.variants[0], weight=50),))


# -- rollout plans --------------------------------------------------------------------------------
def test_plan_defaults_and_round_trip() -> None:
    plan = RolloutPlan()
    assert plan.to_doc() == {
        "steps": [1.0, 5.0, 25.0, 50.0, 100.0],
        "analysis_seconds": 30.0,
        "min_requests": 50,
        "max_extensions": 3,
        "max_error_rate": 0.01,
        "max_p99_ratio": 1.5,
        "p99_floor_seconds": 0.005,
        "abort_on_drift": False,
        "max_disagreement": None,
        "min_accuracy_delta": None,
        "min_labels": 30,
        "shadow_seconds": 0.0,
    }
    custom = RolloutPlan(steps=(10, 100), analysis_seconds=2, max_disagreement=0.2)
    assert custom.steps == (10.0, 100.0) and isinstance(custom.analysis_seconds, float)
    assert RolloutPlan.from_doc(orjson.loads(orjson.dumps(custom.to_doc()))) == custom
    assert RolloutPlan.from_doc({"steps": [100]}) == RolloutPlan(steps=(100.0,))  # defaults fill


def test_plan_keys_are_named_where_they_come_from() -> None:
    with pytest.raises(LockgateError) as stored:
        RolloutPlan.from_doc({"steps": [100], "bogus": 1, "other": 2})
    assert "unknown key 'plan.bogus', 'plan.other' (known: steps, " in stored.value.message
    with pytest.raises(LockgateError) as piped:
        RolloutPlan.from_doc({"min_labels": 0}, "rollout")
    assert piped.value.message == "rollout.min_labels must be an integer >= 1, got 0"


PLAN_BAD: list[tuple[dict[str, Any], str]] = [
    ({"steps": []}, "plan.steps must be a non-empty list of percents"),
    ({"steps": 100}, "plan.steps must be a non-empty list of percents"),
    ({"steps": [10, 50]}, "plan.steps must end at 100, got 50"),
    ({"steps": [50, 10, 100]}, "plan.steps must be strictly increasing (plan.steps[1] = 10)"),
    ({"steps": [0, 100]}, "plan.steps[0] must be a number in (0, 100], got 0"),
    ({"steps": [True, 100]}, "plan.steps[0] must be a number in (0, 100]"),
    ({"steps": [1.005, 100]}, "plan.steps[0] must be a multiple of 0.01"),
    ({"analysis_seconds": 0}, "plan.analysis_seconds must be a number > 0, got 0"),
    ({"analysis_seconds": "30"}, "plan.analysis_seconds must be a number > 0"),
    ({"min_requests": -1}, "plan.min_requests must be an integer >= 0"),
    ({"min_requests": 2.5}, "plan.min_requests must be an integer >= 0"),
    ({"max_extensions": True}, "plan.max_extensions must be an integer >= 0"),
    ({"max_error_rate": 1.5}, "plan.max_error_rate must be a number in [0, 1]"),
    ({"max_p99_ratio": 0}, "plan.max_p99_ratio must be a number > 0"),
    ({"p99_floor_seconds": -0.1}, "plan.p99_floor_seconds must be a number >= 0"),
    ({"abort_on_drift": 1}, "plan.abort_on_drift must be true or false, got 1"),
    ({"max_disagreement": 2}, "plan.max_disagreement must be a number in [0, 1] (leave it out"),
    ({"min_accuracy_delta": math.inf}, "plan.min_accuracy_delta must be a number"),
    ({"min_labels": 0}, "plan.min_labels must be an integer >= 1"),
    ({"shadow_seconds": -1}, "plan.shadow_seconds must be a number >= 0"),
    ({"shadow_seconds": None}, "plan.shadow_seconds must be a number >= 0, got None"),
]


@pytest.mark.parametrize(("doc", "message"), PLAN_BAD, ids=[m for _, m in PLAN_BAD])
def test_invalid_plans_are_refused(doc: dict[str, Any], message: str) -> None:
    for build in (lambda: RolloutPlan.from_doc(doc), lambda: RolloutPlan(**doc)):
        with pytest.raises(LockgateError) as info:
            build()
        assert info.value.kind is ErrorKind.INVALID
        assert message in info.value.message, info.value.message


def test_the_model_stays_on_the_ground_floor() -> None:
    """serve/, control/, retrain/ and the CLI all import the model: it imports none of them."""
    tree = ast.parse(Path(specs.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("lockgate")} == {"lockgate.errors"}
