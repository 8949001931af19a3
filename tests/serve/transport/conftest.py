"""The gRPC servicer and the HTTP app side by side on one real pipeline, in-process: the
fixtures and helpers of test_grpc_service.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.config import ServeConfig
from lockgate.control import traffic
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.serve.controller import Controller
from lockgate.serve.transport.grpc_service import InferenceService, _guarded
from lockgate.serve.transport.http_app import build_http_app
from tests import onnx_models
from tests.conftest import catalog, model_executor
from tests.serve.conftest import serve_config

Array = np.ndarray[Any, Any]


class Context:
    """What a grpc.aio servicer context is to the servicer: metadata and deadline in, abort
    and trailing metadata out (abort raises, as grpc's does)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), remaining: float | None = None):
        self.metadata = metadata
        self.remaining = remaining
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


class Pipeline:
    """The controller and its data plane as one object, as these tests drive them: lifecycle
    calls go to the controller, everything else to the data plane the transports use."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def start(self) -> None:
        await self.controller.start()

    async def drain(self, timeout: float) -> bool:
        return await self.controller.drain(timeout)

    def begin_shutdown(self) -> None:
        self.controller.begin_shutdown()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.controller.dataplane, name)


class Counting:
    """The real pipeline, with the failures the transports count recorded on the way through."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.failures: list[tuple[str, str, str]] = []

    def count_failure(self, endpoint: str, protocol: str, outcome: str) -> None:
        self.failures.append((endpoint, protocol, outcome))
        self.pipeline.count_failure(endpoint, protocol, outcome)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


@dataclass
class Transports:
    pipeline: Counting
    grpc: InferenceService
    http: httpx.AsyncClient
    executor: Executor  # where the pipeline's model runs happen

    async def call(self, method: str, request: Any, context: Context | None = None) -> Any:
        """The servicer's answer, or the context with the code it aborted with."""
        context = context or Context()
        handler = _guarded(getattr(self.grpc, method))
        try:
            return await handler(request, context)
        except grpc.aio.AbortError:
            return context

    async def infer(self, request: Any, context: Context | None = None) -> Any:
        """ModelInfer as grpc hands it over: the serialized request."""
        body = request if isinstance(request, bytes) else request.SerializeToString()
        return await self.call("ModelInfer", body, context)


def pipeline_of(home: Path, config: ServeConfig) -> Pipeline:
    """The serving pipeline (serve/dataplane.py) over `home`: the one place these tests build
    it."""
    return Pipeline(Controller(Registry(home), config, StateStore(home), monitor=None))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    registry = Registry(tmp_path)
    for _ in range(2):
        registry.register(onnx_models.scale_model(tmp_path / "scale.onnx"), "scale")
    registry.register(onnx_models.multi_io_model(tmp_path / "multi.onnx"), "multi")
    registry.register(onnx_models.lookup_model(tmp_path / "lookup.onnx"), "lookup")
    split = {
        "variants": [
            {"name": "stable", "model": "scale", "version": "1", "weight": 50},
            {"name": "canary", "model": "scale", "version": "2", "weight": 50},
        ]
    }
    store = StateStore(tmp_path)
    mutation = traffic.put_endpoint("split", split, catalog(registry))
    store.apply(mutation, actor="tests", expected_revision=None)
    store.close()
    return tmp_path


async def transports_for(config: ServeConfig) -> AsyncIterator[Transports]:
    pipeline = pipeline_of(config.home, config)
    await pipeline.start()
    counting = Counting(pipeline)
    app = build_http_app(counting, max_body_bytes=config.max_body_bytes)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Transports(counting, InferenceService(counting), client, model_executor(pipeline))
    await pipeline.drain(timeout=60)


@pytest.fixture
async def t(home: Path) -> AsyncIterator[Transports]:
    async for transports in transports_for(serve_config(home)):
        yield transports


def scale_request(x: Array, model: str = "scale", version: str = "", raw: bool = True) -> Any:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="req-7")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    if raw:
        request.raw_input_contents.append(x.astype(np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return request


def json_body(x: Array, name: str = "x", datatype: str = "FP32") -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.tolist()}
    return orjson.dumps({"id": "req-7", "inputs": [tensor]})


def outputs_of(response: Any) -> dict[str, Array]:
    """A ModelInferResponse's outputs as arrays (raw contents, as tritonclient reads them)."""
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
    out = {}
    for meta, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if meta.datatype == "BYTES":  # 4-byte little-endian length, then the bytes
            items, i = [], 0
            while i < len(raw):
                n = int.from_bytes(raw[i : i + 4], "little")
                items.append(raw[i + 4 : i + 4 + n])
                i += 4 + n
            out[meta.name] = np.array(items, dtype=object).reshape(tuple(meta.shape))
        else:
            out[meta.name] = np.frombuffer(raw, dtypes[meta.datatype]).reshape(tuple(meta.shape))
    return out


def http_outputs(doc: dict[str, Any]) -> dict[str, Array]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}
