"""A version as the registry reads it: the files of its folder, and :class:`VersionInfo`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate.control import warmup_file
from lockgate.model_config import ModelConfig
from lockgate.types import ModelSpec, TensorSpec

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
REFERENCE_FILE = "reference.npz"
PROFILE_FILE = "profile.npz"
CARD_FILE = "card.md"
CONFIG_FILE = "config.toml"
WARMUP_FILE = warmup_file.WARMUP_FILE
GATES_FILE = "gates.json"  # gate results, added once after publication (Registry.write_gates)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: str
    path: Path  # the version's folder
    sha256: str
    created: str  # ISO 8601, UTC
    spec: ModelSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    config: ModelConfig = field(default_factory=ModelConfig)
    conversions: tuple[str, ...] = ()  # what registration changed in the model file
    config_error: str = ""  # config.toml is unreadable (edited by hand): the version won't load
    gates_passed: bool | None = None  # the recorded gate verdict; None: never evaluated

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def card_path(self) -> Path | None:
        path = self.path / CARD_FILE
        return path if path.exists() else None

    @property
    def reference_path(self) -> Path | None:
        path = self.path / REFERENCE_FILE
        return path if path.exists() else None

    @property
    def profile_path(self) -> Path | None:
        path = self.path / PROFILE_FILE
        return path if path.exists() else None

    @property
    def warmup_path(self) -> Path | None:
        path = self.path / WARMUP_FILE
        return path if path.exists() else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "created": self.created,
            "platform": self.spec.platform,
            "inputs": [tensor_doc(t) for t in self.spec.inputs],
            "outputs": [tensor_doc(t) for t in self.spec.outputs],
            "metadata": self.metadata,
            "lineage": self.lineage,
            "reference": self.reference_path is not None,
            "drift_profile": self.profile_path is not None,
            "warmup": self.warmup_path is not None,
            "conversions": list(self.conversions),
            "config": self.config.to_json(),
        }


def tensor_doc(t: TensorSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
    if t.labels:
        doc["labels"] = list(t.labels)
    return doc
