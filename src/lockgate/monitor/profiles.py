"""A model version's drift profiles: its inputs' from the reference data, its outputs' from the
model's own predictions on that data.

They are built once, when the version is registered (the registry stores them beside the
model), and read by every gateway process that loads the version: building them costs a model
run over the reference and a quantile pass per feature, which at load time would hold the GIL
in each worker and replica while they serve. A version registered without them gets them built
at load, as before.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.monitor.derived import (
    CURRENT_DERIVATION,
    DEFAULT_SEED,
    SUMMARY_VERSION,
    Derivation,
    Summary,
)
from lockgate.monitor.joint_profile import JointProfile, build_joint_profile
from lockgate.monitor.layout import (
    Monitored,
    RowLayout,
    declared_layout,
    feature_names,
    monitored,
    raw_columns,
)
from lockgate.monitor.reference import ReferenceProfile, build_profile
from lockgate.types import ModelSpec, numpy_dtype

MAX_REFERENCE_ROWS = 20_000  # enough for stable quantile bins; bounds build time and memory

log = logging.getLogger(__name__)
Array = np.ndarray[Any, Any]
Predict = Callable[[dict[str, Array]], dict[str, Array]]


@dataclass(frozen=True)
class VersionProfiles:
    inputs: ReferenceProfile
    outputs: ReferenceProfile | None  # None when the outputs cannot be profiled
    derivation: Derivation = CURRENT_DERIVATION  # how wide inputs were summarised (monitor.derived)
    joint: JointProfile | None = None  # joint drift of the continuous inputs (None: too few)

    def to_npz_bytes(self) -> bytes:
        """The profiles in one ``.npz`` (no pickle): each as its own serialised bytes."""
        parts: dict[str, ReferenceProfile | JointProfile] = {"inputs": self.inputs}
        parts |= {"outputs": self.outputs} if self.outputs else {}
        parts |= {"joint": self.joint} if self.joint else {}
        arrays: dict[str, Any] = {
            k: np.frombuffer(p.to_npz_bytes(), np.uint8) for k, p in parts.items()
        }
        buf = io.BytesIO()
        seed, version = self.derivation.seed, self.derivation.version
        np.savez(buf, seed=np.int64(seed), summary_version=np.int64(version), **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> VersionProfiles:
        """Inverse of :meth:`to_npz_bytes`; raises ValueError on another layout."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if "inputs" not in z:
                raise ValueError("no input profile")
            outputs = None
            if "outputs" in z:
                outputs = ReferenceProfile.from_npz_bytes(z["outputs"].tobytes())
            seed = int(z["seed"]) if "seed" in z else DEFAULT_SEED
            # profiles stored before the summary version read every value of a wide row
            version = int(z["summary_version"]) if "summary_version" in z else 1
            if version > SUMMARY_VERSION:
                raise ValueError(
                    f"summary version {version} (this build reads up to {SUMMARY_VERSION})"
                )
            joint = None  # profiles stored before joint drift have none
            if "joint" in z:
                joint = JointProfile.from_npz_bytes(z["joint"].tobytes())
            inputs = ReferenceProfile.from_npz_bytes(z["inputs"].tobytes())
            return cls(inputs, outputs, Derivation(seed, version), joint)


def reference_tensors(
    spec: ModelSpec, reference: Array | Mapping[str, Array], layout: RowLayout
) -> dict[str, Array]:
    """The reference as arrays by input name: given so (strings need it), or split from a
    table ``[N, values]`` whose columns are the values of every numeric input with a fixed
    width, in schema order
    (:func:`~lockgate.monitor.layout.raw_columns`). ValueError when it does not fit."""
    if isinstance(reference, Mapping):
        arrays = dict(reference)
        lengths = {np.shape(a)[0] if np.ndim(a) else -1 for a in arrays.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise ValueError("reference arrays must have the same number of rows")
    else:
        table = np.asarray(reference)
        slots, width = raw_columns(spec.inputs, layout)
        if table.ndim != 2 or table.shape[1] != width:
            raise ValueError(
                f"reference data has shape {table.shape}, the monitored inputs are "
                f"{width} values per row"
            )
        arrays = {name: table[:, lo:hi] for name, lo, hi in slots}
    return {t.name: np.asarray(arrays[t.name]) for t in spec.inputs if t.name in arrays}


def feature_table(m: Monitored, tensors: Mapping[str, Array], rows: int) -> Array:
    """``[rows, features]`` float64 of the monitored input features, derived as the ring
    derives them. ValueError naming an input the reference lacks."""
    table = np.empty((rows, len(m.names)), np.float64)
    columns: list[tuple[str, int, int, Summary | None]]
    columns = [(name, lo, hi, None) for name, lo, hi in m.slots]
    columns += [(s.tensor, lo, hi, s) for s, lo, hi in m.summaries]
    for name, lo, hi, summary in columns:
        if name not in tensors:
            raise ValueError(
                f"the reference has no values for input {name!r} (string inputs need a "
                "reference with one array per input)"
            )
        values = tensors[name]
        if values.size != rows * (hi - lo if summary is None else summary.width):
            raise ValueError(f"reference input {name!r} has shape {values.shape}")
        if summary is None:
            table[:, lo:hi] = values.reshape(rows, hi - lo).astype(np.float64)
        else:
            table[:, lo:hi] = summary.columns(values, rows)
    return table


def stored_or_built(
    spec: ModelSpec,
    profiles: VersionProfiles | None,
    reference: Array | Mapping[str, Array] | None,
    predict: Predict | None,
    layout: RowLayout | None,
) -> VersionProfiles | None:
    """A loading version's profiles: those stored at registration, else built from its
    reference data (which may run the model). None when it has neither, or when building fails
    (logged: a bad profile must not stop the model from serving)."""
    if profiles is not None or reference is None:
        return profiles
    try:
        return build_profiles(spec, reference, predict, layout)
    except Exception as exc:
        log.warning("no drift profile for %s v%s: %s", spec.name, spec.version, exc)
        return None


def build_profiles(
    spec: ModelSpec,
    reference: Array | Mapping[str, Array],
    predict: Predict | None,
    layout: RowLayout | None = None,
    categorical: Sequence[int] = (),
    derivation: Derivation = CURRENT_DERIVATION,
) -> VersionProfiles:
    """Profiles of a version's monitored features (:mod:`lockgate.monitor.layout`) from its
    reference: a table ``[N, values of the numeric inputs]`` or arrays by input name
    (:func:`reference_tensors`); wide and string inputs are summarised as the ring does, as
    `derivation` says. Outputs only when the model has one input, per row, and
    `predict` is given. `categorical` declares input features (indices among the monitored
    features) categorical; integer columns with few values are detected on both sides, and
    hashed strings are categories. ValueError when the reference does not match."""
    layout = layout if layout is not None else declared_layout(spec)
    tensors = reference_tensors(spec, reference, layout)
    tensors = {k: v[:MAX_REFERENCE_ROWS] for k, v in tensors.items()}
    rows = next(iter(tensors.values())).shape[0] if tensors else 0
    m = monitored(spec.inputs, layout, derivation)
    table = feature_table(m, tensors, rows)
    inputs = build_profile(table, m.names, categorical=sorted({*categorical, *m.categorical}))
    joint = build_joint_profile(table, m.names, ~inputs.categorical)
    output_slots, output_names, _ = feature_names(spec.outputs, layout)
    if predict is None or len(spec.inputs) != 1 or not output_names or not layout.per_row:
        return VersionProfiles(inputs, None, derivation, joint)
    tensor = spec.inputs[0]
    if tensor.name not in tensors:
        return VersionProfiles(inputs, None, derivation, joint)
    feed = tensors[tensor.name].reshape((rows, *tensor.shape[1:]))
    if tensor.datatype != "BYTES":
        feed = feed.astype(numpy_dtype(tensor.datatype))
    predicted = predict({tensor.name: feed})
    matrix = np.hstack([predicted[n].reshape(rows, -1) for n, _, _ in output_slots])
    outputs = build_profile(matrix.astype(np.float64), output_names)
    return VersionProfiles(inputs, outputs, derivation, joint)
