"""Triton's statistics extension through tritonclient (HTTP and gRPC) against a real gateway.
Requests sent one after another run one batch each, so every count and every batch size is
known exactly from what the test sent; times are checked for consistency, never for speed."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningGateway

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _http(gw: RunningGateway) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gw.http)


def _grpc(gw: RunningGateway) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gw.grpc)


def _entry(doc: dict[str, Any], name: str, version: str) -> dict[str, Any]:
    (entry,) = [s for s in doc["model_stats"] if (s["name"], s["version"]) == (name, version)]
    return entry


def _grpc_doc(gw: RunningGateway, name: str = "", version: str = "") -> dict[str, Any]:
    """The gRPC answer as the HTTP document (protobuf's JSON writes uint64 as strings)."""
    message = _grpc(gw).get_inference_statistics(name, version)
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(doc)


def _ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints(v) if k not in ("name", "version") else v for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return int(value) if isinstance(value, str) else value


def _infer(client: httpclient.InferenceServerClient, rows: int) -> None:
    x = np.ones((rows, 4), np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("scale", [inp])


def test_counts_durations_and_batch_sizes_follow_the_requests(gateway: RunningGateway) -> None:
    http = _http(gateway)
    before = _entry(http.get_inference_statistics("scale"), "scale", "1")
    wall_before = time.time_ns() // 1_000_000
    sizes = [1, 3, 3, 5]
    for rows in sizes:
        _infer(http, rows)
    # a request that reaches the version and fails there (an unknown output); one refused while
    # decoding (a wrong shape) never reaches a version and is counted by endpoint only
    good = httpclient.InferInput("x", [1, 4], "FP32")
    good.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="unknown output"):
        http.infer("scale", [good], outputs=[httpclient.InferRequestedOutput("nope")])
    wall_after = time.time_ns() // 1_000_000
    after = _entry(http.get_inference_statistics("scale"), "scale", "1")

    assert after["inference_count"] - before["inference_count"] == sum(sizes)
    assert after["execution_count"] - before["execution_count"] == len(sizes)
    stats, old = after["inference_stats"], before["inference_stats"]
    counts = {d: stats[d]["count"] - old[d]["count"] for d in DURATIONS}
    n = len(sizes)
    assert counts == {
        "success": n,
        "fail": 1,
        "queue": n,
        "compute_input": n,
        "compute_infer": n,
        "compute_output": n,
    }
    ns = {d: stats[d]["ns"] - old[d]["ns"] for d in DURATIONS}
    assert ns["compute_infer"] > 0 and ns["queue"] >= 0
    assert ns["success"] == ns["queue"] + ns["compute_infer"]
    assert wall_before - 1 <= after["last_inference"] <= wall_after + 1

    def by_size(entry: dict[str, Any]) -> dict[int, int]:
        return {b["batch_size"]: b["compute_infer"]["count"] for b in entry["batch_stats"]}

    grown = {k: v - by_size(before).get(k, 0) for k, v in by_size(after).items()}
    assert {k: v for k, v in grown.items() if v} == {1: 1, 3: 2, 5: 1}
    total = sum(b["compute_infer"]["ns"] for b in after["batch_stats"])
    assert total <= stats["compute_infer"]["ns"]  # per batch vs summed over requests


def test_grpc_reads_the_same_figures(gateway: RunningGateway) -> None:
    _infer(_http(gateway), 2)
    http = _entry(_http(gateway).get_inference_statistics("scale", "1"), "scale", "1")
    grpc = _entry(_grpc_doc(gateway, "scale", "1"), "scale", "1")
    for doc in (http, grpc):
        doc.pop("last_inference")  # wall-clock milliseconds, read at two moments
    assert grpc == http


def test_every_loaded_version_and_one_model_s_versions(gateway: RunningGateway) -> None:
    loaded = set(gateway.call(_loaded(gateway)))
    everything = _http(gateway).get_inference_statistics()
    assert {(s["name"], s["version"]) for s in everything["model_stats"]} == loaded
    assert {(s["name"], s["version"]) for s in _grpc_doc(gateway)["model_stats"]} == loaded
    classifier = _http(gateway).get_inference_statistics("classifier")
    assert {s["version"] for s in classifier["model_stats"]} == {
        v for m, v in loaded if m == "classifier"
    }


async def _loaded(gateway: RunningGateway) -> list[tuple[str, str]]:
    return list(gateway.dataplane.models.loaded)


def test_unknown_models_and_versions_are_not_found(gateway: RunningGateway) -> None:
    with pytest.raises(InferenceServerException, match="unknown model"):
        _http(gateway).get_inference_statistics("nope")
    with pytest.raises(InferenceServerException) as caught:
        _grpc(gateway).get_inference_statistics("scale", "9")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
