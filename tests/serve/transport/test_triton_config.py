"""Triton's model configuration and server metadata through tritonclient (HTTP and gRPC) against
real gateways: the configuration is derived from the registered schema and the batcher's
settings, in Triton's shape (no batch dimension in dims when max_batch_size > 0)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from lockgate.config import BatchConfig
from lockgate.control.registry import Registry
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config

TRITON_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64"}


def fixed_shape_model(path: Path) -> Path:
    """y = x + 1 on a fixed [3, 4] tensor: no batch dimension, so nothing to batch."""
    one = numpy_helper.from_array(np.array(1, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def config_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("config-home")
    registry = Registry(home)
    registry.register(fixed_shape_model(home / "fixed.onnx"), "fixed")
    registry.register(onnx_models.multi_io_model(home / "multi.onnx"), "multi")
    batch = BatchConfig(max_batch_rows=48, max_queue_delay=0.002)
    with RunningGateway(loopback_config(home, batch=batch), registry) as gw:
        yield gw


def _http(gw: RunningGateway) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gw.http)


def _grpc(gw: RunningGateway) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gw.grpc)


def _both(gw: RunningGateway, model: str, version: str = "") -> list[dict[str, Any]]:
    """The configuration as each client reads it (gRPC through protobuf's JSON mapping)."""
    http = _http(gw).get_model_config(model, version)
    grpc = _grpc(gw).get_model_config(model, version, as_json=True)["config"]
    return [http, grpc]


def test_a_batchable_model_reports_the_batcher_and_dims_without_the_batch_dim(
    config_gateway: RunningGateway,
) -> None:
    spec = config_gateway.registry.latest("multi").spec
    http, grpc = _both(config_gateway, "multi")
    assert http["name"] == grpc["name"] == "multi"
    assert http["platform"] == grpc["platform"] == "onnxruntime_onnx"
    assert http["backend"] == grpc["backend"] == "onnxruntime"
    assert http["max_batch_size"] == grpc["max_batch_size"] == 48
    for doc in (http, grpc):
        expected_in = [(t.name, list(t.shape[1:])) for t in spec.inputs]
        assert [(t["name"], [int(d) for d in t["dims"]]) for t in doc["input"]] == expected_in
        expected_out = [(t.name, list(t.shape[1:])) for t in spec.outputs]
        assert [(t["name"], [int(d) for d in t["dims"]]) for t in doc["output"]] == expected_out
        assert [t["data_type"] for t in doc["input"]] == ["TYPE_INT64", "TYPE_FP64", "TYPE_STRING"]
        assert int(doc["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
        (group,) = doc["instance_group"]
        assert group["kind"] == "KIND_CPU" and group["count"] == 1


def test_a_fixed_shape_model_has_max_batch_size_0_and_no_dynamic_batching(
    config_gateway: RunningGateway,
) -> None:
    for doc in _both(config_gateway, "fixed"):
        assert doc.get("max_batch_size", 0) == 0  # protobuf's JSON leaves a 0 out
        assert "dynamic_batching" not in doc
        assert [(t["name"], [int(d) for d in t["dims"]]) for t in doc["input"]] == [("x", [3, 4])]
        assert doc["output"][0]["data_type"] == "TYPE_FP32"


def test_an_explicit_version_and_an_unknown_model(config_gateway: RunningGateway) -> None:
    http, grpc = _both(config_gateway, "multi", "1")
    assert http["name"] == grpc["name"] == "multi"
    with pytest.raises(InferenceServerException, match="unknown model"):
        _http(config_gateway).get_model_config("nope")
    with pytest.raises(InferenceServerException, match="unknown model") as caught:
        _grpc(config_gateway).get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="version"):
        _http(config_gateway).get_model_config("multi", "7")


def test_the_shared_gateway_reports_its_batcher(gateway: RunningGateway) -> None:
    spec = gateway.registry.latest("mlp").spec
    doc = _http(gateway).get_model_config("mlp")
    assert doc["max_batch_size"] == 64  # the shared gateway's max_batch_rows
    assert doc["input"][0]["dims"] == list(spec.inputs[0].shape[1:])
    assert doc["input"][0]["data_type"] == TRITON_TYPES[spec.inputs[0].datatype]


def test_server_metadata_lists_the_working_extensions(gateway: RunningGateway) -> None:
    expected = {
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "model_repository",
        "msgpack_tensor_data",
        "parameters",
        "statistics",
    }
    assert set(_http(gateway).get_server_metadata()["extensions"]) == expected
    assert set(_grpc(gateway).get_server_metadata().extensions) == expected
