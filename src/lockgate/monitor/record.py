"""The request path's only contact with the monitor: after each model run, the batch (inputs,
outputs, ids, routes, timings) is copied into the version's ring for the drain.

Which columns are monitored is decided once per version, at load, from its schema and what the
model returned in a run at load (:mod:`lockgate.monitor.layout`): every numeric input or output
with a fixed number of values per monitored row, at most `MAX_FEATURES` in all, becomes
features named `input[3]`, `probability`, ...; wider inputs and string inputs become derived
features named `image:mean`, `image:proj3`, `text:length`, ... (:mod:`lockgate.monitor.derived`),
computed by `derive` in the model thread right after the run (the batcher calls it there: an
image's summary costs more than the event loop can spare per request), and copied into the ring
by `record` with the rest. Tensors that cannot be followed are named in one warning and counted
(`lockgate_monitor_unfollowed_tensors`), never an error per batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from lockgate.monitor.derived import CURRENT_DERIVATION, Derivation
from lockgate.monitor.layout import (
    MAX_FEATURES,
    RowLayout,
    declared_layout,
    feature_names,
    monitored,
)
from lockgate.monitor.ring import PredictionRing, RequestMeta
from lockgate.types import ModelSpec

__all__ = ["MAX_FEATURES", "VersionRecorder", "feature_names"]

log = logging.getLogger(__name__)
Array = np.ndarray[Any, Any]


class VersionRecorder:
    """Owns one version's ring, and is its batcher's observer: `derive` is called in the model
    thread after each run, `record` on the event loop."""

    def __init__(
        self,
        spec: ModelSpec,
        capacity: int,
        layout: RowLayout | None = None,
        derivation: Derivation = CURRENT_DERIVATION,
        shared: bool = False,
    ) -> None:
        """`derivation`: how wide inputs are summarised, as their reference profile was;
        `shared`: the ring's matrices in memory the monitor process maps."""
        self.spec = spec
        self.layout = layout if layout is not None else declared_layout(spec)
        inputs = monitored(spec.inputs, self.layout, derivation)
        self.input_features = inputs.names
        outputs, self.output_features, skipped_out = feature_names(spec.outputs, self.layout)
        self.unfollowed = [*inputs.skipped, *skipped_out]  # tensors the monitor leaves out, and why
        if self.unfollowed:
            log.warning(
                "%s v%s: the monitor does not follow %s",
                spec.name,
                spec.version,
                "; ".join(self.unfollowed),
            )
        self.ring = PredictionRing(capacity, inputs.slots, outputs, inputs.summaries, shared)
        for summary, _, _ in inputs.summaries:
            if summary.kind == "wide":  # drawn now, not by concurrent model threads
                _ = summary.projection
        # Per row, a run's rows are the leading dim of this input: a version that runs each
        # request alone is told one row per request by the batcher.
        self._rows_from = self.layout.rows_from if self.layout.per_row else None

    @property
    def input_tensors(self) -> list[str]:
        """The input tensors followed value by value, in feature-column order."""
        return [name for name, _, _ in self.ring.input_slots]

    @property
    def output_tensors(self) -> list[str]:
        return [name for name, _, _ in self.ring.output_slots]

    def meta(
        self, request_id: str, endpoint: str, variant: str, received_ns: int, client: str = ""
    ) -> RequestMeta:
        route, client_code = self.ring.codes(endpoint, variant, client)
        return (request_id, route, received_ns, client_code)

    def derive(self, feeds: dict[str, Array], rows: list[int]) -> list[Array | None]:
        """The summarised inputs' columns of a run whose requests had `rows` rows (in the
        model thread; `record` copies them in). None for a tensor of an unexpected size."""
        if not self.ring.summaries:
            return []
        total = sum(self._monitored_rows(feeds, rows))
        return self.ring.derive(feeds, total) if total else []

    def record(
        self,
        feeds: dict[str, Array],
        outputs: dict[str, Array],
        metas: list[RequestMeta],
        rows: list[int],
        enqueued_ns: list[int],
        started_ns: int,
        derived: list[Array | None] | None = None,
    ) -> None:
        """On the event loop: copy a run into the ring; `derived`: `derive` of this run, or
        None to derive it here (a run made on the loop)."""
        times = (started_ns, time.perf_counter_ns(), time.time())
        monitored = self._monitored_rows(feeds, rows)
        self.ring.append(feeds, outputs, metas, monitored, enqueued_ns, times, derived)

    def _monitored_rows(self, feeds: dict[str, Array], rows: list[int]) -> list[int]:
        """Monitored rows per request, from the batcher's (a request's rows, or 1 for a
        version that runs each request alone)."""
        if self._rows_from is None:
            return [1] * len(rows)  # one monitored row per request
        if len(rows) == 1:
            return [int(feeds[self._rows_from].shape[0])]
        return rows
