"""What registration checks and derives before a version is written: the schema as served
(with a session proving onnxruntime loads it), a run on the warm-up inputs, the drift profiles
from the reference data."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.control import warmup_file
from lockgate.control.onnx_schema import first_line, inspect_model
from lockgate.errors import LockgateError, invalid
from lockgate.model_config import ModelConfig
from lockgate.types import ModelSpec

log = logging.getLogger(__name__)


def read_schema(model_bytes: bytes, name: str, version: str) -> ModelSpec:
    """Validate an ONNX model (checker + an onnxruntime session) and read its input/output
    schema, as it will be served (see :mod:`lockgate.control.onnx_schema`). Raises INVALID with
    the reason when the file is not a usable model."""
    return validate(model_bytes, name, version)[0]


def validate(model_bytes: bytes, name: str, version: str) -> tuple[ModelSpec, Any, Any]:
    """`read_schema`, the onnxruntime session it made, and the inspected model."""
    import onnxruntime as ort

    inspected = inspect_model(model_bytes)
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            inspected.model_bytes, options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise invalid(f"onnxruntime cannot load the model: {first_line(exc)}") from None
    return ModelSpec(name, version, inspected.inputs, inspected.outputs), session, inspected


def _predict(spec: ModelSpec, session: Any) -> Any:
    names = [o.name for o in spec.outputs]

    def predict(feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        results = session.run(names, warmup_file.feeds_for_session(feeds))
        return dict(zip(names, results, strict=True))

    return predict


def check_warmup(spec: ModelSpec, session: Any, arrays: dict[str, Any]) -> None:
    """The warm-up inputs must run: a gateway relies on them to load the version."""
    try:
        _predict(spec, session)(arrays)
    except Exception as exc:
        raise invalid(f"the model fails on its warm-up data: {first_line(exc)}") from None


def drift_profiles(
    spec: ModelSpec,
    reference: np.ndarray[Any, Any] | dict[str, np.ndarray[Any, Any]],
    session: Any,
    warmup: dict[str, np.ndarray[Any, Any]] | None,
    categorical: list[int] | None = None,
) -> bytes | None:
    """The version's drift profiles, serialised; None (logged) when they cannot be built, in
    which case a gateway tries again from the reference data when it loads the version. The
    monitored shapes come from a run on the warm-up inputs, as a gateway's load does."""
    from lockgate.monitor.layout import probe, reference_feeds, synthetic_feeds
    from lockgate.monitor.profiles import build_profiles

    predict = _predict(spec, session)
    sample = warmup
    rows = ModelConfig().warmup_samples
    if sample is None and isinstance(reference, dict):
        sample = {k: v[:rows] for k, v in reference.items()}
    elif sample is None and not isinstance(reference, dict):
        sample = reference_feeds(spec, reference, rows)
    if sample is None:
        sample = synthetic_feeds(spec, ModelConfig().warmup_samples)
    try:
        layout = probe(spec, predict, sample).layout
        profiles = build_profiles(spec, reference, predict, layout, categorical or ())
        return profiles.to_npz_bytes()
    except Exception as exc:  # a model that cannot score its own reference still registers
        log.warning("no drift profile for a version of %s: %s", spec.name, first_line(exc))
        return None


def read_reference(
    source: Path | np.ndarray[Any, Any] | Mapping[str, Any], spec: ModelSpec
) -> np.ndarray[Any, Any] | dict[str, np.ndarray[Any, Any]]:
    """Reference data as a table (:func:`load_reference_file`) or, given arrays by input name
    (an `.npz` whose arrays are named after the model's inputs: the form string inputs need),
    as those arrays checked against the schema."""
    if isinstance(source, Mapping):
        return warmup_file.read_warmup(source, spec, "reference")
    if isinstance(source, Path):
        if source.suffix == ".npz" and _names_inputs(source, spec):
            return warmup_file.read_warmup(source, spec, "reference")
        return load_reference_file(source)
    return np.asarray(source, dtype=np.float64)


def _names_inputs(path: Path, spec: ModelSpec) -> bool:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
    except (OSError, ValueError):
        return False  # load_reference_file says why
    return bool(names) and names <= {t.name for t in spec.inputs}


def load_reference_file(path: Path) -> np.ndarray[Any, Any]:
    """Reference data as a 2-D float array: `.npy`, `.npz` (first array) or `.csv` (header row
    allowed)."""
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                data = archive[archive.files[0]]
        elif path.suffix == ".csv":
            text = path.read_text()
            first = text.split("\n", 1)[0]
            skip = 0 if _is_numeric_row(first) else 1
            data = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=skip, ndmin=2)
        else:
            raise invalid(f"reference data must be .npy, .npz or .csv, got {path.name}")
    except LockgateError:
        raise
    except (OSError, ValueError) as exc:
        raise invalid(f"cannot read reference data {path}: {exc}") from None
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[0] == 0 or data.dtype.kind not in "biuf":
        raise invalid(f"reference data must be a non-empty 2-D numeric table, got {data.shape}")
    return np.asarray(data, dtype=np.float64)


def _is_numeric_row(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True
