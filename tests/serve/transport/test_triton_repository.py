"""Triton's model repository extension through tritonclient (HTTP and gRPC) against real
gateways: the index reports every registered version; load and unload pin and unpin versions in
the state database (audited), behind the admin token when tokens are configured and for
loopback clients only when they are not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from lockgate.control.auth import TokenCheck
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.controller import Controller
from lockgate.serve.repository import ModelRepository
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

TOKEN = "repository-test-token-0123456789"


def _home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """`scale` v1 and v2 (v2 serves) and `broken`, whose file changed after registration."""
    home = tmp_path_factory.mktemp(name)
    registry = Registry(home)
    model = onnx_models.scale_model(home / "scale.onnx")
    registry.register(model, "scale")
    registry.register(model, "scale")
    broken = registry.register(onnx_models.scale_model(home / "b.onnx", features=3), "broken")
    broken.model_path.write_bytes(broken.model_path.read_bytes() + b"\0")
    return home


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = _home(tmp_path_factory, "repository-open")
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        yield gw


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = _home(tmp_path_factory, "repository-tokens")
    config = loopback_config(home, admin_tokens=((TOKEN, "ops"),))
    with RunningGateway(config, Registry(home)) as gw:
        yield gw


def _index(gw: RunningGateway) -> dict[tuple[str, str], tuple[str, str]]:
    """{(name, version): (state, reason)} as HTTP reports it; gRPC must agree."""
    http = httpclient.InferenceServerClient(gw.http).get_model_repository_index()
    grpc = grpcclient.InferenceServerClient(gw.grpc).get_model_repository_index()
    by_http = {(m["name"], m["version"]): (m["state"], m.get("reason", "")) for m in http}
    by_grpc = {(m.name, m.version): (m.state, m.reason) for m in grpc.models}
    assert by_grpc == by_http
    return by_http


def _pins(gw: RunningGateway) -> frozenset[tuple[str, str]]:
    store = StateStore(gw.config.home)
    try:
        return store.read().pins
    finally:
        store.close()


def _last_audit(gw: RunningGateway) -> dict[str, Any]:
    store = StateStore(gw.config.home)
    try:
        return store.audit(limit=1)[0]
    finally:
        store.close()


def test_the_index_reports_every_registered_version(open_gateway: RunningGateway) -> None:
    index = _index(open_gateway)
    assert index[("scale", "2")] == ("READY", "")
    assert index[("scale", "1")] == ("UNAVAILABLE", "not loaded")
    state, reason = index[("broken", "1")]
    assert state == "UNAVAILABLE" and "checksum mismatch" in reason
    ready = httpx.post(f"http://{open_gateway.http}/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200
    assert ready.json() == [{"name": "scale", "version": "2", "state": "READY"}]


def test_load_pins_a_version_and_unload_drops_the_pins(open_gateway: RunningGateway) -> None:
    url = f"http://{open_gateway.http}/v2/repository/models/scale/load"
    answer = httpx.post(url, json={"parameters": {"version": "1"}})
    assert answer.status_code == 200, answer.text
    assert ("scale", "1") in _pins(open_gateway)
    audit = _last_audit(open_gateway)
    assert (audit["actor"], audit["action"], audit["target"]) == (
        "local",
        "version.load",
        "scale/1",
    )
    assert _index(open_gateway)[("scale", "1")] == ("READY", "")  # loaded before the answer
    assert httpclient.InferenceServerClient(open_gateway.http).is_model_ready("scale", "1")

    grpcclient.InferenceServerClient(open_gateway.grpc).load_model("scale")  # the latest
    assert {("scale", "1"), ("scale", "2")} <= _pins(open_gateway)

    httpclient.InferenceServerClient(open_gateway.http).unload_model("scale")
    assert not {k for k in _pins(open_gateway) if k[0] == "scale"}
    assert _last_audit(open_gateway)["action"] == "version.unload"
    # v1 has no traffic: released once its in-flight work is done; v2 still serves its endpoint
    wait_until(lambda: _index(open_gateway)[("scale", "1")][0] == "UNAVAILABLE", "v1 released")
    assert _index(open_gateway)[("scale", "2")] == ("READY", "")
    grpcclient.InferenceServerClient(open_gateway.grpc).unload_model("scale")  # nothing pinned


def test_load_refusals(open_gateway: RunningGateway) -> None:
    http = httpclient.InferenceServerClient(open_gateway.http)
    grpc = grpcclient.InferenceServerClient(open_gateway.grpc)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as caught:
        http.load_model("nope")
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="checksum mismatch") as caught:
        grpc.load_model("broken")
    assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
    with pytest.raises(InferenceServerException, match="'config' is not supported"):
        http.load_model("scale", config='{"max_batch_size": 8}')
    url = f"http://{open_gateway.http}/v2/repository/models/scale/load"
    unknown = httpx.post(url, json={"parameters": {"version": "9"}})
    assert unknown.status_code == 404 and "unknown version '9'" in unknown.json()["error"]
    assert ("broken", "1") not in _pins(open_gateway)


def test_with_tokens_load_and_unload_need_the_admin_token(token_gateway: RunningGateway) -> None:
    http = httpclient.InferenceServerClient(token_gateway.http)
    grpc = grpcclient.InferenceServerClient(token_gateway.grpc)
    with pytest.raises(InferenceServerException, match="missing bearer token") as caught:
        http.load_model("scale")
    assert caught.value.status() == "401"
    with pytest.raises(InferenceServerException, match="invalid bearer token") as caught:
        grpc.load_model("scale", headers={"authorization": "Bearer wrong-token-0123456789"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as caught:
        grpc.unload_model("scale")
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert _pins(token_gateway) == frozenset()

    http.load_model("scale", headers={"Authorization": f"Bearer {TOKEN}"})
    assert _pins(token_gateway) == {("scale", "2")}
    assert _last_audit(token_gateway)["actor"] == "ops"
    grpc.unload_model("scale", headers={"authorization": f"Bearer {TOKEN}"})
    assert _pins(token_gateway) == frozenset()
    assert len(_index(token_gateway)) == 3  # the index is a read: no token needed


def test_without_tokens_only_loopback_clients_may_change_models(tmp_path: Path) -> None:
    config = loopback_config(tmp_path)
    controller = Controller(Registry(tmp_path), config, StateStore(tmp_path))
    repository = ModelRepository(controller, TokenCheck({}))
    assert repository.actor(None, "127.0.0.1") == repository.actor(None, "::1") == "local"
    for host in ("192.0.2.10", "2001:db8::1", None):
        with pytest.raises(LockgateError, match="loopback") as caught:
            repository.actor(f"Bearer {TOKEN}", host)
        assert caught.value.kind is ErrorKind.UNAUTHORIZED
    guarded = ModelRepository(controller, TokenCheck({TOKEN: "ops"}))
    assert guarded.actor(f"Bearer {TOKEN}", "192.0.2.10") == "ops"
