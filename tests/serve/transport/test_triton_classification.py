"""Triton's classification extension: `class_count` on a requested output returns its top k as
BYTES `"value:index"` strings (Triton prints values with std::to_string: six decimals for
floating point, plain digits for integers), through tritonclient over HTTP (JSON and binary)
and gRPC against a real gateway; the expectation is built here from the model's own outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from lockgate.errors import LockgateError
from lockgate.serve.transport.triton import top_k
from tests.conftest import RunningGateway


def expected_classes(
    values: np.ndarray[Any, Any], k: int, labels: list[str] | None = None
) -> list[list[bytes]]:
    """Per row: the k largest (ties: lower index first), formatted as Triton's C++ does."""
    out = []
    for row in values.reshape(values.shape[0], -1).tolist():
        ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        texts = []
        for i in ranked:
            value = f"{row[i]:f}" if isinstance(row[i], float) else str(row[i])
            label = labels[i] if labels is not None and i < len(labels) and labels[i] else None
            texts.append(f"{value}:{i}" + (f":{label}" if label else ""))
        out.append([t.encode() for t in texts])
    return out


def scale_input(seed: int) -> np.ndarray[Any, Any]:
    x = np.random.default_rng(seed).standard_normal((5, 4)).astype(np.float32)
    x[0, 1] = x[0, 2] = 3.0  # a tie: the lower index ranks first
    return x


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_class_count_returns_the_top_k(gateway: RunningGateway, binary: bool) -> None:
    x = scale_input(seed=1)
    client = httpclient.InferenceServerClient(gateway.http)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary, class_count=3)
    result = client.infer("scale", [inp], outputs=[out])
    got = result.as_numpy("y")
    assert got.shape == (5, 3)
    assert result.get_output("y")["datatype"] == "BYTES"
    as_bytes = [[v if isinstance(v, bytes) else v.encode() for v in row] for row in got.tolist()]
    assert as_bytes == expected_classes(2 * x, 3)  # JSON carries BYTES as strings


def test_grpc_class_count_returns_the_top_k(gateway: RunningGateway) -> None:
    x = scale_input(seed=2)
    client = grpcclient.InferenceServerClient(gateway.grpc)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = grpcclient.InferRequestedOutput("y", class_count=10)  # more than there are: all 4
    result = client.infer("scale", [inp], outputs=[out])
    assert result.as_numpy("y").tolist() == expected_classes(2 * x, 4)


def test_integer_and_fp64_outputs_and_untouched_neighbours(gateway: RunningGateway) -> None:
    a = np.array([[5, -2], [7, 9]], np.int64)
    b = np.array([[0.5, 0.25, 0.75], [1.0, 3.0, 2.0]], np.float64)
    s = np.array([[b"p"], [b"q"]], dtype=object)
    client = grpcclient.InferenceServerClient(gateway.grpc)
    inputs = []
    for name, arr, dt in (("a", a, "INT64"), ("b", b, "FP64"), ("s", s, "BYTES")):
        inp = grpcclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    outputs = [
        grpcclient.InferRequestedOutput("a_plus_one", class_count=1),
        grpcclient.InferRequestedOutput("b_squared", class_count=2),
        grpcclient.InferRequestedOutput("s_out"),
    ]
    result = client.infer("multi", inputs, outputs=outputs)
    assert result.as_numpy("a_plus_one").tolist() == expected_classes(a + 1, 1)
    assert result.as_numpy("b_squared").tolist() == expected_classes(b * b, 2)
    assert result.as_numpy("s_out").tolist() == s.tolist()


def test_outputs_without_an_order_and_bad_counts_are_refused(gateway: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(gateway.http)
    s = np.array([[b"p"]], dtype=object)
    inputs = []
    for name, arr, dt in (
        ("a", np.zeros((1, 2), np.int64), "INT64"),
        ("b", np.zeros((1, 3), np.float64), "FP64"),
        ("s", s, "BYTES"),
    ):
        inp = httpclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    out = httpclient.InferRequestedOutput("s_out", class_count=1)
    with pytest.raises(InferenceServerException, match="unsupported type 'BYTES'") as caught:
        client.infer("multi", inputs, outputs=[out])
    assert caught.value.status() == "400"
    gclient = grpcclient.InferenceServerClient(gateway.grpc)
    x = np.ones((1, 4), np.float32)
    ginp = grpcclient.InferInput("x", [1, 4], "FP32")
    ginp.set_data_from_numpy(x)
    negative = grpcclient.InferRequestedOutput("y")
    negative._output.parameters["classification"].int64_param = -1
    with pytest.raises(InferenceServerException, match="count of classes"):
        gclient.infer("scale", [ginp], outputs=[negative])


def test_labels_are_appended_where_the_version_has_them() -> None:
    values = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]], np.float32)
    labels = ["cat", "dog", ""]  # index 2 has an empty label, index 3 none at all
    got = top_k(values, 4, "FP32", True, labels)
    assert got.tolist() == expected_classes(values, 4, labels)
    assert got[0].tolist()[:2] == [b"0.900000:1:dog", b"0.700000:3"]


def test_without_a_batch_dimension_the_whole_tensor_ranks_once() -> None:
    values = np.array([[3, 1], [4, 1]], np.uint8)
    got = top_k(values, 3, "UINT8", False)
    assert got.shape == (3,)
    assert got.tolist() == [b"4:2", b"3:0", b"1:1"]
    with pytest.raises(LockgateError, match="unsupported type 'FP16'"):
        top_k(values.astype(np.float16), 1, "FP16", True)
