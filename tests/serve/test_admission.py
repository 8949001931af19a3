"""Admission through real servers: the in-flight bound refuses beyond N requests over HTTP and
gRPC before their bodies are read, and a connection refused for overload is paused (uvicorn's
cycle must expose its transport for that)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import uvicorn

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.serve.transport.shed import ConnectionBrake
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import until

BOUND = 2
BODY = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("bounded-home")
    registry = Registry(home)
    registry.register(onnx_models.scale_model(home / "scale.onnx"), "scale")
    config = loopback_config(home, max_in_flight=BOUND, monitor=MonitorConfig(enabled=False))
    with RunningGateway(config, registry) as gw:
        yield gw


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers, body


def grpc_request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="scale")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.arange(1, 5, dtype=np.float32).tobytes())
    return req


def test_in_flight_bound_refuses_beyond_n_over_http_and_grpc(bounded: RunningGateway) -> None:
    host, port = bounded.http.split(":")
    url = f"http://{bounded.http}/v2/models/scale/infer"
    dataplane = bounded.dataplane

    async def run() -> None:
        # BOUND requests in flight: admitted at their headers, their bodies still on the way.
        held = []
        for _ in range(BOUND):
            reader, writer = await asyncio.open_connection(host, int(port))
            head = f"POST /v2/models/scale/infer HTTP/1.1\r\nhost: t\r\ncontent-length: {len(BODY)}"
            writer.write(head.encode() + b"\r\n\r\n" + BODY[:10])
            held.append((reader, writer))
        await until(lambda: dataplane.in_flight == BOUND, "the bound to be reached")
        async with httpx.AsyncClient(timeout=30) as client:
            refused = await client.post(url, content=BODY)
            assert refused.status_code == 503, refused.text
            assert "in flight" in refused.json()["error"]
            assert int(refused.headers["retry-after"]) >= 1
            async with grpc.aio.insecure_channel(bounded.grpc) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.ModelInfer(grpc_request(), timeout=30)
                assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "in flight" in (exc.value.details() or "")
                # The held requests complete once their bodies arrive; then there is room.
                for reader, writer in held:
                    writer.write(BODY[10:])
                    status, _, body = await read_answer(reader)
                    assert status == 200, body
                    writer.close()
                await until(lambda: dataplane.in_flight == 0, "nothing in flight")
                answer = await stub.ModelInfer(grpc_request(), timeout=30)
                got = np.frombuffer(answer.raw_output_contents[0], np.float32)
                np.testing.assert_array_equal(got, np.arange(1, 5) * 2)
            accepted = await client.post(url, content=BODY)
            assert accepted.status_code == 200
            assert accepted.json()["outputs"][0]["data"] == [2, 4, 6, 8]

    asyncio.run(run())
    counted = dataplane.requests
    assert counted[("scale", "", "", "", "http", "overloaded")] == 1
    assert counted[("scale", "", "", "", "grpc", "overloaded")] == 1
    assert dataplane.in_flight == 0


def test_stream_requests_are_admitted_and_released(bounded: RunningGateway) -> None:
    """Each message of a ModelStreamInfer stream is admitted like a unary request and released
    once answered: many more than the bound, one after another, all succeed and leave nothing
    in flight."""
    count = 5 * BOUND

    async def run() -> list[pb.ModelStreamInferResponse]:
        async with grpc.aio.insecure_channel(bounded.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelStreamInfer(timeout=60)
            answers = []
            for _ in range(count):  # one at a time: never more than one in flight
                await call.write(grpc_request())
                answers.append(await call.read())
            await call.done_writing()
            return answers

    answers = asyncio.run(run())
    assert [a.error_message for a in answers] == [""] * count
    for answer in answers:
        got = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(got, np.arange(1, 5) * 2)
    assert bounded.dataplane.in_flight == 0


class Server:
    """A real uvicorn (httptools, as the gateway runs it) around `app`, on this event loop."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, http="httptools", lifespan="off", log_config=None)
        self.server = uvicorn.Server(config)

    async def __aenter__(self) -> Server:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        await until(lambda: self.server.started, "uvicorn to start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.sock.getsockname())


def braking_app(brake: ConnectionBrake, seen: list[tuple[float, bool]]) -> Any:
    """Answers 503 for overload, recording the pause and whether reading stopped."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        delay = brake.refused(send)
        seen.append((delay, send.__self__.transport.is_reading()))

    return app


GET = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"


async def test_a_connection_refused_again_is_paused_then_read_again() -> None:
    # Few connections paused: the pause is the connection's own, doubling as it keeps coming back.
    brake, seen = ConnectionBrake(rate=1 / 60, longest=60.0), []
    async with Server(braking_app(brake, seen)) as server:
        reader, writer = await server.connect()
        for _ in range(4):  # each request after the second is read once the pause is over
            writer.write(GET)
            status, _, _ = await read_answer(reader)
            assert status == 503
        writer.close()
        await until(lambda: brake.paused == 0, "no connection paused")
    # A first refusal is never braked; a connection that comes straight back is.
    assert seen == [(0.0, True), (0.01, False), (0.02, False), (0.04, False)]


async def test_a_connection_back_after_its_retry_after_is_not_paused() -> None:
    clock = [1000.0]
    brake, seen = ConnectionBrake(rate=100.0, longest=1.0, clock=lambda: clock[0]), []
    async with Server(braking_app(brake, seen)) as server:
        reader, writer = await server.connect()
        for _ in range(2):
            writer.write(GET)
            assert (await read_answer(reader))[0] == 503
            clock[0] += 1.5  # the client waited longer than the Retry-After it was given
        writer.close()
    assert seen == [(0.0, True), (0.0, True)]


async def test_the_pause_grows_with_the_connections_paused_up_to_a_cap() -> None:
    # Many connections paused: the pause keeps the gateway's rate of such 503s bounded.
    brake, seen = ConnectionBrake(rate=1 / 60, longest=150.0, first=1000.0), []  # none resumes
    async with Server(braking_app(brake, seen)) as server:
        for _ in range(3):
            reader, writer = await server.connect()
            for _ in range(2):
                writer.write(GET)
                assert (await read_answer(reader))[0] == 503
            writer.close()
    assert seen[1::2] == [(60.0, False), (120.0, False), (150.0, False)]
    assert seen[0::2] == [(0.0, True)] * 3


async def test_a_paused_connection_whose_client_left_is_closed_unread() -> None:
    # a comeback, however long the machine took to send it (the brake's clock stands still):
    # paused for 1 s
    brake, seen = ConnectionBrake(rate=1 / 60, first=1.0, clock=lambda: 0.0), []
    async with Server(braking_app(brake, seen)) as server:
        reader, writer = await server.connect()
        for _ in range(2):
            writer.write(GET)
            assert (await read_answer(reader))[0] == 503
        writer.write(GET)  # sent into the pause, then the client leaves
        writer.write_eof()
        # The server closes it without an answer (a reset: it left the request unread).
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
        await until(lambda: brake.paused == 0, "no connection paused")
    assert seen == [(0.0, True), (1.0, False)]  # the third request never reached the app
