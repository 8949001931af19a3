"""The request path's only contact with the monitor: after each model run, the batch (inputs,
outputs, ids, routes, timings) is copied into the version's ring for the drain.

Which columns are monitored is decided once per version from its schema: every numeric input or
output whose rows flatten to at most `MAX_FEATURES` values becomes features named `input[3]`,
`probability`, ... (BYTES tensors and very wide tensors, such as images, are not profiled).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lockgate.monitor.ring import PredictionRing, RequestMeta, Slots
from lockgate.types import ModelSpec, TensorSpec

MAX_FEATURES = 256
Array = np.ndarray[Any, Any]


def _width(spec: TensorSpec) -> int | None:
    """Values per row of a batch-major tensor, or None when it cannot be profiled."""
    if spec.datatype == "BYTES" or not spec.shape or any(d < 0 for d in spec.shape[1:]):
        return None
    width = 1
    for d in spec.shape[1:]:
        width *= d
    return width


def feature_names(tensors: tuple[TensorSpec, ...]) -> tuple[Slots, list[str]]:
    """(monitored tensors with their feature columns, feature names) for the inputs or outputs
    of a schema."""
    chosen: Slots = []
    names: list[str] = []
    for t in tensors:
        width = _width(t)
        if width is None or len(names) + width > MAX_FEATURES:
            continue
        chosen.append((t.name, len(names), len(names) + width))
        names += [t.name] if width == 1 else [f"{t.name}[{i}]" for i in range(width)]
    return chosen, names


class VersionRecorder:
    """Owns one version's ring; `record` is called by its batcher on the event loop."""

    def __init__(self, spec: ModelSpec, capacity: int) -> None:
        self.spec = spec
        inputs, self.input_features = feature_names(spec.inputs)
        outputs, self.output_features = feature_names(spec.outputs)
        self.ring = PredictionRing(capacity, inputs, outputs)

    @property
    def input_tensors(self) -> list[str]:
        """The monitored input tensors, in feature-column order."""
        return [name for name, _, _ in self.ring.input_slots]

    @property
    def output_tensors(self) -> list[str]:
        return [name for name, _, _ in self.ring.output_slots]

    def meta(self, request_id: str, endpoint: str, variant: str, received_ns: int) -> RequestMeta:
        return (request_id, self.ring.route_code(endpoint, variant), received_ns)

    def record(
        self,
        feeds: dict[str, Array],
        outputs: dict[str, Array],
        metas: list[RequestMeta],
        rows: list[int],
        enqueued_ns: list[int],
        started_ns: int,
    ) -> None:
        times = (started_ns, time.perf_counter_ns(), time.time())
        self.ring.append(feeds, outputs, metas, rows, enqueued_ns, times)
