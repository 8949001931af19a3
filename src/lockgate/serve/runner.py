"""The onnxruntime sessions of one loaded model version: load, verify, warm up, run a batch.

The runner keeps a small cost model (fixed cost per call + cost per row, from the fastest of
several warm-up runs) so the batcher can run tiny batches inline on the event loop instead of
paying a thread hand-off that costs more than the model itself. Live timings are not fed back:
they include GIL waits and hand-offs, which would ratchet tiny models off the loop for good.

Loading never depends on made-up data: the warm-up runs on the version's own warm-up file,
else its reference data, else synthetic inputs, and a warm-up the model refuses is a warning
(the version loads, runs each request alone and is assumed costly). The same run decides
whether requests may be concatenated (see `_batching`) and which shapes the monitor follows.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lockgate.config import RunnerConfig
from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.model_config import ModelConfig
from lockgate.monitor.layout import (
    Probe,
    RowLayout,
    probe,
    reference_feeds,
    synthetic_feeds,
    take_rows,
)
from lockgate.types import ModelSpec

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
Arrays = dict[str, Array]
UNKNOWN_COST = 1e-3  # seconds per call assumed without a warm-up: off the event loop
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(config: RunnerConfig, model: ModelConfig | None = None) -> ort.SessionOptions:
    """Explicit onnxruntime options: thread counts (the version's, else `config`'s), sequential
    execution (the batcher already overlaps requests), the graph optimisation level, warnings
    and errors only."""
    model = model or ModelConfig()
    options = ort.SessionOptions()
    options.intra_op_num_threads = model.intra_op_threads or config.intra_op_threads
    options.inter_op_num_threads = model.inter_op_threads or config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION[model.graph_optimization]
    options.log_severity_level = 3
    return options


def choose_providers(label: str, model: ModelConfig) -> list[str]:
    """The version's execution providers that this onnxruntime has; an unavailable one is a
    load error unless `provider_fallback` (then the available ones, and CPU, are used)."""
    available = ort.get_available_providers()
    missing = [p for p in model.providers if p not in available]
    if not missing:
        return list(model.providers)
    if not model.provider_fallback:
        raise LockgateError(
            ErrorKind.UNAVAILABLE,
            f"model {label}: execution provider(s) {', '.join(missing)} not available in this "
            f"onnxruntime (available: {', '.join(available)}); install an onnxruntime build "
            "with them, or set `provider_fallback = true` in the version's config",
        )
    chosen = [p for p in model.providers if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    log.warning("model %s: %s not available, falling back to %s", label, missing, chosen)
    return chosen


class ModelRunner:
    """Owns the sessions of one model version. `run` is thread-safe (onnxruntime sessions are;
    with several, consecutive calls take turns)."""

    def __init__(
        self,
        spec: ModelSpec,
        model_path: Path,
        config: RunnerConfig,
        model_config: ModelConfig | None = None,
        *,
        warmup: Arrays | None = None,
        reference: Array | None = None,
    ) -> None:
        self.declared = spec  # the registry's schema; `spec` is what serving follows
        self.spec = spec
        self.path = model_path
        self.config = config
        self.model_config = model_config or ModelConfig()
        self._warmup_file, self._reference = warmup, reference
        self._calls: list[Any] = []  # what `run` calls: see `load`
        self._turn: Any = None
        self._output_names = [o.name for o in spec.outputs]
        self._string_inputs = tuple(i.name for i in spec.inputs if i.datatype == "BYTES")
        self._string_outputs = tuple(o.name for o in spec.outputs if o.datatype == "BYTES")
        # One RunOptions for every call: without it onnxruntime builds a default one per call,
        # which measured 10% of a call on a small model (36.7 vs 40.7 us cache-cold).
        self._run_options = ort.RunOptions()
        self.fixed_cost = 0.0  # seconds per call, independent of rows
        self.row_cost = 0.0  # seconds per row
        self.probe: Probe | None = None  # what the run at load showed
        self.warmup_source = "none"

    @property
    def label(self) -> str:
        return f"{self.spec.name} v{self.spec.version}"

    @property
    def loaded(self) -> bool:
        return bool(self._calls)

    @property
    def sessions(self) -> int:
        return self.model_config.sessions

    @property
    def layout(self) -> RowLayout | None:
        """How the monitor maps this version's tensors to rows (after `load`)."""
        return self.probe.layout if self.probe is not None else None

    def load(self) -> None:
        """Create the sessions, check them against the registered schema, warm up. Blocking."""
        providers = choose_providers(self.label, self.model_config)
        options = session_options(self.config, self.model_config)
        try:
            sessions = [
                ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
                for _ in range(self.model_config.sessions)
            ]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LockgateError(ErrorKind.UNAVAILABLE, f"model {self.label}: {exc}") from exc
        self._check_schema(sessions[0])
        # The public `run` re-checks the feed's names on every call (pybind property reads
        # per input), which the data plane has already done against the schema: ~5 us of a
        # ~30 us cache-cold call on a small model. The binding underneath is the same call
        # without them; the public one stays as the fallback should it ever move.
        self._calls = [getattr(s, "_sess", s) for s in sessions]
        self._turn = itertools.cycle(self._calls).__next__ if len(sessions) > 1 else None
        self._warm_up()

    def _check_schema(self, session: ort.InferenceSession) -> None:
        got = {i.name for i in session.get_inputs()}
        want = {i.name for i in self.spec.inputs}
        if got != want:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"model {self.label}: session inputs {sorted(got)} "
                f"differ from the registered schema {sorted(want)}",
            )

    # -- warm-up ---------------------------------------------------------------------------------
    def _sample(self, count: int) -> tuple[Arrays, str]:
        """Warm-up inputs: the version's warm-up file, else its reference data, else synthetic;
        at most `count` rows where the inputs have a batch dimension."""
        if self._warmup_file is not None:
            sample = {
                name: a[:count] if a.ndim and self.declared.batchable else a
                for name, a in self._warmup_file.items()
            }
            return sample, "warm-up file"
        if self._reference is not None:
            feeds = reference_feeds(self.declared, self._reference, count)
            if feeds is not None:
                return feeds, "reference data"
        return synthetic_feeds(self.declared, count), "synthetic data"

    def _warm_up(self) -> None:
        """One run at load decides batching and the monitored shapes; then fit the cost model
        (batch sizes 1 and 8, or a lone request, each the fastest of `warmup_runs`)."""
        count = self.model_config.warmup_samples
        sample = None
        if count:
            sample, self.warmup_source = self._sample(count)
        else:
            self.warmup_source = "none (warmup_samples = 0)"
        self.probe = probe(self.declared, self.run, sample)
        if sample is not None and not self.probe.ran:
            log.warning(
                "model %s: the warm-up on %s failed (%s); loaded without it: requests are not "
                "batched (unless batchable = true) and runs are assumed costly (give a warm-up "
                "file at registration: --warmup FILE.npz)",
                self.label,
                self.warmup_source,
                self.probe.error,
            )
        for note in self.probe.notes:
            log.info("model %s: %s; served and monitored as returned", self.label, note)
        self.spec = dataclasses.replace(self.declared, batching=self._batching(self.probe))
        if sample is None or not self.probe.ran:
            self.fixed_cost, self.row_cost = UNKNOWN_COST, 0.0
        else:
            self._fit_costs(sample)

    def _batching(self, result: Probe) -> bool:
        """Concatenate requests on axis 0 only when allowed: `auto` needs the graph to declare a
        leading dynamic dimension on every input and output AND the run at load to show every
        output following the inputs' rows; `true` needs the inputs' leading dynamic dimension
        and no run contradicting it; `false` never."""
        mode = self.model_config.batchable
        if mode == "false":
            return False
        if mode == "auto":
            return self.declared.batchable and result.ran and result.rows_follow
        fixed = [i for i in self.declared.inputs if not i.shape or i.shape[0] != -1]
        if fixed:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"model {self.label}: batchable = true, but input {fixed[0].name!r} has shape "
                f"{list(fixed[0].shape)} (no leading dynamic dimension to concatenate on); "
                "set batchable = auto or false",
            )
        if result.ran and not result.rows_follow:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"model {self.label}: batchable = true, but a run at load shows outputs that do "
                "not follow the inputs' rows (their leading dimension does not grow with the "
                "rows); set batchable = auto or false",
            )
        return True

    def _fit_costs(self, sample: Arrays) -> None:
        timings: dict[int, float] = {}
        for rows in (1, 8) if self.spec.batchable else (0,):
            feeds = take_rows(sample, rows) if rows else sample
            best = float("inf")
            for _ in range(max(1, self.config.warmup_runs)):
                start = time.perf_counter()
                self.run(feeds)
                best = min(best, time.perf_counter() - start)
            timings[rows] = best
        if 8 in timings:
            self.row_cost = max(0.0, (timings[8] - timings[1]) / 7)
            self.fixed_cost = max(0.0, timings[1] - self.row_cost)
        else:
            self.fixed_cost, self.row_cost = timings[0], 0.0

    def predicted_cost(self, rows: int) -> float:
        return self.fixed_cost + self.row_cost * rows

    # -- the request path ----------------------------------------------------------------------
    def run(self, feeds: Arrays) -> Arrays:
        if not self._calls:
            raise LockgateError(ErrorKind.UNAVAILABLE, f"model {self.spec.name} is not loaded")
        call = self._turn() if self._turn is not None else self._calls[0]
        if self._string_inputs:
            feeds = dict(feeds)
            for name in self._string_inputs:
                if name in feeds:
                    feeds[name] = as_str(name, feeds[name])
        try:
            results = call.run(self._output_names, feeds, self._run_options)
        except Exception as exc:
            raise LockgateError(
                ErrorKind.MODEL_FAILED, f"model {self.label} failed: {exc}"
            ) from exc
        outputs = dict(zip(self._output_names, results, strict=True))
        for name in self._string_outputs:
            outputs[name] = as_bytes(outputs[name])
        return outputs

    def release(self) -> None:
        self._calls = []
        self._turn = None


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _to_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


_STR = np.frompyfunc(_to_str, 1, 1)  # one C loop over the elements, not a Python one
_BYTES = np.frompyfunc(_to_bytes, 1, 1)


def as_str(name: str, array: Array) -> Array:
    """A BYTES input as onnxruntime's tensor(string) wants it: an object array of `str`,
    decoded from UTF-8. Bad UTF-8 is the client's mistake (INVALID, naming the input)."""
    if array.dtype.kind == "U":
        return array.astype(object)
    try:
        return _STR(array, out=np.empty(array.shape, dtype=object))  # type: ignore[no-any-return]
    except UnicodeDecodeError as exc:
        flat = array.reshape(-1)
        index = next(i for i, v in enumerate(flat) if isinstance(v, bytes) and not _utf8(v))
        raise invalid(
            f"input {name!r}: element {index} is not valid UTF-8 ({exc.reason} at byte "
            f"{exc.start}); string inputs must be UTF-8 text"
        ) from None


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def as_bytes(array: Array) -> Array:
    """A tensor(string) output as lockgate's BYTES tensors hold it: an object array of `bytes`
    (UTF-8)."""
    return _BYTES(array, out=np.empty(array.shape, dtype=object))  # type: ignore[no-any-return]
