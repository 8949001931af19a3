"""Triton's extensions and tools on the compat models behind one real gateway: statistics,
the repository index, a gRPC stream carrying Silero VAD's state, gzip bodies, the
classification extension on a ZipMap-derived output (with its class labels), and perf_analyzer
over HTTP and gRPC. Expectations come from onnxruntime on the exported files and from what the
test itself sent."""

from __future__ import annotations

import queue
import re
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format

from tests.compat.conftest import Served
from tests.compat.wire import (
    TRANSPORTS,
    as_served,
    assert_same,
    grpc_infer,
    grpc_inputs,
    http_infer,
    http_inputs,
    labels_of,
)
from tests.serve.transport.test_triton_perf_analyzer import perf_analyzer

Array = np.ndarray[Any, Any]


def _stats(served: Served, model: str, transport: str) -> dict[str, Any]:
    if transport == "grpc":
        with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
            message = client.get_inference_statistics(model)
        doc = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    else:
        with httpclient.InferenceServerClient(served.gateway.http) as client:
            doc = client.get_inference_statistics(model)
    (entry,) = doc["model_stats"]
    return {
        "inference_count": int(entry["inference_count"]),
        "execution_count": int(entry["execution_count"]),
        "success": int(entry["inference_stats"]["success"]["count"]),
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("model", ["skl-zipmap", "strings", "iris", "cnn"])
def test_statistics_count_the_requests_sent(served: Served, model: str, transport: str) -> None:
    """Requests sent one after another run one batch each; a model with a batch dimension
    counts its rows as inferences, one without counts each request once (Triton's rule)."""
    case = served.cases[model]
    request = case.requests[0]
    before = _stats(served, model, transport)
    sent = 3
    for _ in range(sent):
        (http_infer if transport == "http-binary" else grpc_infer)(
            served.gateway.http if transport == "http-binary" else served.gateway.grpc,
            model,
            request,
        )
    after = _stats(served, model, transport)
    rows = len(next(iter(request.values()))) if case.batched() else 1
    assert after["success"] - before["success"] == sent
    assert after["execution_count"] - before["execution_count"] == sent
    assert after["inference_count"] - before["inference_count"] == sent * rows


def test_repository_index_lists_every_compat_model(served: Served) -> None:
    with httpclient.InferenceServerClient(served.gateway.http) as client:
        http_index = client.get_model_repository_index()
    with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
        grpc_index = client.get_model_repository_index(as_json=True)["models"]
    for index in (http_index, grpc_index):
        entries = {e["name"]: (e["version"], e["state"]) for e in index}
        assert entries == {name: ("1", "READY") for name in served.cases}


def test_silero_state_carried_over_a_grpc_stream(served: Served) -> None:
    """A streaming client: each chunk goes on one ModelStreamInfer stream with the state the
    previous answer returned."""
    case = served.cases["silero"]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))

        def call(inputs: dict[str, Array]) -> dict[str, Array]:
            client.async_stream_infer("silero", grpc_inputs(inputs), request_id="chunk")
            result, error = answers.get(timeout=60)
            assert error is None, error
            return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}

        got = case.chain(call)
        client.stop_stream()
    for i, (answer, want) in enumerate(zip(got, case.expected(), strict=True)):
        for name, value in want.items():
            assert_same(answer[name], as_served(value, None), f"silero[{i}].{name}")


def test_gzip_bodies_both_ways(served: Served) -> None:
    """HTTP: a gzip request body and a gzip answer, on string inputs; gRPC: gzip messages on a
    ZipMap classifier with string labels."""
    case = served.cases["strings"]
    labels = labels_of(served_config(served, "strings"))
    got = http_infer(
        served.gateway.http,
        "strings",
        case.requests[0],
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    ).outputs
    for name, value in case.expected()[0].items():
        assert_same(got[name], as_served(value, labels.get(name)), f"strings.{name}")
    case = served.cases["skl-zipmap-str"]
    labels = labels_of(served_config(served, "skl-zipmap-str"))
    got = grpc_infer(
        served.gateway.grpc, "skl-zipmap-str", case.requests[0], compression_algorithm="gzip"
    ).outputs
    for name, value in case.expected()[0].items():
        assert_same(got[name], as_served(value, labels.get(name)), f"skl-zipmap-str.{name}")


def served_config(served: Served, model: str) -> dict[str, Any]:
    with httpclient.InferenceServerClient(served.gateway.http) as client:
        config: dict[str, Any] = client.get_model_config(model)
    return config


def expected_classes(probabilities: Array, k: int, labels: list[Any] | None) -> list[list[bytes]]:
    """Per row, the k most probable columns (ties: the lower index), as Triton prints them:
    `value:index[:label]` with six decimals."""
    out = []
    for row in probabilities.tolist():
        ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        suffix = [f":{labels[i]}" if labels else "" for i in ranked]
        out.append([f"{row[i]:f}:{i}{s}".encode() for i, s in zip(ranked, suffix, strict=True)])
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("model", "output"), [("skl-zipmap-str", "output_probability"), ("xgboost", "probabilities")]
)
def test_class_count_ranks_the_probabilities(
    served: Served, model: str, output: str, transport: str
) -> None:
    case = served.cases[model]
    labels = labels_of(served_config(served, model)).get(output)
    want = as_served(case.expected()[0][output], labels)
    if transport == "http-binary":
        requested = httpclient.InferRequestedOutput(output, binary_data=True, class_count=2)
        with httpclient.InferenceServerClient(served.gateway.http) as client:
            result: Any = client.infer(model, http_inputs(case.requests[0]), outputs=[requested])
    else:
        requested = grpcclient.InferRequestedOutput(output, class_count=2)
        with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
            result = client.infer(model, grpc_inputs(case.requests[0]), outputs=[requested])
    got = result.as_numpy(output)
    assert got.tolist() == expected_classes(want, 2, labels)
    if labels:  # the labels name the classes onnxruntime's ZipMap ranks first
        maps = case.expected()[0][output]
        firsts = [max(row, key=row.get) for row in maps]
        assert [row[0].decode().split(":")[2] for row in got.tolist()] == firsts


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("model", "batch"), [("skl-zipmap-str", "4"), ("iris", "1")], ids=["zipmap", "no-batch-dim"]
)
def test_perf_analyzer_drives_a_compat_model(
    served: Served, model: str, batch: str, protocol: str
) -> None:
    """perf_analyzer reads the configuration (a ZipMap-derived FP32 output beside BYTES labels;
    a model without a batch dimension: max_batch_size 0) and sends its own random inputs."""
    url = served.gateway.http if protocol == "http" else served.gateway.grpc
    before = _stats(served, model, "http-binary")["success"]
    result = perf_analyzer(
        *("-m", model, "-u", url, "-i", protocol, "-b", batch, "--concurrency-range", "2"),
        *("--measurement-mode", "count_windows", "--measurement-request-count", "100"),
        *("--max-trials", "3", "--stability-percentage", "100000"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    assert throughput is not None and float(throughput.group(1)) > 0, output
    assert re.search(r"Server:\s+Inference count: \d+", output), output
    assert _stats(served, model, "http-binary")["success"] - before >= 100
