"""Every compat model behind one real gateway, called through tritonclient over HTTP (binary
tensor extension) and gRPC: the answers equal onnxruntime's on the exported file with the same
inputs (strings, ZipMap probabilities in the published label order, scalars, recurrent state,
declared shapes that differ from the returned ones, models without a batch dimension), and the
model metadata and configuration describe what is served."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format

from tests.compat.conftest import Served
from tests.compat.wire import (
    TRANSPORTS,
    Answer,
    as_served,
    assert_same,
    build_cases,
    grpc_infer,
    grpc_inputs,
    http_infer,
    labels_of,
)

CASES = [case.name for case in build_cases()]


def http_config(served: Served, model: str) -> dict[str, Any]:
    with httpclient.InferenceServerClient(served.gateway.http) as client:
        config: dict[str, Any] = client.get_model_config(model)
    return config


def grpc_config(served: Served, model: str) -> dict[str, Any]:
    """The protobuf message as tritonclient parses it, as a document with every field."""
    with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
        message = client.get_model_config(model).config
    config: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return config


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("model", CASES)
def test_answers_equal_onnxruntime(served: Served, model: str, transport: str) -> None:
    case = served.cases[model]
    labels = labels_of(http_config(served, model))
    with httpclient.InferenceServerClient(served.gateway.http) as client:
        metadata = client.get_model_metadata(model)
    declared = {o["name"]: o["datatype"] for o in metadata["outputs"]}

    def call(inputs: dict[str, Any]) -> dict[str, Any]:
        infer = http_infer if transport == "http-binary" else grpc_infer
        url = served.gateway.http if transport == "http-binary" else served.gateway.grpc
        answer: Answer = infer(url, model, inputs)
        assert answer.datatypes == declared  # every output, as the metadata declares it
        return answer.outputs

    got = case.chain(call)
    for i, (answer, want) in enumerate(zip(got, case.expected(), strict=True)):
        assert set(answer) == set(want), f"request {i}"
        for name, value in want.items():
            assert_same(answer[name], as_served(value, labels.get(name)), f"{model}[{i}].{name}")


@pytest.mark.parametrize("model", CASES)
def test_metadata_and_config_describe_the_served_model(served: Served, model: str) -> None:
    case = served.cases[model]
    with httpclient.InferenceServerClient(served.gateway.http) as client:
        http_meta = client.get_model_metadata(model)
    with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
        grpc_meta = client.get_model_metadata(model, as_json=True)
    for meta in (http_meta, grpc_meta):
        assert meta["name"] == model and meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert [i["name"] for i in meta["inputs"]] == [i.name for i in case.session.get_inputs()]
        assert [o["name"] for o in meta["outputs"]] == [o.name for o in case.session.get_outputs()]
    assert [[int(d) for d in t.get("shape", [])] for t in grpc_meta["inputs"]] == [
        t["shape"] for t in http_meta["inputs"]
    ]
    config = http_config(served, model)
    assert _within(_ints(config), _ints(grpc_config(served, model)))  # same, both transports
    batched = case.batched()
    assert (config["max_batch_size"] > 0) == batched
    for tensors, meta in (
        (config["input"], http_meta["inputs"]),
        (config["output"], http_meta["outputs"]),
    ):
        for tensor, described in zip(tensors, meta, strict=True):
            assert tensor["name"] == described["name"]
            assert tensor["data_type"] == "TYPE_" + {"BYTES": "STRING"}.get(
                described["datatype"], described["datatype"]
            )
            shape = described["shape"][1:] if batched else described["shape"]
            assert [int(d) for d in tensor["dims"]] == shape
    zipmaps = [o.name for o in case.session.get_outputs() if o.type.startswith("seq(map")]
    labels = labels_of(config)
    assert sorted(labels) == sorted(zipmaps)
    for name in zipmaps:  # the classifier's classes, each once
        (maps,) = [v for k, v in case.run(case.requests[0]).items() if k == name]
        assert sorted(map(str, labels[name])) == sorted(map(str, maps[0]))


def _within(doc: Any, message: Any) -> bool:
    """Every field of the HTTP document has the same value in the gRPC message (which, parsed
    with Triton's full model_config.proto, also shows the fields lockgate leaves unset)."""
    if isinstance(doc, dict):
        return all(k in message and _within(v, message[k]) for k, v in doc.items())
    if isinstance(doc, list):
        return len(doc) == len(message) and all(map(_within, doc, message))
    return bool(doc == message)


def _ints(doc: Any) -> Any:
    """Protobuf's JSON writes 64-bit integers as strings: compare them as numbers."""
    if isinstance(doc, dict):
        return {k: _ints(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ints(v) for v in doc]
    if isinstance(doc, str) and doc.lstrip("-").isdigit():
        return int(doc)
    return doc


def test_class_labels_are_in_the_config_of_zipmap_models_only(served: Served) -> None:
    config = grpc_config(served, "skl-zipmap-str")
    assert set(labels_of(config)["output_probability"]) == {"low", "mid", "high"}
    assert set(labels_of(grpc_config(served, "skl-zipmap"))["output_probability"]) == {0, 1, 2}
    assert labels_of(grpc_config(served, "skl-plain")) == {}


def test_concurrent_images_of_different_sizes(served: Served) -> None:
    """Requests in flight together on a model with dynamic height and width: whichever of
    them the gateway gathers, each gets its own image's answer."""
    case = served.cases["cnn"]
    rng = np.random.default_rng(11)
    sides = [(5, 4), (9, 13), (7, 7), (5, 4)] * 8
    images = [
        rng.normal(size=(1 + i % 2, 1, h, w)).astype(np.float32) for i, (h, w) in enumerate(sides)
    ]
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    with grpcclient.InferenceServerClient(served.gateway.grpc) as client:
        for i, image in enumerate(images):
            client.async_infer(
                "cnn",
                grpc_inputs({"image": image}),
                callback=lambda result, error, i=i: answers.put((i, result, error)),
                client_timeout=60,
            )
        got = [answers.get(timeout=90) for _ in images]
    for i, result, error in got:
        assert error is None, error
        want = case.run({"image": images[i]})["features"]
        assert_same(result.as_numpy("features"), want, f"cnn[{i}]")
