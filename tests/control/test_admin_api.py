"""The admin API on a real gateway: auth, optimistic concurrency, validation that changes
nothing, the audit log, load failures during a switch, restarts, the OpenAPI document and the
`lockgate traffic` CLI."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from lockgate.cli import main
from lockgate.control.auth import PERMISSIONS
from lockgate.control.registry import Registry
from lockgate.demo import ensure_demo_models
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import TIMEOUT as WAIT
from tests.waiting import wait_until

TOKEN = "ops-token-0123456789abcdef"
READER = "ci-token-0123456789abcdef"


def make_home(home: Path) -> Path:
    """Demo models, plus `fraud` v1/v2 (working) and v3 (damaged after registration)."""
    registry = Registry(home)
    ensure_demo_models(registry)
    for version in ("1", "2", "2"):
        source = registry.get("classifier", version).model_path
        shutil.copy(source, home / "fraud.onnx")
        registry.register(home / "fraud.onnx", "fraud")
    registry.get("fraud", "3").model_path.write_bytes(b"damaged")
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("admin-home"))


def admin_config(home: Path) -> Any:
    tokens = ((TOKEN, "alice"), (READER, "ci"))
    return loopback_config(home, admin_tokens=tokens)


@pytest.fixture(scope="module")
def gw(home: Path) -> Iterator[RunningGateway]:
    with RunningGateway(admin_config(home), Registry(home)) as gateway:
        yield gateway


class Admin:
    def __init__(self, gw: RunningGateway, token: str | None = TOKEN) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"http://{gw.admin}", headers=headers, timeout=30)

    def revision(self) -> int:
        return int(self.http.get("/v1/state").json()["revision"])

    def call(
        self, method: str, path: str, body: Any = None, revision: Any = "current"
    ) -> httpx.Response:
        headers = {}
        if revision == "current":
            revision = self.revision()
        if revision is not None:
            headers["if-match"] = f'"{revision}"'
        return self.http.request(method, path, json=body, headers=headers)


def infer(gw: RunningGateway, endpoint: str) -> httpx.Response:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    return httpx.post(f"http://{gw.http}/v2/models/{endpoint}/infer", json=doc, timeout=10)


def test_tokens_are_required(gw: RunningGateway) -> None:
    for token in (None, "wrong-token-0123456789"):
        r = Admin(gw, token).http.get("/v1/state")
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = Admin(gw, token).call("POST", "/v1/models/fraud/versions/1/load", revision=None)
        assert r.status_code == 401
    assert Admin(gw).http.get("/v1/state").status_code == 200
    assert Admin(gw, None).http.get("/healthz").status_code == 200  # liveness stays open


def test_stale_revision_is_409_and_changes_nothing(gw: RunningGateway) -> None:
    admin = Admin(gw)
    before = admin.http.get("/v1/state").json()
    r = admin.call(
        "POST",
        "/v1/endpoints/fraud/canary",
        {"version": 2, "weight": 5},
        revision=before["revision"] + 1000,  # any revision but the current one
    )
    assert r.status_code == 409 and "stale revision" in r.json()["error"]
    assert admin.http.get("/v1/state").json()["revision"] == before["revision"]


@pytest.mark.parametrize(
    ("path", "body", "status", "mentions"),
    [
        ("/v1/endpoints/fraud/weights", {"weights": {"stable": 60}}, 400, "sum to 100"),
        ("/v1/endpoints/fraud/canary", {"version": "9", "weight": 5}, 404, "unknown version '9'"),
        ("/v1/endpoints/fraud/canary", {"version": "2"}, 400, "'weight' is required"),
        ("/v1/endpoints/fraud/switch", {"variant": "nope"}, 404, "no variant 'nope'"),
        ("/v1/endpoints/nope/switch", {"variant": "x"}, 404, "unknown endpoint 'nope'"),
        ("/v1/endpoints/fraud/canary/promote", None, 422, "no canary"),
    ],
    ids=["weights", "version", "missing-field", "variant", "endpoint", "promote-no-canary"],
)
def test_invalid_changes_are_refused_and_change_nothing(
    gw: RunningGateway, path: str, body: Any, status: int, mentions: str
) -> None:
    admin = Admin(gw)
    before = admin.http.get("/v1/state").json()
    r = admin.call("POST", path, body)
    assert r.status_code == status and mentions in r.json()["error"], r.text
    after = admin.http.get("/v1/state").json()
    assert (after["revision"], after["endpoints"]) == (before["revision"], before["endpoints"])


def test_malformed_admin_body_is_400(gw: RunningGateway) -> None:
    r = Admin(gw).http.post("/v1/endpoints/fraud/switch", content=b"{not json")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    assert Admin(gw).http.get("/v1/nope").status_code == 404


def test_an_implicit_endpoint_variant_has_one_name_everywhere(gw: RunningGateway) -> None:
    """The name `traffic show` gives the variant of an implicit endpoint is the one in the
    answer, its header and the metrics (and the one a stored endpoint keeps)."""
    shown = Admin(gw).http.get("/v1/endpoints/classifier").json()
    assert shown["implicit"] and [v["name"] for v in shown["variants"]] == ["stable"]
    answer = infer(gw, "classifier")
    assert answer.json()["parameters"]["variant"] == "stable"
    assert answer.headers["x-lockgate-variant"] == "stable"
    metrics = httpx.get(f"http://{gw.admin}/metrics").text
    served = [line for line in metrics.splitlines() if line.startswith("lockgate_requests_total")]
    ours = [line for line in served if 'endpoint="classifier"' in line and 'outcome="ok"' in line]
    assert ours and all('variant="stable"' in line for line in ours), ours
    assert 'variant="default"' not in metrics


def test_metrics_answer_in_the_format_asked_for(gw: RunningGateway) -> None:
    """The Accept header picks the exposition format; the text format stays the default, and
    the name filter applies to every format."""
    infer(gw, "classifier")
    # WAIT: on a fresh checkout the first drain compiles the monitor's kernels, and a scrape
    # waits for the drain's lock meanwhile
    url = f"http://{gw.admin}/metrics"

    def get(**kw: Any) -> httpx.Response:
        return httpx.get(url, timeout=WAIT, **kw)

    default = get()
    assert default.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in default.text
    om = get(headers={"accept": "application/openmetrics-text;version=1.0.0"})
    assert om.headers["content-type"] == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert (
        om.text.endswith("# EOF\n") and "# UNIT lockgate_request_latency_seconds seconds" in om.text
    )
    protobuf = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"
    accept = {"accept": protobuf + ";encoding=delimited"}
    pb = get(headers=accept)
    assert pb.headers["content-type"] == (
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
        "encoding=delimited"
    )
    # the request's latency reaches /metrics with the monitor's next drain
    wait_until(
        lambda: b"lockgate_request_latency_seconds" in get(headers=accept).content,
        "the latency family in the protobuf exposition",
    )
    names = {"name[]": "lockgate_requests_total"}
    only = get(params=names, headers={"accept": protobuf + ";encoding=delimited"})
    assert b"lockgate_requests_total" in only.content
    assert b"lockgate_request_latency_seconds" not in only.content


def test_failed_load_during_a_switch_keeps_the_old_split(gw: RunningGateway) -> None:
    admin = Admin(gw)
    body = {"variants": [{"name": "blue", "model": "fraud", "version": "1", "weight": 100}]}
    assert admin.call("PUT", "/v1/endpoints/fraud", body).status_code == 200
    assert infer(gw, "fraud").json()["parameters"]["variant"] == "blue"
    before = admin.revision()
    r = admin.call("POST", "/v1/endpoints/fraud/canary", {"version": "3", "weight": 50})
    assert r.status_code == 422 and "checksum mismatch" in r.json()["error"], r.text
    assert admin.revision() == before
    answers = {infer(gw, "fraud").json()["model_version"] for _ in range(20)}
    assert answers == {"1"}
    failed = admin.http.get("/v1/state").json()["serving"]["failed"]
    assert {"model": "fraud", "version": "3"}.items() <= failed[0].items()


def test_every_change_is_audited_with_before_and_after(gw: RunningGateway) -> None:
    admin = Admin(gw)
    body = {"variants": [{"name": "stable", "model": "regressor", "version": "1", "weight": 100}]}
    assert admin.call("PUT", "/v1/endpoints/audited", body).status_code == 200
    r = admin.call("POST", "/v1/endpoints/audited/weights", {"weights": {"stable": 100}})
    assert r.status_code == 200
    records = admin.http.get("/v1/audit", params={"target": "audited"}).json()["records"]
    assert [rec["action"] for rec in records] == ["endpoint.weights", "endpoint.put"]
    assert {rec["actor"] for rec in records} == {"alice"}
    assert (
        records[1]["before"] is None and records[1]["after"]["variants"][0]["model"] == "regressor"
    )
    assert records[0]["before"] == records[1]["after"]
    assert r.headers["etag"] == f'"{records[0]["revision"]}"'
    assert admin.call("DELETE", "/v1/endpoints/audited").status_code == 200


def test_openapi_document_covers_every_route(gw: RunningGateway) -> None:
    doc = httpx.get(f"http://{gw.admin}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    app_routes = {
        (route.path, method.lower())
        for route in gw.gateway.admin_app.routes  # type: ignore[union-attr]
        for method in route.methods - {"HEAD"}
    }
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete")
    }
    assert app_routes == documented


def test_state_survives_a_restart(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    body = {
        "variants": [
            {"name": "blue", "model": "classifier", "version": "1", "weight": 0},
            {"name": "green", "model": "classifier", "version": "2", "weight": 100},
        ]
    }
    with RunningGateway(admin_config(home), Registry(home)) as gw:
        assert Admin(gw).call("PUT", "/v1/endpoints/scoring", body).status_code == 200
    with RunningGateway(admin_config(home), Registry(home)) as gw:
        answers = {infer(gw, "scoring").json()["parameters"]["variant"] for _ in range(10)}
        assert answers == {"green"}
        state = Admin(gw).http.get("/v1/state").json()
        assert {"model": "classifier", "version": "1"} in state["serving"]["loaded"]


def test_admin_must_not_listen_openly_without_tokens(tmp_path: Path) -> None:
    config = dataclasses.replace(loopback_config(tmp_path), admin_host="0.0.0.0")
    with (
        pytest.raises(Exception, match="without a token"),
        RunningGateway(config, Registry(tmp_path)),
    ):
        pass


def test_traffic_cli(gw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--admin-url", f"http://{gw.admin}", "--admin-token", TOKEN]

    def run(*args: str) -> str:
        assert main(["traffic", args[0], *base, *args[1:]]) == 0
        return capsys.readouterr().out

    run("create", "cli", "blue=classifier:1:100", "green=classifier:2:0")
    assert "blue" in run("show", "cli") and "100.00%" in run("show", "cli")
    run("switch", "cli", "green")
    doc = orjson.loads(run("show", "cli", "--json"))
    assert [(v["name"], v["weight"]) for v in doc["variants"]] == [("blue", 0.0), ("green", 100.0)]
    # without a canary, --weight alone is a clear refusal; with one, it ramps that canary
    assert main(["traffic", "canary", *base, "cli", "--weight", "25"]) == 1
    assert "endpoint 'cli' has no canary to adjust" in capsys.readouterr().err
    run("canary", "cli", "--version", "1", "--weight", "10")
    run("canary", "cli", "--weight", "25")  # as the README says: "then --weight 25"
    doc = orjson.loads(run("show", "cli", "--json"))
    assert [(v["name"], v["version"], v["weight"]) for v in doc["variants"]] == [
        ("blue", "1", 0.0),
        ("green", "2", 75.0),
        ("canary", "1", 25.0),
    ]
    run("canary", "cli", "--rollback")
    run("shadow", "cli", "add", "mirror", "--version", "1")
    assert "shadow   mirror" in run("show", "cli")
    run("shadow", "cli", "remove", "mirror")
    run("load", "regressor", "1")
    run("unload", "regressor", "1")
    history = run("history", "cli")
    assert "shadow.remove" in history and "alice" in history
    # a refusal is a clear one-line error and exit status 1
    assert main(["traffic", "set", *base, "cli", "green=70"]) == 1
    assert "sum to 100" in capsys.readouterr().err
    assert main(["traffic", "show", "--admin-url", f"http://{gw.admin}"]) == 1
    assert "401" in capsys.readouterr().err


def test_openapi_states_the_role_each_route_enforces(gw: RunningGateway) -> None:
    """The document's `x-lockgate-role` is the least role of the permission the route checks."""
    doc = httpx.get(f"http://{gw.admin}/openapi.json").json()
    for route in gw.gateway.admin_app.routes:  # type: ignore[union-attr]
        permission = getattr(route.endpoint, "permission", "absent")
        for method in route.methods - {"HEAD"}:
            op = doc["paths"][route.path][method.lower()]
            if permission is None:
                assert "x-lockgate-role" not in op and op["security"] == []
            else:
                assert op["x-lockgate-role"] == PERMISSIONS[permission], (route.path, method)
                assert "403" in op["responses"]
