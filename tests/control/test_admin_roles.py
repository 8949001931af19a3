"""Admin roles on a real gateway: a viewer reads but cannot write, an operator changes traffic
but cannot promote a rollout at once, an admin can; every refusal is a 403 naming the
permission, and the audit records each change's role."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lockgate.control.auth import LOCAL, Principal, TokenCheck, parse_tokens
from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError
from tests.conftest import RunningGateway, loopback_config
from tests.control.test_admin_api import make_home

VIEWER = "viewer-token-0123456789"
OPERATOR = "operator-token-0123456789"
ADMIN = "admin-token-0123456789ab"
BODY = {"variants": [{"name": "blue", "model": "fraud", "version": "1", "weight": 100}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = make_home(tmp_path_factory.mktemp("roles-home"))
    tokens = parse_tokens([f"ci:{VIEWER}:viewer", f"deployer:{OPERATOR}:operator", f"root:{ADMIN}"])
    config = loopback_config(home, admin_tokens=tuple(tokens.items()))
    with RunningGateway(config, Registry(home)) as gateway:
        yield gateway


def client(gw: RunningGateway, token: str) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"}
    return httpx.Client(base_url=f"http://{gw.admin}", headers=headers, timeout=30)


def test_a_viewer_reads_and_cannot_write(gw: RunningGateway) -> None:
    with client(gw, VIEWER) as viewer:
        assert viewer.get("/v1/state").status_code == 200
        assert viewer.get("/v1/audit").status_code == 200
        r = viewer.put("/v1/endpoints/fraud", json=BODY)
        assert r.status_code == 403
        assert "'viewer'" in r.json()["error"] and "'traffic'" in r.json()["error"]
        r = viewer.post("/v1/rollouts/some-id/pause")
        assert r.status_code == 403 and "'rollout'" in r.json()["error"]
        assert viewer.get("/v1/endpoints/fraud").json()["implicit"]  # nothing changed


def test_an_operator_changes_traffic_and_the_audit_names_the_role(gw: RunningGateway) -> None:
    with client(gw, OPERATOR) as operator:
        r = operator.put("/v1/endpoints/fraud", json=BODY)
        assert r.status_code == 200, r.text
        record = operator.get("/v1/audit", params={"limit": 1}).json()["records"][0]
        assert (record["actor"], record["role"], record["action"]) == (
            "deployer",
            "operator",
            "endpoint.put",
        )
        # pausing is an operator's (the rollout is unknown: 404 comes after the role check)
        assert operator.post("/v1/rollouts/some-id/pause").status_code == 404
        r = operator.post("/v1/rollouts/some-id/promote")
        assert r.status_code == 403 and "'force'" in r.json()["error"]
    with client(gw, ADMIN) as admin:
        assert admin.post("/v1/rollouts/some-id/promote").status_code == 404


def test_token_lines_carry_roles(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    tokens = parse_tokens([f"ci:{VIEWER}:viewer", f"{ADMIN}", f"ops:{OPERATOR}", "# note", ""])
    assert tokens == {
        VIEWER: Principal("ci", "viewer"),
        ADMIN: Principal("token-2", "admin"),
        OPERATOR: Principal("ops", "admin"),  # no role: admin
    }
    with pytest.raises(LockgateError, match="unknown role 'root'"):
        parse_tokens([f"ci:{VIEWER}:root"])
    check = TokenCheck(tokens)
    assert check.principal(f"Bearer {VIEWER}") == Principal("ci", "viewer")
    with pytest.raises(LockgateError) as refused:
        check.principal(f"Bearer {VIEWER}").require("traffic")
    assert refused.value.kind is ErrorKind.FORBIDDEN
    assert TokenCheck({}).principal(None) == LOCAL
    with caplog.at_level(logging.INFO, logger="lockgate"):
        home = make_home(tmp_path)
        config = loopback_config(home, admin_tokens=tuple(tokens.items()))
        with RunningGateway(config, Registry(home)):
            pass
    assert "admin tokens: ci (viewer), token-2 (admin), ops (admin)" in caplog.text
