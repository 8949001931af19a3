"""gRPC ModelStreamInfer through tritonclient's start_stream / async_stream_infer against a real
gateway: every request is answered, in order, with the model's output; a failing request is
answered with its error message and the stream goes on."""

from __future__ import annotations

import queue
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lockgate._proto import grpc_service_pb2 as pb
from tests.conftest import RunningGateway

Answer = tuple[Any, InferenceServerException | None]


def _stream(
    gateway: RunningGateway, send: list[tuple[str, np.ndarray[Any, Any], str]]
) -> list[Answer]:
    """Send (model, x, id) requests on one stream; the answers in the order they came."""
    answers: queue.Queue[Answer] = queue.Queue()
    client = grpcclient.InferenceServerClient(gateway.grpc)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for model, x, request_id in send:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer(model, [inp], request_id=request_id)
    client.stop_stream()  # closes the request side, waits for every answer
    client.close()
    return [answers.get_nowait() for _ in range(answers.qsize())]


def test_stream_answers_every_request_in_order(gateway: RunningGateway) -> None:
    rng = np.random.default_rng(3)
    send = [
        ("scale", rng.standard_normal((i % 5 + 1, 4)).astype(np.float32), f"s{i}")
        for i in range(40)
    ]
    answers = _stream(gateway, send)
    assert [e for _, e in answers] == [None] * len(send)
    assert [r.get_response().id for r, _ in answers] == [request_id for _, _, request_id in send]
    for (result, _), (_, x, _) in zip(answers, send, strict=True):
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


def test_a_failing_request_is_answered_in_the_stream(gateway: RunningGateway) -> None:
    ok = np.ones((2, 4), np.float32)
    send = [
        ("scale", ok, "first"),
        ("nope", ok, "unknown"),
        ("scale", np.ones((2, 3), np.float32), "bad-shape"),
        ("scale", 3 * ok, "last"),
    ]
    answers = _stream(gateway, send)
    assert len(answers) == 4
    (first, e1), (_, e2), (_, e3), (last, e4) = answers
    assert e1 is None and e4 is None
    assert e2 is not None and "unknown model 'nope'" in e2.message()
    assert e3 is not None and "shape [2, 3]" in e3.message()
    assert first.get_response().id == "first" and last.get_response().id == "last"
    np.testing.assert_array_equal(last.as_numpy("y"), 6 * ok)


def test_a_malformed_message_is_answered_and_the_stream_goes_on(gateway: RunningGateway) -> None:
    """Raw bytes on the stream method: what no generated client would send."""
    good = pb.ModelInferRequest(model_name="scale", id="after")
    tensor = good.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    with grpc.insecure_channel(gateway.grpc) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=None,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = list(call(iter([b"\xff\xff garbage", good.SerializeToString()]), timeout=30))
    assert len(answers) == 2
    assert "malformed ModelInferRequest" in answers[0].error_message
    assert answers[1].error_message == "" and answers[1].infer_response.id == "after"
    raw = answers[1].infer_response.raw_output_contents[0]
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32), [2, 4, 6, 8])
