"""The compat models as a client sees them: each export registered under a name with the
requests to send, called through tritonclient over HTTP (binary tensor extension) or gRPC
against a real gateway, and the same requests run by onnxruntime directly on the exported file
(the independent expectation)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from tests.compat import exports

Array = np.ndarray[Any, Any]
Inputs = dict[str, Array]
TRANSPORTS = ("http-binary", "grpc")
LABELS_PREFIX = "labels:"  # model config parameter holding an output's class labels (JSON)


@dataclass
class Case:
    """One registered model and the requests sent to it, one after another. `state`: (output,
    input) carried from each answer into the next request, as a streaming client does."""

    name: str
    model: bytes
    requests: list[Inputs]
    state: tuple[str, str] | None = None
    warmup: Inputs | None = None
    # The synthetic warm-up runs the model (made-up strings are unknown categories to an encoder)
    synthetic_runs: bool = True

    @cached_property
    def session(self) -> ort.InferenceSession:
        return ort.InferenceSession(self.model, providers=["CPUExecutionProvider"])

    def expected(self) -> list[dict[str, Any]]:
        """onnxruntime's answers to every request, the state carried by its own answers."""
        return self.chain(self.run)

    def run(self, inputs: Inputs) -> dict[str, Any]:
        feeds = {n: a.astype(object) if a.dtype.kind in "SU" else a for n, a in inputs.items()}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def chain(self, call: Callable[[Inputs], dict[str, Any]]) -> list[dict[str, Any]]:
        """Send the requests in order through `call`, carrying the state as the case says."""
        answers: list[dict[str, Any]] = []
        for request in self.requests:
            inputs = dict(request)
            if self.state is not None and answers:
                output, state_input = self.state
                inputs[state_input] = np.asarray(answers[-1][output])
            answers.append(call(inputs))
        return answers

    def batched(self) -> bool:
        """The rule for cross-request batching: the exported graph gives every input and every
        tensor output a leading dynamic dimension (a ZipMap's sequence follows its rows), and a
        run at load, on the warm-up samples, showed the outputs following the rows. Without
        such a run (no samples, and made-up ones fail) requests run alone."""
        if self.warmup is None and not self.synthetic_runs:
            return False
        tensors = [*self.session.get_inputs(), *self.session.get_outputs()]
        return all(
            not t.type.startswith("tensor")
            or (len(t.shape) > 0 and not isinstance(t.shape[0], int))
            for t in tensors
        )


def build_cases() -> list[Case]:
    """Every export of the compat suite, with the requests that exercise it."""
    cases = []
    for name, zipmap, strings in (
        ("skl-zipmap", True, False),
        ("skl-zipmap-str", True, True),
        ("skl-plain", False, False),
    ):
        model, x = exports.skl_classifier(zipmap=zipmap, string_labels=strings)
        cases.append(Case(name, model, [{"X": x}, {"X": x[:1]}]))
    model, inputs = exports.skl_string_pipeline()
    cases.append(Case("strings", model, [inputs], warmup=inputs))
    bare = [inputs, {k: v[:2] for k, v in inputs.items()}]
    cases.append(Case("strings-bare", model, bare, synthetic_runs=False))
    model, x = exports.lightgbm_classifier()
    cases.append(Case("lightgbm", model, [{"input": x}, {"input": x[:1]}]))
    model, x = exports.xgboost_classifier()
    cases.append(Case("xgboost", model, [{"input": x}]))
    model, x = exports.skl_tree_regressor()
    cases.append(Case("forest", model, [{"X": x}]))
    model, images = exports.cnn_dynamic_sides()
    cases.append(Case("cnn", model, [{"image": image} for image in images]))
    model, x = exports.fp16_model()
    cases.append(Case("fp16", model, [{"x": x}]))
    model, inputs = exports.scalar_and_state_model()
    following = {"chunk": inputs["chunk"], "sr": np.array(8000, np.int64)}
    cases.append(Case("stream", model, [inputs, following], state=("stateN", "state")))
    model, chunks = exports.silero_vad()
    cases.append(Case("silero", model, chunks, state=("stateN", "state")))
    rng = np.random.default_rng(exports.RNG_SEED)
    iris = rng.uniform(0, 7, (3, 2)).astype(np.float32)
    cases.append(
        Case("iris", exports.onnxruntime_dataset("logreg_iris.onnx"), [{"float_input": iris}])
    )
    mul = rng.normal(size=(3, 2)).astype(np.float32)
    cases.append(Case("mul", exports.onnxruntime_dataset("mul_1.onnx"), [{"X": mul}]))
    cube = rng.normal(size=(3, 4, 5)).astype(np.float32)
    cases.append(Case("sigmoid", exports.onnxruntime_dataset("sigmoid.onnx"), [{"x": cube}]))
    return cases


# -- the wire ----------------------------------------------------------------------------------
@dataclass
class Answer:
    outputs: dict[str, Array]
    datatypes: dict[str, str]


def wire_array(array: Array) -> Array:
    """What tritonclient sends for strings: an object array of UTF-8 bytes."""
    if array.dtype.kind in "OSU":
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape)
    return array


def _datatype(array: Array) -> str:
    return "BYTES" if array.dtype.kind in "OSU" else str(np_to_triton_dtype(array.dtype))


def http_inputs(inputs: Inputs) -> list[httpclient.InferInput]:
    tensors = []
    for name, array in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(wire_array(array), binary_data=True)
        tensors.append(tensor)
    return tensors


def grpc_inputs(inputs: Inputs) -> list[grpcclient.InferInput]:
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(wire_array(array))
        tensors.append(tensor)
    return tensors


def http_infer(url: str, model: str, inputs: Inputs, **options: Any) -> Answer:
    """No outputs named: tritonclient asks for every output in binary."""
    with httpclient.InferenceServerClient(url) as client:
        result = client.infer(model, http_inputs(inputs), **options)
    response = result.get_response()
    names = [o["name"] for o in response["outputs"]]
    return Answer(
        {n: result.as_numpy(n) for n in names},
        {o["name"]: o["datatype"] for o in response["outputs"]},
    )


def grpc_infer(url: str, model: str, inputs: Inputs, **options: Any) -> Answer:
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, grpc_inputs(inputs), **options)
    response = result.get_response()
    return Answer(
        {o.name: result.as_numpy(o.name) for o in response.outputs},
        {o.name: o.datatype for o in response.outputs},
    )


def labels_of(config: dict[str, Any]) -> dict[str, list[Any]]:
    """The class labels a model configuration publishes, by output (HTTP's JSON document)."""
    params = config.get("parameters", {})
    return {
        key[len(LABELS_PREFIX) :]: json.loads(value["string_value"])
        for key, value in params.items()
        if key.startswith(LABELS_PREFIX)
    }


def as_served(want: Any, labels: list[Any] | None) -> Array:
    """onnxruntime's output as lockgate serves it: a ZipMap's maps as FP32 [N, classes] in the
    published label order; strings as UTF-8 bytes."""
    if isinstance(want, list):
        assert labels is not None, "a ZipMap output without published labels"
        return np.array([[row[c] for c in labels] for row in want], dtype=np.float32)
    if want.dtype.kind in "OU":
        return np.array([str(v).encode() for v in want.reshape(-1)], object).reshape(want.shape)
    return np.asarray(want)


def assert_same(got: Array, want: Array, name: str) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if want.dtype == object:
        assert got.tolist() == want.tolist(), name
    else:
        assert got.dtype == want.dtype, f"{name}: {got.dtype} != {want.dtype}"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
