"""Data-plane API keys on a real gateway: HTTP (the bare infer route and the starlette routes),
gRPC over a real channel, the stock tritonclient with its `headers`, the per-client counter on
/metrics, and the key's name in the prediction log and the label store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import grpc_service_pb2_grpc as pb_grpc
from lockgate.control.registry import Registry
from lockgate.demo import ensure_demo_models
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

APP = "app-key-0123456789abcdef"  # scope infer
LABELLER = "labeller-key-0123456789"  # scope feedback
OPS = "ops-key-0123456789abcdef"  # scope all
KEYS = (("app", APP, "infer"), ("labeller", LABELLER, "feedback"), ("ops", OPS, "all"))
ROW = [0.25] * 16


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def infer_doc(request_id: str, row: list[float] = ROW) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": row}],
    }


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("keyed-home")
    ensure_demo_models(Registry(home))
    with RunningGateway(loopback_config(home, client_keys=KEYS), Registry(home)) as gw:
        yield gw


@pytest.fixture
def http(keyed: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{keyed.http}", timeout=30) as client:
        yield client


def client_counts(gw: RunningGateway) -> dict[str, float]:
    text = httpx.get(f"http://{gw.admin}/metrics", timeout=30).text
    return {
        s.labels["client"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "lockgate_client_requests_total"
    }


def assert_unauthenticated(r: httpx.Response, message: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]


def test_infer_needs_a_key_of_the_infer_scope(http: httpx.Client) -> None:
    path = "/v2/models/classifier/infer"
    assert_unauthenticated(http.post(path, json=infer_doc("a")), "an API key is required")
    wrong = http.post(path, json=infer_doc("b"), headers=bearer("not-a-key-0123456789abc"))
    assert_unauthenticated(wrong, "invalid API key")
    for malformed in (f"Basic {APP}", "Bearer", f"Bearer{APP}", APP):
        r = http.post(path, json=infer_doc("c"), headers={"authorization": malformed})
        assert_unauthenticated(r, "malformed Authorization header")
        assert APP not in r.text  # the presented key is never echoed
    forbidden = http.post(path, json=infer_doc("d"), headers=bearer(LABELLER))
    assert forbidden.status_code == 403
    assert "'labeller'" in forbidden.json()["error"] and "'infer'" in forbidden.json()["error"]
    for key in (APP, OPS):
        ok = http.post(path, json=infer_doc("e"), headers=bearer(key))
        assert ok.status_code == 200, ok.text
        assert {o["name"] for o in ok.json()["outputs"]} >= {"label"}
    # the scheme is case-insensitive, as RFC 9110 says
    ok = http.post(path, json=infer_doc("f"), headers={"authorization": f"bearer {APP}"})
    assert ok.status_code == 200


def test_feedback_needs_a_key_of_the_feedback_scope(http: httpx.Client) -> None:
    path = "/v2/models/classifier/feedback"
    labels = {"labels": [{"id": "nobody", "label": 1}]}
    assert_unauthenticated(http.post(path, json=labels), "an API key is required")
    forbidden = http.post(path, json=labels, headers=bearer(APP))
    assert forbidden.status_code == 403 and "'feedback'" in forbidden.json()["error"]
    for key in (LABELLER, OPS):
        ok = http.post(path, json=labels, headers=bearer(key))
        assert ok.status_code == 200 and ok.json()["accepted"] == 1


def test_model_reads_need_any_key_and_health_stays_open(
    keyed: RunningGateway, http: httpx.Client
) -> None:
    reads = [
        ("GET", "/v2/models/classifier"),
        ("GET", "/v2/models/classifier/versions/2"),
        ("GET", "/v2/models/classifier/config"),
        ("GET", "/v2/models/classifier/stats"),
        ("GET", "/v2/models/stats"),
        ("POST", "/v2/repository/index"),
    ]
    for method, path in reads:
        assert_unauthenticated(http.request(method, path), "an API key is required")
        for key in (APP, LABELLER, OPS):  # reading is part of every scope
            r = http.request(method, path, headers=bearer(key))
            assert r.status_code == 200, (path, r.text)
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/classifier/ready"):
        assert http.get(path).status_code == 200, path
    assert httpx.get(f"http://{keyed.admin}/metrics", timeout=30).status_code == 200


def test_grpc_refuses_missing_and_wrong_keys_over_a_real_channel(keyed: RunningGateway) -> None:
    with grpc.insecure_channel(keyed.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # open
        assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "lockgate"
        assert stub.ModelReady(pb.ModelReadyRequest(name="classifier")).ready
        request = pb.ModelInferRequest(model_name="classifier")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend(ROW)
        cases = [
            ((), grpc.StatusCode.UNAUTHENTICATED, "an API key is required"),
            (
                (("authorization", "Bearer wrong-key-0123456789ab"),),
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid API key",
            ),
            ((("authorization", f"Token {APP}"),), grpc.StatusCode.UNAUTHENTICATED, "malformed"),
            (
                (("authorization", f"Bearer {LABELLER}"),),
                grpc.StatusCode.PERMISSION_DENIED,
                "'infer'",
            ),
        ]
        for metadata, code, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata)
            assert info.value.code() == code and message in info.value.details()
            if code is grpc.StatusCode.UNAUTHENTICATED:  # the model reads too
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelMetadata(
                        pb.ModelMetadataRequest(name="classifier"), metadata=metadata
                    )
                assert info.value.code() == code
        reader = (("authorization", f"Bearer {LABELLER}"),)  # any scope may read
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="classifier"), metadata=reader)
        answer = stub.ModelInfer(request, metadata=(("authorization", f"Bearer {APP}"),))
        assert answer.model_version == "2"
        # a stream is authenticated once, when it opens
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([request])))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        streamed = list(
            stub.ModelStreamInfer(iter([request]), metadata=(("authorization", f"Bearer {OPS}"),))
        )
        assert len(streamed) == 1 and not streamed[0].error_message


def test_tritonclient_http_and_grpc_with_a_key(keyed: RunningGateway) -> None:
    rows = np.array([ROW], np.float32)

    def headers(name: str = "Authorization") -> dict[str, str]:
        """Fresh each call: tritonclient's HTTP client adds its own headers to the dict."""
        return {name: f"Bearer {APP}"}

    http_client = httpclient.InferenceServerClient(keyed.http)
    assert http_client.is_server_live()  # no key needed
    with pytest.raises(InferenceServerException) as info:
        http_client.get_model_metadata("classifier")
    assert "an API key is required" in str(info.value)
    assert http_client.get_model_metadata("classifier", headers=headers())["name"] == "classifier"
    inp = httpclient.InferInput("input", [1, 16], "FP32")
    inp.set_data_from_numpy(rows, binary_data=True)
    http_result = http_client.infer("classifier", [inp], headers=headers())

    grpc_client = grpcclient.InferenceServerClient(keyed.grpc)
    assert grpc_client.is_server_live()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_model_metadata("classifier")
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    # gRPC metadata keys are lowercase: grpcio itself refuses 'Authorization'
    with pytest.raises(InferenceServerException, match="Invalid metadata"):
        grpc_client.get_model_metadata("classifier", headers=headers())
    meta = grpc_client.get_model_metadata("classifier", headers=headers("authorization"))
    assert meta.name == "classifier"
    ginp = grpcclient.InferInput("input", [1, 16], "FP32")
    ginp.set_data_from_numpy(rows)
    grpc_result = grpc_client.infer("classifier", [ginp], headers=headers("authorization"))
    np.testing.assert_array_equal(http_result.as_numpy("label"), grpc_result.as_numpy("label"))
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("classifier", [ginp], headers={"authorization": f"Bearer {LABELLER}"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"


def test_each_client_is_counted_by_name(keyed: RunningGateway, http: httpx.Client) -> None:
    before = client_counts(keyed)
    assert set(before) == {"app", "labeller", "ops"}  # present from the start, bounded
    for i in range(3):
        http.post("/v2/models/classifier/infer", json=infer_doc(f"n{i}"), headers=bearer(APP))
    http.get("/v2/models/classifier", headers=bearer(LABELLER))
    http.post("/v2/models/classifier/infer", json=infer_doc("x"))  # refused: not counted
    http.post("/v2/models/classifier/infer", json=infer_doc("y"), headers=bearer(LABELLER))
    after = client_counts(keyed)
    assert after["app"] - before["app"] == 3
    assert after["labeller"] - before["labeller"] == 1
    assert after["ops"] == before["ops"]


def test_the_client_is_logged_with_each_prediction_and_label(
    keyed: RunningGateway, http: httpx.Client
) -> None:
    home = keyed.config.home
    start = time.time()
    for key, rid in ((APP, "log-app"), (OPS, "log-ops")):
        r = http.post("/v2/models/classifier/infer", json=infer_doc(rid), headers=bearer(key))
        assert r.status_code == 200
    labels = {"labels": [{"id": "log-app", "label": 1}, {"id": "log-ops", "label": 0}]}
    assert http.post("/v2/models/classifier/feedback", json=labels).status_code == 401
    r = http.post("/v2/models/classifier/feedback", json=labels, headers=bearer(LABELLER))
    assert r.json() == {"accepted": 2, "matched": 2, "unknown": 0}

    def logged() -> dict[bytes, bytes]:
        cols = PredictionLog(home / "predlog").read_predictions("classifier", "2", start)
        return dict(zip(cols.get("request_id", []), cols.get("client", []), strict=True))

    clients = wait_until(lambda: len(logged()) >= 2 and logged(), "the predictions on disk")
    assert clients[b"log-app"] == b"app" and clients[b"log-ops"] == b"ops"

    def stored() -> dict[bytes, bytes]:
        cols = FeedbackLog(home / "feedback").read_labels(start)
        return dict(zip(cols.get("request_id", []), cols.get("source", []), strict=True))

    sources = wait_until(lambda: len(stored()) >= 2 and stored(), "the labels on disk")
    assert sources == {b"log-app": b"labeller", b"log-ops": b"labeller"}
