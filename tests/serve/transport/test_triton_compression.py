"""Compressed infer bodies as tritonclient sends and reads them (`request_compression_algorithm`,
`response_compression_algorithm`) against real gateways, and the limits: a body that inflates
past the body limit is a 413, a malformed one a 400."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from lockgate.control.registry import Registry
from lockgate.serve.transport.compression import MIN_COMPRESSED_BYTES, accepted, decompress
from tests import onnx_models
from tests.conftest import RunningGateway, loopback_config

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def small_limit_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("compression-home")
    registry = Registry(home)
    registry.register(onnx_models.scale_model(home / "scale.onnx"), "scale")
    with RunningGateway(loopback_config(home, max_body_bytes=LIMIT), registry) as gw:
        yield gw


def _rows(n: int, seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


@pytest.mark.parametrize("request_coding", ["gzip", "deflate", None])
@pytest.mark.parametrize("response_coding", ["gzip", "deflate", None])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_compressed_bodies(
    gateway: RunningGateway, request_coding: str | None, response_coding: str | None, binary: bool
) -> None:
    x = _rows(300, seed=7)  # large enough that the answer is compressed
    client = httpclient.InferenceServerClient(gateway.http)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        "scale",
        [inp],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
        request_compression_algorithm=request_coding,
        response_compression_algorithm=response_coding,
    )
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_the_answer_is_compressed_when_accepted(gateway: RunningGateway, coding: str) -> None:
    x = _rows(200, seed=8)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [200, 4], "data": x.tolist()}]}
    )
    url = f"http://{gateway.http}/v2/models/scale/infer"
    headers = {"accept-encoding": f"br, {coding};q=0.8"}
    with httpx.stream("POST", url, content=body, headers=headers) as raw:  # bytes as sent
        wire = b"".join(raw.iter_raw())
    assert raw.status_code == 200 and raw.headers["content-encoding"] == coding
    inflated = gzip.decompress(wire) if coding == "gzip" else zlib.decompress(wire)
    assert len(wire) < len(inflated)
    doc = orjson.loads(inflated)
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]).reshape(200, 4), 2 * x)
    small = httpx.post(url, content=_one_row(), headers={"accept-encoding": coding})
    assert small.status_code == 200 and "content-encoding" not in small.headers
    assert len(small.content) < MIN_COMPRESSED_BYTES


def _one_row() -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
    )


def test_grpc_compression(gateway: RunningGateway) -> None:
    x = _rows(50, seed=9)
    client = grpcclient.InferenceServerClient(gateway.grpc)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for coding in ("gzip", "deflate"):
        result = client.infer("scale", [inp], compression_algorithm=coding)
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


def test_a_zip_bomb_is_refused_within_the_limit(small_limit_gateway: RunningGateway) -> None:
    head = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1,2,3,4]}]}'
    bomb = gzip.compress(head + b" " * (64 * LIMIT), compresslevel=9)  # 64 MiB of spaces
    assert len(bomb) < LIMIT
    url = f"http://{small_limit_gateway.http}/v2/models/scale/infer"
    refused = httpx.post(url, content=bomb, headers={"content-encoding": "gzip"})
    assert refused.status_code == 413
    assert f"exceeds the {LIMIT}-byte limit" in refused.json()["error"]
    fits = httpx.post(url, content=gzip.compress(head), headers={"content-encoding": "gzip"})
    assert fits.status_code == 200 and fits.json()["outputs"][0]["data"] == [2, 4, 6, 8]


@pytest.mark.parametrize(
    ("body", "coding", "message"),
    [
        (b"not gzip at all", "gzip", "malformed gzip body"),
        (gzip.compress(b'{"inputs": []}')[:-12], "gzip", "truncated gzip body"),
        (zlib.compress(b"{}") + b"tail", "deflate", "after the end of the deflate body"),
        (b"{}", "br", "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_compressed_bodies_are_client_errors(
    small_limit_gateway: RunningGateway, body: bytes, coding: str, message: str
) -> None:
    url = f"http://{small_limit_gateway.http}/v2/models/scale/infer"
    answer = httpx.post(url, content=body, headers={"content-encoding": coding})
    assert answer.status_code == 400 and message in answer.json()["error"]


def test_decompression_holds_at_most_the_limit() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    for packed, coding in ((gzip.compress(data), "gzip"), (zlib.compress(data), "deflate")):
        assert decompress(packed, coding, len(data)) == data
        with pytest.raises(Exception, match="exceeds"):
            decompress(packed, coding, len(data) - 1)
    raw = zlib.compressobj(wbits=-15)
    assert decompress(raw.compress(data) + raw.flush(), "deflate", len(data)) == data
    two = gzip.compress(b"ab") + gzip.compress(b"cd")  # gzip members back to back
    assert decompress(two, "gzip", 4) == b"abcd"


def test_accept_encoding_weights() -> None:
    assert accepted("gzip") == "gzip" and accepted("deflate") == "deflate"
    assert accepted("gzip;q=0.5, deflate") == "deflate"
    assert accepted("deflate, gzip") == "gzip"  # a tie goes to gzip
    assert accepted("*") == "gzip"
    assert accepted("br, identity") is None and accepted("gzip;q=0") is None
