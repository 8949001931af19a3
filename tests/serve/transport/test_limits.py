"""The element limit as each transport is given it, and what error messages quote of a client's
values. (The decoders' checks themselves are fuzzed in test_fuzz.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import uvicorn

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from lockgate.serve.transport.grpc_service import build_grpc_server
from lockgate.serve.transport.http_app import build_http_app
from lockgate.serve.transport.limits import reason, shown
from tests.conftest import RunningGateway

LIMIT = 32  # elements: two rows of the classifier's 16 features


@pytest.fixture(scope="module")
def limited(gateway: RunningGateway) -> Iterator[tuple[str, str]]:
    """HTTP and gRPC listeners built with max_request_elements=32 on the shared gateway's
    data plane and event loop; yields their addresses."""

    async def start() -> tuple[uvicorn.Server, asyncio.Task[None], grpc.aio.Server, int]:
        app = build_http_app(gateway.dataplane, max_body_bytes=2**20, max_request_elements=LIMIT)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, loop="none", lifespan="off", log_config=None
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 30
        while not server.started:  # a condition, with a bound
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        grpc_server, port = build_grpc_server(
            gateway.dataplane, "127.0.0.1", 0, max_message_bytes=2**20, max_request_elements=LIMIT
        )
        await grpc_server.start()
        return server, task, grpc_server, port

    server, task, grpc_server, grpc_port = gateway.call(start())
    http_port = server.servers[0].sockets[0].getsockname()[1]
    yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"

    async def stop() -> None:
        server.should_exit = True
        await task
        await grpc_server.stop(0)

    gateway.call(stop())


@pytest.mark.parametrize("rows", [2, 3])
def test_transports_take_their_element_limit(limited: tuple[str, str], rows: int) -> None:
    http, grpc_address = limited
    x = np.zeros((rows, 16), np.float32)
    entry = {"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": x.ravel().tolist()}
    doc = {"inputs": [entry]}
    r = httpx.post(f"http://{http}/v2/models/classifier/infer", json=doc, timeout=30)
    msg = pb.ModelInferRequest(model_name="classifier", raw_input_contents=[x.tobytes()])
    msg.inputs.add(name="input", datatype="FP32", shape=[rows, 16])
    with grpc.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(msg, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
    if rows * 16 <= LIMIT:
        assert r.status_code == 200 and code == grpc.StatusCode.OK, r.text
    else:
        assert r.status_code == 413 and f"limit of {LIMIT} elements" in r.json()["error"]
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"limit of {LIMIT}" in details


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("input", "'input'"), ("x" * 200, "'" + "x" * 76 + "..."), (list(range(100)), "[0, 1, 2")],
)
def test_messages_quote_a_bounded_part_of_what_was_sent(value: Any, quoted: str) -> None:
    assert shown(value).startswith(quoted) and len(shown(value)) <= 80


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert reason(ValueError("bad byte")) == "bad byte"
    assert reason(KeyError()) == "KeyError"
