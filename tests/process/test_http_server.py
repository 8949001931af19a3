"""Slow and stalled clients over raw sockets against a real gateway: half a request is answered
408 and closed, an idle connection is closed, and bodies still arriving share a bounded budget
(beyond it, new bodies get 503). Deadlines are short here; each test waits for the server to
act (a read until the server closes), never for a fixed time."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lockgate.cli import build_parser
from lockgate.cli_serve import serve_config
from lockgate.control.registry import Registry
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

BODY = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("slow-clients")
    registry = Registry(home)
    registry.register(onnx_models.scale_model(home / "scale.onnx"), "scale")
    config = loopback_config(
        home,
        header_timeout=0.5,
        body_timeout=0.5,
        idle_timeout=0.5,
        max_buffered_body_bytes=1000,
    )
    with RunningGateway(config, registry) as gateway:
        yield gateway


def connect(gw: RunningGateway) -> socket.socket:
    host, port = gw.http.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s pass: a failure)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def infer_head(length: int) -> bytes:
    return (
        b"POST /v2/models/scale/infer HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % length
    )


def test_half_a_request_line_is_answered_408_and_closed(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        sock.sendall(b"POST /v2/models/scale/inf")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request timeout" in answer


def test_headers_without_their_end_are_answered_408(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        sock.sendall(b"POST /v2/models/scale/infer HTTP/1.1\r\nhost: x\r\ncontent-le")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_is_answered_408_and_its_bytes_released(gw: RunningGateway) -> None:
    budget = gw.gateway.http_app.budget  # type: ignore[union-attr]
    with connect(gw) as sock:
        sock.sendall(infer_head(len(BODY)) + BODY[:10])
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    wait_until(lambda: budget.held == 0, "the handler to see the disconnect", interval=0.01)


def test_a_connection_that_sends_nothing_is_closed(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        assert read_until_closed(sock) == b""


def test_a_kept_alive_connection_is_closed_when_idle(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        sock.sendall(infer_head(len(BODY)) + BODY)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1


def test_pipelined_requests_are_answered_in_order_then_the_idle_connection_closed(
    gw: RunningGateway,
) -> None:
    bodies = [BODY.replace(b"[1,2,3,4]", b"[%d,0,0,0]" % i) for i in (1, 2, 3)]
    with connect(gw) as sock:
        sock.sendall(b"".join(infer_head(len(b)) + b for b in bodies))  # one write, three asks
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 3
    firsts = [answer.index(b'"data":[%d.0,' % (2 * i)) for i in (1, 2, 3)]  # y = 2x
    assert firsts == sorted(firsts)


def test_bodies_in_transit_share_a_budget(gw: RunningGateway) -> None:
    budget = gw.gateway.http_app.budget  # type: ignore[union-attr]
    shed_before = budget.shed
    with connect(gw) as first:
        first.sendall(infer_head(800) + b"{")  # declares 800 bytes, holds them while it stalls
        wait_until(lambda: budget.held >= 800, "the stalled body's bytes", interval=0.01)
        assert budget.held == 800
        with connect(gw) as second:
            second.sendall(infer_head(800) + b"{")
            answer = read_until_closed_or_answered(second)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after" in answer.lower()
        assert budget.shed == shed_before + 1
        # a body that arrives whole needs no budget and is served meanwhile
        r = httpx.post(f"http://{gw.http}/v2/models/scale/infer", content=BODY)
        assert r.status_code == 200


def read_until_closed_or_answered(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_read_deadlines_are_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--home", str(tmp_path), "--header-timeout", "5", "--body-timeout", "7",
         "--idle-timeout", "9", "--max-buffered-body-mb", "1"]
    )  # fmt: skip
    config = serve_config(args)
    assert (config.header_timeout, config.body_timeout, config.idle_timeout) == (5, 7, 9)
    assert config.max_buffered_body_bytes == 2**20
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--header-timeout", "0"])
