"""TLS on every listener, and mutual TLS, with a CA made for the test (trustme): real clients
(httpx, tritonclient gRPC, lockgate's own admin client) over real sockets."""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import trustme

from lockgate.config import TLSConfig
from lockgate.control.client import AdminClient
from lockgate.control.registry import Registry
from lockgate.errors import LockgateError
from lockgate.tls import client_context, install_client_tls, tls_config
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("operator@example.org")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    server.private_key_pem.write_to_path(files["key"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    files["client"] = folder / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(files["client"])
    return files


def trusting(pki: dict[str, Path], client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if client_cert:
        context.load_cert_chain(pki["client"])
    return context


def gateway(tmp_path: Path, tls: TLSConfig) -> RunningGateway:
    registry = Registry(tmp_path)
    registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    return RunningGateway(loopback_config(tmp_path, tls=tls), registry)


@pytest.fixture
def tls_gateway(tmp_path: Path, pki: dict[str, Path]) -> Iterator[RunningGateway]:
    with gateway(tmp_path, TLSConfig(pki["cert"], pki["key"])) as gw:
        yield gw


def grpc_infer(gw: RunningGateway, pki: dict[str, Path], client_cert: bool) -> np.ndarray:
    client = triton_grpc.InferenceServerClient(
        gw.grpc,
        ssl=True,
        root_certificates=str(pki["ca"]),
        private_key=str(pki["client"]) if client_cert else None,
        certificate_chain=str(pki["client"]) if client_cert else None,
    )
    x = np.ones((1, 4), np.float32)
    inp = triton_grpc.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("scale", [inp], client_timeout=30).as_numpy("y")  # type: ignore[no-any-return]


def test_every_listener_speaks_tls(tls_gateway: RunningGateway, pki: dict[str, Path]) -> None:
    with httpx.Client(verify=trusting(pki), timeout=30) as client:
        r = client.post(f"https://{tls_gateway.http}/v2/models/scale/infer", json=BODY)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
        assert client.get(f"https://{tls_gateway.admin}/v1/state").status_code == 200
    np.testing.assert_array_equal(grpc_infer(tls_gateway, pki, client_cert=False), 2.0)
    with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS listener is not answered
        httpx.post(f"http://{tls_gateway.http}/v2/models/scale/infer", json=BODY, timeout=30)


def test_lockgates_own_client_trusts_the_configured_ca(
    tls_gateway: RunningGateway, pki: dict[str, Path]
) -> None:
    url = f"https://{tls_gateway.admin}"
    with pytest.raises(LockgateError, match="cannot reach"):  # the system store lacks the CA
        AdminClient(url, None).revision()
    install_client_tls(client_context(str(pki["ca"])))
    try:
        assert AdminClient(url, None).revision() == 0
    finally:
        urllib.request.install_opener(None)  # type: ignore[arg-type]


def test_mutual_tls_refuses_clients_without_a_certificate(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    with gateway(tmp_path, TLSConfig(pki["cert"], pki["key"], pki["ca"])) as gw:
        url = f"https://{gw.http}/v2/models/scale/infer"
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, json=BODY, verify=trusting(pki), timeout=30)
        with httpx.Client(verify=trusting(pki, client_cert=True), timeout=30) as client:
            assert client.post(url, json=BODY).status_code == 200
        np.testing.assert_array_equal(grpc_infer(gw, pki, client_cert=True), 2.0)
        with pytest.raises(triton_grpc.InferenceServerException):
            grpc_infer(gw, pki, client_cert=False)


def test_tls_flags_are_checked_at_start(pki: dict[str, Path], tmp_path: Path) -> None:
    assert tls_config(None, None, None) is None
    with pytest.raises(LockgateError, match="both"):
        tls_config(str(pki["cert"]), None, None)
    with pytest.raises(LockgateError, match="needs --tls-cert"):
        tls_config(None, None, str(pki["ca"]))
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(LockgateError, match="cannot use the TLS files"):
        tls_config(str(pki["cert"]), str(tmp_path / "bad.pem"), None)
    config = tls_config(str(pki["cert"]), str(pki["key"]), str(pki["ca"]))
    assert config == TLSConfig(pki["cert"], pki["key"], pki["ca"])


def test_api_keys_travel_over_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    key = "tls-client-key-0123456789"
    registry = Registry(tmp_path)
    registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    config = loopback_config(
        tmp_path, tls=TLSConfig(pki["cert"], pki["key"]), client_keys=(("app", key, "infer"),)
    )
    with RunningGateway(config, registry) as gw:
        url = f"https://{gw.http}/v2/models/scale/infer"
        with httpx.Client(verify=trusting(pki), timeout=30) as client:
            refused = client.post(url, json=BODY)
            assert refused.status_code == 401 and "www-authenticate" in refused.headers
            ok = client.post(url, json=BODY, headers={"authorization": f"Bearer {key}"})
            assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2, 4, 6, 8]
        client_grpc = triton_grpc.InferenceServerClient(
            gw.grpc, ssl=True, root_certificates=str(pki["ca"])
        )
        inp = triton_grpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        headers = {"authorization": f"Bearer {key}"}
        answer = client_grpc.infer("scale", [inp], headers=headers, client_timeout=30)
        np.testing.assert_array_equal(answer.as_numpy("y"), [[2, 2, 2, 2]])
