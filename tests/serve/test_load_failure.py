"""A version that fails to load is reported (readiness, error response, log) while every other
version keeps serving; the gRPC health service follows readiness."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lockgate.control.registry import Registry
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config, pin_versions


@pytest.fixture(scope="module")
def broken_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("broken-home")
    registry = Registry(home)
    model = onnx_models.scale_model(home / "scale.onnx")
    registry.register(model, "scale")
    broken = registry.register(model, "scale")  # v2, then damaged on disk
    broken.model_path.write_bytes(b"not onnx any more")
    shutil.copy(model, home / "other.onnx")
    registry.register(home / "other.onnx", "other")
    pin_versions(home, ("scale", "1"))
    with RunningGateway(loopback_config(home), registry) as gw:
        yield gw


def test_failed_version_is_reported_and_others_serve(broken_gateway: RunningGateway) -> None:
    client = triton_http.InferenceServerClient(broken_gateway.http)
    assert client.is_server_ready()
    assert client.is_model_ready("scale", "1") and client.is_model_ready("other")
    assert not client.is_model_ready("scale", "2")
    r = httpx.post(
        f"http://{broken_gateway.http}/v2/models/scale/versions/2/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]},
    )
    assert r.status_code == 503 and "checksum mismatch" in r.json()["error"]
    # the implicit endpoint (latest version, the broken one) says why too, rather than 404
    r = httpx.post(
        f"http://{broken_gateway.http}/v2/models/scale/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]},
    )
    assert r.status_code == 503 and "checksum mismatch" in r.json()["error"]
    x = np.ones((2, 4), np.float32)
    inp = triton_http.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("scale", [inp], model_version="1").as_numpy("y")
    np.testing.assert_array_equal(out, 2 * x)


def test_failure_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(tmp_path)
    info = registry.register(onnx_models.scale_model(tmp_path / "s.onnx"), "scale")
    info.model_path.write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR), RunningGateway(loopback_config(tmp_path), registry):
        pass
    assert any("scale v1 failed to load" in r.getMessage() for r in caplog.records)


def test_grpc_health_service_follows_readiness(broken_gateway: RunningGateway) -> None:
    with grpc.insecure_channel(broken_gateway.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
