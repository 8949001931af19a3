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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockgate.monitor.layout import RowLayout, declared_layout, feature_names
from lockgate.monitor.reference import ReferenceProfile, build_profile
from lockgate.types import ModelSpec, numpy_dtype

MAX_REFERENCE_ROWS = 20_000  # enough for stable quantile bins; bounds build time and memory

Array = np.ndarray[Any, Any]
Predict = Callable[[dict[str, Array]], dict[str, Array]]


@dataclass(frozen=True)
class VersionProfiles:
    inputs: ReferenceProfile
    outputs: ReferenceProfile | None  # None when the outputs cannot be profiled

    def to_npz_bytes(self) -> bytes:
        """Both profiles in one ``.npz`` (no pickle): each as its own serialised bytes."""
        parts = {"inputs": self.inputs} | ({"outputs": self.outputs} if self.outputs else {})
        arrays: dict[str, Any] = {
            k: np.frombuffer(p.to_npz_bytes(), np.uint8) for k, p in parts.items()
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays)
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
            return cls(ReferenceProfile.from_npz_bytes(z["inputs"].tobytes()), outputs)


def build_profiles(
    spec: ModelSpec,
    reference: Array,
    predict: Predict | None,
    layout: RowLayout | None = None,
    categorical: Sequence[int] = (),
) -> VersionProfiles:
    """Profiles of a version's monitored features (:mod:`lockgate.monitor.layout`) from its
    reference rows ``[N, input features]``: outputs only when the model has one monitored input
    tensor to feed the rows to, per row, and `predict` is given. `categorical` declares input
    features (column indices) categorical; integer columns with few values are detected on both
    sides. ValueError when the rows do not match."""
    layout = layout if layout is not None else declared_layout(spec)
    reference = np.asarray(reference, dtype=np.float64)[:MAX_REFERENCE_ROWS]
    input_slots, input_names, _ = feature_names(spec.inputs, layout)
    if reference.ndim != 2 or reference.shape[1] != len(input_names):
        raise ValueError(
            f"reference data has shape {reference.shape}, the monitored inputs are "
            f"{len(input_names)} features"
        )
    inputs = build_profile(reference, input_names, categorical=categorical)
    output_slots, output_names, _ = feature_names(spec.outputs, layout)
    if predict is None or len(input_slots) != 1 or len(spec.inputs) != 1 or not output_names:
        return VersionProfiles(inputs, None)
    if not layout.per_row:
        return VersionProfiles(inputs, None)
    ((name, _, _),) = input_slots
    tensor = spec.input(name)
    assert tensor is not None
    feed = reference.astype(numpy_dtype(tensor.datatype)).reshape(
        (reference.shape[0], *tensor.shape[1:])
    )
    predicted = predict({name: feed})
    rows = reference.shape[0]
    matrix = np.hstack([predicted[n].reshape(rows, -1) for n, _, _ in output_slots])
    return VersionProfiles(inputs, build_profile(matrix.astype(np.float64), output_names))
