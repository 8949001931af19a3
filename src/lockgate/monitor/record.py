"""The request path's only contact with the monitor: after each model run, the batch's inputs,
outputs, ids, routes and latencies go into the version's ring as one vectorised copy per column.

Which columns are monitored is decided once per version from its schema: every numeric input or
output whose rows flatten to at most `MAX_FEATURES` values becomes features named `input[3]`,
`probability`, ... (BYTES tensors and very wide tensors, such as images, are not profiled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.monitor.ring import PredictionRing, id_key
from lockgate.types import ModelSpec, TensorSpec

MAX_FEATURES = 256
Array = np.ndarray[Any, Any]


@dataclass(slots=True)
class RequestMeta:
    """What the pipeline attaches to a queued request for the monitor."""

    request_id: bytes
    route: int
    received_ns: int


def _width(spec: TensorSpec) -> int | None:
    """Values per row of a batch-major tensor, or None when it cannot be profiled."""
    if spec.datatype == "BYTES" or not spec.shape or any(d < 0 for d in spec.shape[1:]):
        return None
    width = 1
    for d in spec.shape[1:]:
        width *= d
    return width


def feature_names(tensors: tuple[TensorSpec, ...]) -> tuple[list[str], list[str]]:
    """(monitored tensor names, feature names) for the inputs or outputs of a schema."""
    chosen: list[str] = []
    names: list[str] = []
    for t in tensors:
        width = _width(t)
        if width is None or len(names) + width > MAX_FEATURES:
            continue
        chosen.append(t.name)
        names += [t.name] if width == 1 else [f"{t.name}[{i}]" for i in range(width)]
    return chosen, names


def _matrix(arrays: dict[str, Array], names: list[str], rows: int) -> Array:
    if not names:
        return np.zeros((rows, 0), np.float32)
    parts = [arrays[n].reshape(rows, -1) for n in names]
    if len(parts) == 1:
        return parts[0].astype(np.float32, copy=False)
    return np.hstack(parts).astype(np.float32, copy=False)


class VersionRecorder:
    """Owns one version's ring; `record` is called by its batcher on the event loop."""

    def __init__(self, spec: ModelSpec, capacity: int) -> None:
        self.spec = spec
        self.input_tensors, self.input_features = feature_names(spec.inputs)
        self.output_tensors, self.output_features = feature_names(spec.outputs)
        self.ring = PredictionRing(capacity, len(self.input_features), len(self.output_features))

    def meta(self, request_id: str, endpoint: str, variant: str, received_ns: int) -> RequestMeta:
        return RequestMeta(id_key(request_id), self.ring.route_code(endpoint, variant), received_ns)

    def record(
        self,
        feeds: dict[str, Array],
        outputs: dict[str, Array],
        metas: list[RequestMeta],
        rows: list[int],
        enqueued_ns: list[int],
        started_ns: int,
    ) -> None:
        total = sum(rows)
        done_ns = time.perf_counter_ns()
        counts = np.asarray(rows)
        if len(metas) == 1:
            m = metas[0]
            ids: Array = np.full(total, m.request_id, dtype="S32")
            route: Array | int = m.route
            latency: Array | float = (done_ns - m.received_ns) / 1e9
            queue: Array | float = (started_ns - enqueued_ns[0]) / 1e9
            first: Array | bool = np.arange(total) == 0
        else:
            ids = np.repeat(np.array([m.request_id for m in metas], dtype="S32"), counts)
            route = np.repeat(np.array([m.route for m in metas], dtype=np.int16), counts)
            received = np.array([m.received_ns for m in metas], dtype=np.int64)
            latency = np.repeat(((done_ns - received) / 1e9).astype(np.float32), counts)
            waited = started_ns - np.array(enqueued_ns, dtype=np.int64)
            queue = np.repeat((waited / 1e9).astype(np.float32), counts)
            first = np.zeros(total, np.bool_)
            first[np.cumsum(counts) - counts] = True
        self.ring.append(
            ts=time.time(),
            request_id=ids,
            route=route,
            inputs=_matrix(feeds, self.input_tensors, total),
            outputs=_matrix(outputs, self.output_tensors, total),
            latency=latency,
            queue=queue,
            first=first,
        )
