"""The gate policy on a real gateway: versions judged by the real `lockgate models evaluate`
(v2 passes, v4 fails, v1 and v3 were never evaluated); an ungated version may take at most 5% of
an endpoint's traffic through every path that moves traffic (admin API, CLI, a rollout), an admin
may force past it with a reason (audited), an operator may not; shadows are always allowed; the
implicit endpoint serves the newest gated version; a state that already exceeds the limit keeps
serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lockgate.cli import build_parser, main
from lockgate.cli_serve import serve_config
from lockgate.control import traffic
from lockgate.control.auth import Principal
from lockgate.control.client import AdminClient
from lockgate.control.policy import FAILED, NONE, PASSED, GatePolicy
from lockgate.control.registry import Registry
from lockgate.control.rollouts import ROLLED_BACK, RolloutStore
from lockgate.control.state import StateStore
from lockgate.retrain.fleet import Gateways
from lockgate.retrain.gateway_metrics import Snapshot, parse
from lockgate.retrain.rollout import RolloutController
from lockgate.retrain.train import LinearModel, logistic_onnx
from lockgate.specs import RolloutPlan
from tests.conftest import RunningGateway, loopback_config
from tests.retrain.test_fairness import GROUP, TRUTH, flipped_in_group, holdout
from tests.waiting import wait_until

ADMIN = "root-token-0123456789abcdef"
OPERATOR = "ops-token-0123456789abcdef"
REFUSED = "has no passed gates"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOCKGATE_STATE", "LOCKGATE_HOME", "LOCKGATE_UNGATED_MAX_PERCENT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model `m`: v1 weaker (never evaluated), v2 better (evaluated: passed), v3 (never
    evaluated), v4 unfair to one group (evaluated: failed)."""
    tmp = tmp_path_factory.mktemp("policy")
    home = tmp / "home"
    registry = Registry(home)
    registry.register(logistic_onnx(LinearModel(TRUTH * np.array([0.5, 1, 1, 1, 1]), 0.0)), "m")
    registry.register(logistic_onnx(LinearModel(TRUTH, 0.0)), "m")
    registry.register(logistic_onnx(LinearModel(TRUTH * 0.9, 0.0)), "m")
    registry.register(flipped_in_group(TRUTH, 3, 1.1), "m")
    x, y = holdout()
    np.savez(tmp / "holdout.npz", X=x, y=y)
    pipeline = tmp / "pipeline.toml"
    pipeline.write_text('endpoint = "m"\n[gates]\np99_latency_ms = 60000.0\n')  # no latency test
    for version, passed in (("2", 0), ("4", 1)):
        args = ["models", "evaluate", "m", version, "--data", str(tmp / "holdout.npz")]
        args += ["--against", "1", "--group-by", str(GROUP), "--pipeline", str(pipeline)]
        assert main([*args, "--home", str(home), "--actor", "ci"]) == passed
    return home


@pytest.fixture(scope="module")
def gw(home: Path) -> Iterator[RunningGateway]:
    tokens = ((ADMIN, Principal("root", "admin")), (OPERATOR, Principal("ops", "operator")))
    config = loopback_config(home, admin_tokens=tokens, ungated_max_percent=5)
    with RunningGateway(config, Registry(home)) as gateway:
        yield gateway


class Admin:
    def __init__(self, gw: RunningGateway, token: str) -> None:
        headers = {"authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=f"http://{gw.admin}", headers=headers, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def endpoint(self, name: str) -> list[tuple[str, str, float]]:
        doc = self.call("GET", f"/v1/endpoints/{name}").json()
        return [(v["name"], v["version"], v["weight"]) for v in doc["variants"]]

    def revision(self) -> int:
        return int(self.call("GET", "/v1/state").json()["revision"])

    def create(self, name: str, *variants: tuple[str, str, float]) -> None:
        body = {"variants": [{"name": n, "model": "m", "version": v, "weight": w}
                             for n, v, w in variants]}  # fmt: skip
        response = self.call("PUT", f"/v1/endpoints/{name}", body)
        assert response.status_code == 200, response.text


def refused(response: httpx.Response, version: str, status: int = 409) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]
    assert f"version {version} of m {REFUSED}" in message
    assert "at most 5% of traffic (--ungated-max-percent)" in message
    return message


def infer_version(gw: RunningGateway, endpoint: str, missing: bool = False) -> str:
    """The version that answered; with `missing`, "" while the endpoint is not served yet."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [0.1] * 5}]}
    response = httpx.post(f"http://{gw.http}/v2/models/{endpoint}/infer", json=body, timeout=30)
    if missing and response.status_code == 404:
        return ""
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def test_gate_statuses_come_from_the_recorded_evaluations(home: Path) -> None:
    registry = Registry(home)
    assert [v.gates_passed for v in registry.versions("m")] == [None, True, None, False]
    assert registry.verdicts({"m": ["1", "2", "3", "4"]}) == {("m", "2"): True, ("m", "4"): False}


def test_the_implicit_endpoint_serves_the_newest_gated_version(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    doc = admin.call("GET", "/v1/endpoints/m").json()
    assert doc["implicit"] and admin.endpoint("m") == [("stable", "2", 100.0)]
    assert infer_version(gw, "m") == "2"  # not v4 (failed) nor v3 (never evaluated)


def test_an_ungated_canary_stops_at_the_limit(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    admin.create("ramp", ("blue", "2", 100))
    canary = "/v1/endpoints/ramp/canary"
    assert admin.call("POST", canary, {"version": "3", "weight": 5}).status_code == 200
    revision = admin.revision()
    message = refused(admin.call("POST", canary, {"weight": 6}), "3")
    assert "never evaluated" in message and "`lockgate models evaluate m 3 --data FILE`" in message
    assert "this change gives it 6% of endpoint 'ramp'" in message
    refused(admin.call("POST", "/v1/endpoints/ramp/canary/promote"), "3")
    assert admin.revision() == revision  # nothing changed
    assert admin.endpoint("ramp") == [("blue", "2", 95.0), ("canary", "3", 5.0)]
    # a failed version is refused the same way, with its own advice
    failed = refused(admin.call("POST", canary, {"version": "4", "weight": 50}), "4")
    assert "its recorded gates failed" in failed and "register a version that passes" in failed
    # the way back is never refused
    assert admin.call("POST", "/v1/endpoints/ramp/canary/rollback").status_code == 200
    assert admin.endpoint("ramp") == [("blue", "2", 100.0)]


def test_ungated_versions_cannot_be_switched_or_given_weight(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    admin.create("bg", ("blue", "2", 100), ("green", "3", 0))
    refused(admin.call("POST", "/v1/endpoints/bg/switch", {"variant": "green"}), "3")
    weights = {"weights": {"blue": 90, "green": 10}}
    refused(admin.call("POST", "/v1/endpoints/bg/weights", weights), "3")
    body = {"variants": [{"name": "only", "model": "m", "version": "1", "weight": 100}]}
    refused(admin.call("PUT", "/v1/endpoints/bg", body), "1")
    assert admin.endpoint("bg") == [("blue", "2", 100.0), ("green", "3", 0.0)]


def test_a_gated_version_may_take_everything(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    admin.create("gated", ("blue", "1", 5), ("green", "2", 95))
    assert admin.call("POST", "/v1/endpoints/gated/switch", {"variant": "green"}).status_code == 200
    assert admin.endpoint("gated") == [("blue", "1", 0.0), ("green", "2", 100.0)]


def test_put_of_a_new_endpoint_is_judged_like_any_change(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    body = {"variants": [{"name": "blue", "model": "m", "version": "3", "weight": 100}]}
    refused(admin.call("PUT", "/v1/endpoints/fresh", body), "3")
    body["variants"][0]["version"] = "2"
    assert admin.call("PUT", "/v1/endpoints/fresh", body).status_code == 200
    canary = {"version": "2", "weight": 50}  # the gated version on both sides
    assert admin.call("POST", "/v1/endpoints/fresh/canary", canary).status_code == 200
    assert admin.call("POST", "/v1/endpoints/fresh/canary/promote").status_code == 200
    assert admin.endpoint("fresh") == [("stable", "2", 100.0)]


def test_shadows_of_ungated_versions_are_allowed(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    admin.create("mirror", ("blue", "2", 100))
    for variant, version in (("s3", "3"), ("s4", "4")):
        body = {"variant": variant, "version": version}
        assert admin.call("POST", "/v1/endpoints/mirror/shadows", body).status_code == 200
    doc = admin.call("GET", "/v1/endpoints/mirror").json()
    assert [s["version"] for s in doc["shadows"]] == ["3", "4"]


def test_an_admin_forces_with_a_reason_and_the_audit_says_so(gw: RunningGateway) -> None:
    admin = Admin(gw, ADMIN)
    admin.create("forced", ("blue", "2", 100))
    body = {"version": "3", "weight": 50, "force": True, "reason": "incident 42: v2 misbehaves"}
    response = admin.call("POST", "/v1/endpoints/forced/canary", body)
    assert response.status_code == 200, response.text
    forced = response.json()["forced"]
    assert forced["reason"] == "incident 42: v2 misbehaves" and forced["role"] == "admin"
    assert forced["policy"] == "ungated-max-percent" and forced["limit"] == 5.0
    assert len(forced["overridden"]) == 1 and "version 3 of m" in forced["overridden"][0]
    assert admin.endpoint("forced") == [("blue", "2", 50.0), ("canary", "3", 50.0)]
    record = admin.call("GET", "/v1/audit?target=forced&limit=1").json()["records"][0]
    assert (record["actor"], record["role"], record["action"]) == ("root", "admin", "canary.set")
    assert record["forced"] == forced
    # the same through the CLI, which prints the override
    url = f"http://{gw.admin}"
    args = ["traffic", "canary", "forced", "--weight", "60", "--admin-url", url]
    args += ["--admin-token", ADMIN, "--force", "--reason", "still incident 42"]
    assert main(args) == 0
    assert admin.endpoint("forced") == [("blue", "2", 40.0), ("canary", "3", 60.0)]
    record = admin.call("GET", "/v1/audit?target=forced&limit=1").json()["records"][0]
    assert record["forced"]["reason"] == "still incident 42"
    # an unforced change that keeps the forced share is not judged again; a rise is
    assert admin.call("POST", "/v1/endpoints/forced/shadows", {"variant": "s", "version": "4"})
    refused(admin.call("POST", "/v1/endpoints/forced/canary", {"weight": 70}), "3")


def test_an_operator_cannot_force_and_a_force_needs_a_reason(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    operator, admin = Admin(gw, OPERATOR), Admin(gw, ADMIN)
    admin.create("guarded", ("blue", "2", 100))
    revision = admin.revision()
    body = {"version": "3", "weight": 50, "force": True, "reason": "I am sure"}
    response = operator.call("POST", "/v1/endpoints/guarded/canary", body)
    assert response.status_code == 403
    assert "lacks the permission 'force'" in response.json()["error"]
    response = admin.call("POST", "/v1/endpoints/guarded/canary", {**body, "reason": " "})
    assert response.status_code == 400 and "'reason'" in response.json()["error"]
    response = admin.call("POST", "/v1/endpoints/guarded/canary", {**body, "force": "yes"})
    assert response.status_code == 400
    # within the policy an operator needs no force
    small = {"version": "3", "weight": 5}
    assert operator.call("POST", "/v1/endpoints/guarded/canary", small).status_code == 200
    assert admin.revision() == revision + 1
    # the CLI refuses --force without --reason before asking
    args = ["traffic", "switch", "guarded", "canary", "--admin-url", f"http://{gw.admin}"]
    assert main([*args, "--admin-token", ADMIN, "--force"]) == 1
    assert "--force needs --reason TEXT" in capsys.readouterr().err
    assert admin.revision() == revision + 1


def test_a_state_beyond_the_limit_keeps_serving(gw: RunningGateway, home: Path) -> None:
    """State written before the policy (here: straight into the state database) is served; the
    policy judges only the changes made to it."""
    store = StateStore(home)
    body = {"variants": [{"name": "old", "model": "m", "version": "3", "weight": 100}]}
    cat = traffic.Catalog({"m": frozenset({"1", "2", "3", "4"})})
    store.apply(traffic.put_endpoint("legacy", body, cat), actor="upgrade", expected_revision=None)
    wait_until(lambda: infer_version(gw, "legacy", missing=True) == "3", "legacy served")
    admin = Admin(gw, OPERATOR)
    canary = {"version": "2", "weight": 10}  # v3 falls from 100 to 90: allowed
    assert admin.call("POST", "/v1/endpoints/legacy/canary", canary).status_code == 200
    assert admin.call("POST", "/v1/endpoints/legacy/canary/rollback").status_code == 200
    assert admin.endpoint("legacy") == [("old", "3", 100.0)]


class Scrapes:
    """The canary's counter grows by 100 requests per scrape: every step has its evidence."""

    def __init__(self, endpoint: str, version: str) -> None:
        self.endpoint, self.version, self.count = endpoint, version, 0

    def __call__(self, url: str) -> Snapshot:
        self.count += 100
        labels = f'endpoint="{self.endpoint}",variant="canary",model="m",version="{self.version}"'
        text = (
            "# TYPE lockgate_requests counter\n"
            f'lockgate_requests_total{{{labels},protocol="http",outcome="ok"}} {self.count}\n'
        )
        return parse(text, at=float(self.count))


def test_a_rollout_of_an_ungated_version_stops_at_the_step_beyond_the_limit(
    gw: RunningGateway, home: Path
) -> None:
    Admin(gw, ADMIN).create("rollout", ("stable", "2", 100))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    store = RolloutStore(home)
    controller = RolloutController(
        AdminClient(f"http://{gw.admin}", ADMIN),
        store,
        Gateways(["http://unused"], fetch=Scrapes("rollout", "3")),
        clock=lambda: now[0],
        sleep=sleep,
    )
    plan = RolloutPlan(steps=(5, 50, 100), analysis_seconds=1.0, min_requests=5)
    rid = controller.start("rollout", "m", "3", "2", plan)
    assert controller.run(rid) == ROLLED_BACK
    r = store.get(rid)
    assert [h["decision"] for h in r.history] == ["apply", "pass", "apply", "rolled_back"]
    assert r.reason is not None and r.reason.startswith("step 2 could not be applied")
    assert "version 3 of m has no passed gates" in r.reason and "--ungated-max-percent" in r.reason
    assert Admin(gw, ADMIN).endpoint("rollout") == [("stable", "2", 100.0)]


def test_a_rollout_promotion_of_an_ungated_candidate_is_refused(
    gw: RunningGateway, home: Path
) -> None:
    admin = Admin(gw, ADMIN)
    store = RolloutStore(home)
    rid = store.start("promo", "m", "3", "2", RolloutPlan())
    store.record_step(rid, 0)
    message = refused(admin.call("POST", f"/v1/rollouts/{rid}/promote"), "3")
    assert message.startswith(f"rollout {rid} cannot be promoted at once")
    assert store.get(rid).requested is None
    assert admin.call("POST", f"/v1/rollouts/{rid}/abort").status_code == 200
    gated = store.start("promo2", "m", "2", "1", RolloutPlan())
    store.record_step(gated, 0)
    assert admin.call("POST", f"/v1/rollouts/{gated}/promote").status_code == 200


# -- the policy's rules, and its flag -------------------------------------------------------------
def test_the_implicit_version_prefers_passed_then_unevaluated_then_the_newest() -> None:
    policy = GatePolicy(5)
    assert policy.implicit_version({"1": NONE, "2": PASSED, "3": NONE, "10": FAILED}) == "2"
    assert policy.implicit_version({"1": NONE, "2": NONE}) == "2"  # hand-registered home
    assert policy.implicit_version({"1": NONE, "2": FAILED}) == "1"
    assert policy.implicit_version({"1": FAILED, "2": FAILED}) == "2"  # always serves one
    assert GatePolicy(100).implicit_version({"1": PASSED, "2": FAILED}) == "2"  # policy off


def test_zero_forbids_any_ungated_traffic_and_100_turns_the_policy_off() -> None:
    before = traffic.EndpointSpec.implicit("m", "2")
    after = traffic.EndpointSpec(
        (traffic.VariantSpec("stable", "m", "2", 99.99), traffic.VariantSpec("c", "m", "3", 0.01))
    )

    def status(key: Any) -> str:
        return PASSED if key.version == "2" else NONE

    assert len(GatePolicy(0).violations("m", before, after, status)) == 1
    assert GatePolicy(5).violations("m", before, after, status) == []
    everything = traffic.EndpointSpec.implicit("m", "3")
    assert GatePolicy(100).violations("m", before, everything, status) == []
    assert not GatePolicy(100).enabled and GatePolicy(99.99).enabled


def test_the_serve_flag_sets_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_args = build_parser().parse_args
    assert serve_config(parse_args(["serve"])).ungated_max_percent == 5.0
    assert (
        serve_config(parse_args(["serve", "--ungated-max-percent", "0"])).ungated_max_percent == 0
    )
    monkeypatch.setenv("LOCKGATE_UNGATED_MAX_PERCENT", "100")
    assert serve_config(build_parser().parse_args(["serve"])).ungated_max_percent == 100.0
    for bad in ("101", "-1", "nan", "x"):
        with pytest.raises(SystemExit):
            parse_args(["serve", "--ungated-max-percent", bad])
