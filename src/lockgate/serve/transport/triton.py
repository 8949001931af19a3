"""Triton's protocol extensions as transport-neutral documents: model configuration, statistics,
the repository index (JSON shaped as Triton's HTTP API answers, with the field names of its
protobuf messages, so the gRPC transport parses the same documents into messages), and the
classification extension (top-k classes of an output as `"score:index[:label]"` strings).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from lockgate.errors import invalid
from lockgate.types import (
    IndexEntry,
    InferencePipeline,
    InferRequest,
    InferResponse,
    Parameters,
    ServedConfig,
    Tensor,
    TensorSpec,
    VersionStats,
)

BACKEND = "onnxruntime"
# The model configuration's `parameters` key that carries an output's class labels (a ZipMap's
# classes, in column order) as a JSON list; Triton would name a label file instead, which a
# client cannot read over the protocol.
LABELS_PARAMETER = "labels:"
MODEL_FILE = "model.onnx"
# model_config.proto's DataType for each Open Inference Protocol datatype.
DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
# The types Triton ranks for classification (its TopkClassifications), and how it prints their
# values: std::to_string, i.e. "%f" for floating point and plain digits for integers.
_CLASS_FORMATS = {
    **{t: "%d" for t in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32")},
    "INT64": "%d",
    "FP32": "%f",
    "FP64": "%f",
}


# -- model configuration --------------------------------------------------------------------
def config_doc(name: str, served: ServedConfig) -> dict[str, Any]:
    """Triton's model configuration of the version serving `name`. With a batch dimension,
    `max_batch_size` is the batcher's limit in rows and dims leave the batch dimension out."""
    spec = served.spec
    batched = served.max_batch_rows > 0
    doc: dict[str, Any] = {
        "name": name,
        "platform": spec.platform,
        "backend": BACKEND,
        "max_batch_size": served.max_batch_rows,
        "input": [
            {
                "name": t.name,
                "data_type": DATA_TYPES[t.datatype],
                "format": "FORMAT_NONE",
                "dims": _dims(t, batched),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for t in spec.inputs
        ],
        "output": [
            {
                "name": t.name,
                "data_type": DATA_TYPES[t.datatype],
                "dims": _dims(t, batched),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for t in spec.outputs
        ],
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_CPU",
                "count": served.instances,
                "gpus": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
            }
        ],
        "default_model_filename": MODEL_FILE,
        "model_transaction_policy": {"decoupled": False},
    }
    labels = {
        f"{LABELS_PARAMETER}{t.name}": {"string_value": orjson.dumps(list(t.labels)).decode()}
        for t in spec.outputs
        if t.labels
    }
    if labels:
        doc["parameters"] = labels
    if batched:
        doc["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": served.max_queue_delay_us,
            "preserve_ordering": False,
            "priority_levels": 0,
            "default_priority_level": 0,
        }
    return doc


def _dims(tensor: TensorSpec, batched: bool) -> list[int]:
    return list(tensor.shape[1:] if batched else tensor.shape)


# -- statistics -------------------------------------------------------------------------------
def statistics_doc(stats: list[VersionStats]) -> dict[str, Any]:
    """Triton's statistics for loaded versions. lockgate times a request's wait for its batch
    (queue) and its batch's model run (compute_infer, which includes the copies into and out of
    the run); input and output preparation are not timed apart, so their durations are 0.
    Failed requests are counted, not timed."""
    wall_ms, now_ns = time.time_ns() // 1_000_000, time.perf_counter_ns()
    return {"model_stats": [_version_doc(s, wall_ms, now_ns) for s in stats]}


def _version_doc(s: VersionStats, wall_ms: int, now_ns: int) -> dict[str, Any]:
    last = wall_ms - (now_ns - s.last_started_ns) // 1_000_000 if s.last_started_ns else 0
    done = s.requests
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": max(last, 0),
        "inference_count": s.rows,
        "execution_count": s.batches,
        "inference_stats": {
            "success": _duration(done, s.queue_ns + s.compute_ns),
            "fail": _duration(s.failures, 0),
            "queue": _duration(done, s.queue_ns),
            "compute_input": _duration(done, 0),
            "compute_infer": _duration(done, s.compute_ns),
            "compute_output": _duration(done, 0),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(count, 0),
                "compute_infer": _duration(count, s.size_compute_ns.get(size, 0)),
                "compute_output": _duration(count, 0),
            }
            for size, count in sorted(s.size_batches.items())
        ],
        "memory_usage": [],
    }


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


# -- repository -------------------------------------------------------------------------------
def index_doc(entries: list[IndexEntry], ready_only: bool) -> list[dict[str, str]]:
    """Triton's repository index: a reason only where there is one."""
    out = []
    for e in entries:
        if ready_only and e.state != "READY":
            continue
        doc = {"name": e.name, "version": e.version, "state": e.state}
        if e.reason:
            doc["reason"] = e.reason
        out.append(doc)
    return out


def load_version(parameters: Parameters) -> str | None:
    """The version a load names (lockgate's `version` parameter), else None: the latest.
    Triton's configuration overrides and model files have no meaning here: versions come from
    the registry, as registered."""
    for key in parameters:
        if key == "config" or key.startswith("file:"):
            raise invalid(
                f"load parameter {key!r} is not supported: lockgate serves registered versions "
                "as registered (register a new version instead)"
            )
    version = parameters.get("version")
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int | str) or not str(version):
        raise invalid(f"load parameter 'version' must be a version number, got {version!r}")
    return str(version)


# -- classification ---------------------------------------------------------------------------
def classify(pipeline: InferencePipeline, request: InferRequest, response: InferResponse) -> None:
    """Replace each output the request asked classes of by its top k, as Triton does."""
    wanted = {o.name: o.classification for o in request.outputs or () if o.classification}
    if not wanted:
        return
    model = response.parameters.get("model", response.model)
    spec = pipeline.model_spec(str(model), response.version)
    for i, tensor in enumerate(response.outputs):
        k = wanted.get(tensor.name)
        if k:
            labels = getattr(spec.output(tensor.name), "labels", None)
            classes = top_k(tensor.data, k, tensor.datatype, spec.batchable, labels)
            response.outputs[i] = Tensor(tensor.name, "BYTES", classes)


def top_k(
    data: np.ndarray[Any, Any],
    k: int,
    datatype: str,
    batched: bool,
    labels: tuple[str, ...] | list[str] | None = None,
) -> np.ndarray[Any, Any]:
    """The k largest values of each batch entry (of the whole tensor without a batch
    dimension), largest first and ties by the lower index, as `b"value:index"` or, where the
    index has a label, `b"value:index:label"`. Shape [N, min(k, entry size)] or [min(k, size)]."""
    fmt = _CLASS_FORMATS.get(datatype)
    if fmt is None:
        raise invalid(f"class result not available for output due to unsupported type '{datatype}'")
    rows = data.reshape(data.shape[0], -1) if batched and data.ndim else data.reshape(1, -1)
    n = rows.shape[1]
    count = min(k, n)
    # Stable ascending order of the reversed row, read backwards: descending values, and
    # equal values by ascending index, for every dtype (no negation of unsigned values).
    order = np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :count]
    index = (n - 1) - order
    values = np.take_along_axis(rows, index, axis=1)
    text = np.char.add(np.char.add(np.char.mod(fmt, values), ":"), index.astype(np.str_))
    if labels:
        names = np.asarray([*labels, ""], dtype=np.str_)
        label = names[np.minimum(index, len(labels))]
        text = np.char.add(text, np.char.add(np.where(label == "", "", ":"), label))
    out = np.char.encode(text, "utf-8").astype(object)
    return out if batched and data.ndim else out.reshape(count)
