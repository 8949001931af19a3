"""One onnxruntime session per loaded model version: load, verify, warm up, run a batch.

The runner keeps a small cost model (fixed cost per call + cost per row, from the fastest of
several warm-up runs) so the batcher can run tiny batches inline on the event loop instead of
paying a thread hand-off that costs more than the model itself. Live timings are not fed back:
they include GIL waits and hand-offs, which would ratchet tiny models off the loop for good.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lockgate.config import RunnerConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.transport.tensors import numpy_dtype
from lockgate.types import ModelSpec, TensorSpec

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]


def session_options(config: RunnerConfig) -> ort.SessionOptions:
    """Explicit onnxruntime options: `config`'s thread counts, sequential execution (the batcher
    already overlaps requests), every graph optimisation, warnings and errors only."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class ModelRunner:
    """Owns the session of one model version. `run` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, spec: ModelSpec, model_path: Path, config: RunnerConfig) -> None:
        self.spec = spec
        self.path = model_path
        self.config = config
        self._session: ort.InferenceSession | None = None
        self._call: Any = None  # what `run` calls: see `load`
        self._output_names = [o.name for o in spec.outputs]
        self._string_inputs = {i.name for i in spec.inputs if i.datatype == "BYTES"}
        # One RunOptions for every call: without it onnxruntime builds a default one per call,
        # which measured 10% of a call on a small model (36.7 vs 40.7 us cache-cold).
        self._run_options = ort.RunOptions()
        self.fixed_cost = 0.0  # seconds per call, independent of rows
        self.row_cost = 0.0  # seconds per row

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        """Create the session, check it matches the registered schema, warm it up. Blocking."""
        try:
            session = ort.InferenceSession(
                str(self.path),
                sess_options=session_options(self.config),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LockgateError(
                ErrorKind.UNAVAILABLE, f"model {self.spec.name} v{self.spec.version}: {exc}"
            ) from exc
        self._check_schema(session)
        self._session = session
        # The public `run` re-checks the feed's names on every call (pybind property reads
        # per input), which the pipeline has already done against the schema: ~5 us of a
        # ~30 us cache-cold call on a small model. The binding underneath is the same call
        # without them; the public one stays as the fallback should it ever move.
        self._call = getattr(session, "_sess", session)
        self._warm_up()

    def _check_schema(self, session: ort.InferenceSession) -> None:
        got = {i.name for i in session.get_inputs()}
        want = {i.name for i in self.spec.inputs}
        if got != want:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"model {self.spec.name} v{self.spec.version}: session inputs {sorted(got)} "
                f"differ from the registered schema {sorted(want)}",
            )

    def _warm_up(self) -> None:
        """Run batch sizes 1 and 8 to fit the cost model (and trigger lazy allocations)."""
        timings: dict[int, float] = {}
        for rows in (1, 8) if self.spec.batchable else (1,):
            feeds = {t.name: _zeros(t, rows) for t in self.spec.inputs}
            best = float("inf")
            for _ in range(max(1, self.config.warmup_runs)):
                start = time.perf_counter()
                self.run(feeds)
                best = min(best, time.perf_counter() - start)
            timings[rows] = best
        if 8 in timings:
            self.row_cost = max(0.0, (timings[8] - timings[1]) / 7)
        self.fixed_cost = max(0.0, timings[1] - self.row_cost)

    def predicted_cost(self, rows: int) -> float:
        return self.fixed_cost + self.row_cost * rows

    def run(self, feeds: Arrays) -> Arrays:
        call = self._call
        if call is None:
            raise LockgateError(ErrorKind.UNAVAILABLE, f"model {self.spec.name} is not loaded")
        if self._string_inputs:
            feeds = {k: _as_str(v) if k in self._string_inputs else v for k, v in feeds.items()}
        try:
            results = call.run(self._output_names, feeds, self._run_options)
        except Exception as exc:
            raise LockgateError(
                ErrorKind.MODEL_FAILED, f"model {self.spec.name} v{self.spec.version} failed: {exc}"
            ) from exc
        return dict(zip(self._output_names, results, strict=True))

    def release(self) -> None:
        self._session = self._call = None


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray[Any, Any]:
    shape = [rows if i == 0 and d == -1 else (1 if d < 0 else d) for i, d in enumerate(spec.shape)]
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


def _as_str(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """onnxruntime wants str for string tensors; the wire gives bytes."""
    flat = [
        x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)
    ]
    return np.array(flat, dtype=object).reshape(arr.shape)
