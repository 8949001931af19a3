"""Transport-neutral request/response types: what codecs produce and the pipeline consumes."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lockgate.errors import invalid

Parameters = dict[str, bool | int | float | str]


# Open Inference Protocol datatypes of numeric tensors, as numpy stores them (little-endian).
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for an OIP datatype; BYTES maps to object (elements are `bytes`)."""
    if datatype == "BYTES":
        return np.dtype(object)
    try:
        return NUMERIC_DTYPES[datatype]
    except KeyError:
        raise invalid(f"unsupported datatype {datatype!r}") from None


class RequestIds:
    """Ids for requests that bring none: a random per-process prefix and a counter, unique
    across processes and restarts, and ~10x cheaper than uuid4 on the request path."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._seq = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._seq):012x}"


new_request_id = RequestIds()


@dataclass(slots=True)
class Tensor:
    """A named tensor. `data` is a numpy array of the final shape; BYTES tensors use dtype object
    holding `bytes` elements."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape  # type: ignore[no-any-return]


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # HTTP binary extension: None means "use the request default"
    classification: int = 0  # Triton's classification extension: the top k classes, 0 = off


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str | None
    id: str
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    parameters: Parameters = field(default_factory=dict)
    deadline: float = float("inf")  # time.monotonic() value after which the answer is useless
    routing_key: str | None = None  # sticky routing (header x-lockgate-key); else a parameter
    protocol: str = "http"
    received_ns: int = 0  # time.perf_counter_ns() when the transport started on it
    alone: bool = False  # the transport hands requests over one at a time: see serve/batch.py
    client: str = ""  # the name of the caller's API key; "" when no keys are configured
    # The model spec the transport checked each input's name, datatype and shape against while
    # decoding: the data plane then checks again only what spans inputs (see validate_inputs).
    checked: ModelSpec | None = None


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[Tensor]
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the model declares it; -1 marks a dynamic dimension.
    `labels`: the class of each column of a class-probability output (from a ZipMap the
    registry removed), in column order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    labels: tuple[int | str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = "onnxruntime_onnx"
    # None: requests can be batched when every tensor declares a dynamic leading dim; the
    # runner sets it from the version's configuration and a run at load.
    batching: bool | None = field(default=None, compare=False)
    # Derived once, read per request:
    # requests can be concatenated on axis 0 (see `batching`);
    batchable: bool = field(init=False, repr=False, compare=False)
    # the (name, datatype) of every output, what a request that names none gets back;
    all_outputs: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    # inputs with a dynamic dimension after the first (images of any size): requests join a
    # batch only when these have the same shapes.
    ragged: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _inputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tensors = (*self.inputs, *self.outputs)
        derived = {
            "batchable": (
                all(t.shape and t.shape[0] == -1 for t in tensors)
                if self.batching is None
                else self.batching
            ),
            "all_outputs": tuple((o.name, o.datatype) for o in self.outputs),
            "ragged": tuple(t.name for t in self.inputs if -1 in t.shape[1:]),
            "_inputs": {t.name: t for t in self.inputs},
            "_outputs": {t.name: t for t in self.outputs},
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs.get(name)


@dataclass(frozen=True, slots=True)
class ServedConfig:
    """How a version is served, for Triton's model configuration."""

    spec: ModelSpec
    max_batch_rows: int  # 0: requests are not batched (the model has no dynamic batch dim)
    max_queue_delay_us: int
    instances: int  # sessions running the version at once


@dataclass(frozen=True, slots=True)
class VersionStats:
    """Cumulative figures of one loaded version since it was loaded, for Triton's statistics.
    Times are nanoseconds summed over requests, except `size_compute_ns` (over batches)."""

    name: str
    version: str
    requests: int  # answered successfully by the model
    failures: int  # refused or failed after they were routed to this version
    rows: int
    batches: int
    queue_ns: int
    compute_ns: int
    last_started_ns: int  # time.perf_counter_ns() of the last batch; 0 = none yet
    size_batches: dict[int, int]  # rows -> batches
    size_compute_ns: dict[int, int]  # rows -> compute time of those batches


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A registered version and whether it serves (Triton's repository index)."""

    name: str
    version: str
    state: str  # READY or UNAVAILABLE
    reason: str = ""


class RepositoryControl(Protocol):
    """Loading and unloading (pinning) versions from a data-plane listener: Triton's model
    repository extension. `actor` authenticates the caller and names it for the audit log."""

    def actor(self, authorization: str | None, client_host: str | None) -> str: ...
    async def load(self, model: str, version: str | None, actor: str) -> None: ...
    async def unload(self, model: str, version: str | None, actor: str) -> None: ...


class InferencePipeline(Protocol):
    """What a transport needs from the pipeline (lets transports be tested on their own)."""

    server_name: str
    server_version: str
    extensions: list[str]

    def admit(
        self, name: str, version: str | None, deadline: float | None = None
    ) -> ModelSpec | None: ...
    def release(self) -> None: ...
    async def infer(self, request: InferRequest) -> InferResponse: ...
    def model_spec(self, name: str, version: str | None) -> ModelSpec: ...
    def model_versions(self, name: str) -> list[str]: ...
    def model_ready(self, name: str, version: str | None) -> bool: ...
    def ready(self) -> bool: ...
    def count_failure(self, endpoint: str, protocol: str, outcome: str) -> None: ...
    async def feedback(
        self, endpoint: str, labels: list[tuple[str, float]], client: str = ""
    ) -> dict[str, int]: ...
    def served_config(self, name: str, version: str | None) -> ServedConfig: ...
    def statistics(self, name: str | None, version: str | None) -> list[VersionStats]: ...
    def repository_index(self) -> list[IndexEntry]: ...
