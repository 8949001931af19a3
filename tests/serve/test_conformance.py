"""The stock Triton clients (HTTP binary, HTTP JSON, gRPC) against a real gateway: outputs must
equal onnxruntime run directly on the same input."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import RunningGateway

MODELS = {"classifier": 16, "regressor": 8, "mlp": 32}


def direct(gateway: RunningGateway, model: str, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    info = gateway.registry.latest(model)
    session = ort.InferenceSession(
        str(info.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows}), strict=True))


def _rows(batch: int, features: int, seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((batch, features)).astype(np.float32)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_client_matches_onnxruntime(
    gateway: RunningGateway, model: str, batch: int, binary: bool
) -> None:
    rows = _rows(batch, MODELS[model], seed=batch)
    expected = direct(gateway, model, rows)
    client = httpclient.InferenceServerClient(gateway.http)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in expected]
    result = client.infer(model, [inp], outputs=outputs, request_id=f"req-{batch}")
    assert result.get_response()["id"] == f"req-{batch}"
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_grpc_client_matches_onnxruntime(gateway: RunningGateway, model: str, batch: int) -> None:
    rows = _rows(batch, MODELS[model], seed=100 + batch)
    expected = direct(gateway, model, rows)
    client = grpcclient.InferenceServerClient(gateway.grpc)
    inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer(model, [inp], request_id="g1")
    assert result.get_response().id == "g1"
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_http_default_outputs_are_binary_and_complete(gateway: RunningGateway) -> None:
    rows = _rows(3, 16, seed=1)
    client = httpclient.InferenceServerClient(gateway.http)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("classifier", [inp])  # no outputs named: all, binary
    expected = direct(gateway, "classifier", rows)
    assert {o["name"] for o in result.get_response()["outputs"]} == set(expected)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])


def test_metadata_and_readiness_through_both_clients(gateway: RunningGateway) -> None:
    spec = gateway.registry.latest("classifier").spec
    http = httpclient.InferenceServerClient(gateway.http)
    grpc = grpcclient.InferenceServerClient(gateway.grpc)
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert http.is_model_ready("classifier") and grpc.is_model_ready("classifier")
    assert http.is_model_ready("classifier", "1") and grpc.is_model_ready("classifier", "1")
    assert http.get_server_metadata()["name"] == "lockgate"
    assert grpc.get_server_metadata().name == "lockgate"
    hmeta = http.get_model_metadata("classifier")
    gmeta = grpc.get_model_metadata("classifier")
    versions = [v.version for v in gateway.registry.versions("classifier")]
    assert hmeta["versions"] == versions and list(gmeta.versions) == versions
    assert [(t["name"], t["datatype"], t["shape"]) for t in hmeta["inputs"]] == [
        (t.name, t.datatype, list(t.shape)) for t in spec.inputs
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in gmeta.outputs] == [
        (t.name, t.datatype, list(t.shape)) for t in spec.outputs
    ]
    assert hmeta["platform"] == gmeta.platform == "onnxruntime_onnx"


def test_explicit_version_is_served(gateway: RunningGateway) -> None:
    rows = _rows(2, 16, seed=5)
    client = httpclient.InferenceServerClient(gateway.http)
    for version in ("1", "2"):
        inp = httpclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        result = client.infer("classifier", [inp], model_version=version)
        assert result.get_response()["model_version"] == version
        info = gateway.registry.get("classifier", version)
        session = ort.InferenceSession(
            str(info.path / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        (want,) = session.run(["probability"], {"input": rows})
        np.testing.assert_allclose(result.as_numpy("probability"), want, rtol=1e-6)
