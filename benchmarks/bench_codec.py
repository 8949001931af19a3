"""In-process codec cost: decode + encode of a 1x16 FP32 request (target <= 20 us).

.venv/bin/pytest benchmarks/bench_codec.py --benchmark-enable -q
"""

from __future__ import annotations

import numpy as np
import orjson
from pytest_benchmark.fixture import BenchmarkFixture

from lockgate.serve.transport import codec
from lockgate.types import InferResponse, ModelSpec, Tensor, TensorSpec

ROW = np.random.default_rng(0).standard_normal(16).astype(np.float32)
JSON_BODY = orjson.dumps(
    {
        "id": "r1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW.tolist()}],
    }
)
HEAD = orjson.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 16],
                "parameters": {"binary_data_size": 64},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
)
BINARY_BODY = HEAD + ROW.tobytes()
OUTPUTS = [
    Tensor("probability", "FP32", np.array([[0.7]], np.float32)),
    Tensor("label", "INT64", np.array([[1]])),
]


SPEC = ModelSpec(  # the demo classifier's metadata, which the decoder checks inputs against
    "classifier",
    "1",
    (TensorSpec("input", "FP32", (-1, 16)),),
    (TensorSpec("probability", "FP32", (-1, 1)), TensorSpec("label", "INT64", (-1, 1))),
)


def _round_trip(body: bytes, header_length: int | None) -> bytes:
    req = codec.decode_request(
        body, "application/json", header_length, "classifier", None, spec=SPEC
    )
    resp = InferResponse("classifier", "1", req.id, OUTPUTS)
    out, _ = codec.encode_response(resp, req, msgpack_body=False)
    return out


def test_json_round_trip_1x16(benchmark: BenchmarkFixture) -> None:
    assert benchmark(_round_trip, JSON_BODY, None)


def test_binary_round_trip_1x16(benchmark: BenchmarkFixture) -> None:
    assert benchmark(_round_trip, BINARY_BODY, len(HEAD))
