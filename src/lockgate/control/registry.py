"""Model versions on disk: `models/<name>/<version>/` holding `model.onnx`, `meta.json` and,
when given, `reference.npz` with the drift profiles built from it (`profile.npz`, see
:mod:`lockgate.monitor.profiles`). A version is immutable once published.

Publishing writes a temporary folder next to the versions, fsyncs it, and renames it to the next
free version number. `rename` of a folder onto an existing non-empty folder fails, so two writers
racing for one number cannot both win: the loser takes the next number. A crash leaves either a
whole version or a `.tmp-*` folder that `gc_temp` removes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.fsutil import fsync_dir, write_synced
from lockgate.specs import NAME_PATTERN as NAME_PATTERN  # model names: the same rule
from lockgate.types import ModelSpec, TensorSpec

if TYPE_CHECKING:  # the profiles' kernels (numba) load only when a profile is built or read
    from lockgate.monitor.profiles import VersionProfiles

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
REFERENCE_FILE = "reference.npz"
PROFILE_FILE = "profile.npz"
CARD_FILE = "card.md"
_TEMP_PREFIX = ".tmp-"

# onnx TensorProto element types -> Open Inference Protocol datatypes
_ONNX_DATATYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "created": self.created,
            "platform": self.spec.platform,
            "inputs": [_tensor_doc(t) for t in self.spec.inputs],
            "outputs": [_tensor_doc(t) for t in self.spec.outputs],
            "metadata": self.metadata,
            "lineage": self.lineage,
            "reference": self.reference_path is not None,
            "drift_profile": self.profile_path is not None,
        }


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise invalid(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def read_schema(model_bytes: bytes, name: str, version: str) -> ModelSpec:
    """Validate an ONNX model (checker + an onnxruntime session) and read its input/output
    schema. Raises INVALID with the reason when the file is not a usable model."""
    return _validate(model_bytes, name, version)[0]


def _validate(model_bytes: bytes, name: str, version: str) -> tuple[ModelSpec, Any]:
    """`read_schema`, and the onnxruntime session it made."""
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load_model_from_string(model_bytes)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise invalid(f"not a valid ONNX model: {_first_line(exc)}") from None
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise invalid(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    initializers = {i.name for i in model.graph.initializer}

    def spec_of(value_info: Any) -> TensorSpec:
        tensor_type = value_info.type.tensor_type
        datatype = _ONNX_DATATYPES.get(tensor_type.elem_type)
        if datatype is None:
            raise invalid(f"tensor {value_info.name!r} has an unsupported element type")
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        return TensorSpec(value_info.name, datatype, shape)

    inputs = tuple(spec_of(i) for i in model.graph.input if i.name not in initializers)
    outputs = tuple(spec_of(o) for o in model.graph.output)
    if not inputs or not outputs:
        raise invalid("the model has no inputs or no outputs")
    return ModelSpec(name, version, inputs, outputs), session


def _profiles(
    spec: ModelSpec, reference: np.ndarray[Any, Any], session: Any, categorical: list[int]
) -> bytes | None:
    """The version's drift profiles, serialised; None (logged) when they cannot be built, in
    which case a gateway tries again from the reference data when it loads the version."""
    from lockgate.monitor.profiles import build_profiles

    names = [o.name for o in spec.outputs]

    def predict(feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    try:
        return build_profiles(spec, reference, predict, categorical).to_npz_bytes()
    except Exception as exc:  # a model that cannot score its own reference still registers
        log.warning("no drift profile for a version of %s: %s", spec.name, _first_line(exc))
        return None


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class Registry:
    """The model registry under `<home>/models`. Safe for concurrent writers (threads or
    processes) on one local file system."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "models"

    # -- reading ------------------------------------------------------------------------------
    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name)
        )

    def versions(self, name: str) -> list[VersionInfo]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        numbers = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        return [self._read(name, str(n)) for n in numbers]

    def get(self, name: str, version: str) -> VersionInfo:
        if not version.isdigit() or not (self.root / name / version / META_FILE).exists():
            if not (self.root / name).is_dir():
                raise not_found(f"unknown model {name!r}")
            raise not_found(f"unknown version {version!r} of model {name!r}")
        return self._read(name, str(int(version)))

    def latest(self, name: str) -> VersionInfo:
        versions = self.versions(name)
        if not versions:
            raise not_found(f"unknown model {name!r}")
        return versions[-1]

    def load_reference(self, info: VersionInfo) -> np.ndarray[Any, Any] | None:
        path = info.reference_path
        if path is None:
            return None
        with np.load(path, allow_pickle=False) as archive:
            return np.asarray(archive["data"])

    def load_profiles(self, info: VersionInfo) -> VersionProfiles | None:
        """The drift profiles stored at registration; None when the version has none (or they
        cannot be read: the caller builds them from the reference data instead)."""
        from lockgate.monitor.profiles import VersionProfiles

        path = info.profile_path
        if path is None:
            return None
        try:
            return VersionProfiles.from_npz_bytes(path.read_bytes())
        except (OSError, ValueError, KeyError) as exc:
            log.warning("unreadable drift profile %s: %s", path, _first_line(exc))
            return None

    def verify(self, info: VersionInfo) -> None:
        """Raise UNAVAILABLE when the model file no longer matches its recorded checksum."""
        digest = hashlib.sha256(info.model_path.read_bytes()).hexdigest()
        if digest != info.sha256:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"{info.name} v{info.version}: model.onnx checksum mismatch (file changed on disk)",
            )

    def _read(self, name: str, version: str) -> VersionInfo:
        path = self.root / name / version
        doc = orjson.loads((path / META_FILE).read_bytes())

        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in items)

        spec = ModelSpec(name, version, specs(doc["inputs"]), specs(doc["outputs"]))
        return VersionInfo(
            name=name,
            version=version,
            path=path,
            sha256=doc["sha256"],
            created=doc["created"],
            spec=spec,
            metadata=doc.get("metadata", {}),
            lineage=doc.get("lineage", {}),
        )

    # -- writing ------------------------------------------------------------------------------
    def register(
        self,
        source: Path | bytes,
        name: str,
        *,
        metadata: dict[str, Any] | None = None,
        reference: Path | np.ndarray[Any, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        card: str | None = None,
        categorical: list[int] | None = None,
    ) -> VersionInfo:
        """Validate and publish `source` as the next version of `name` (with its model card,
        `card.md`, when given). `categorical`: input feature indices (columns of the reference)
        whose drift is measured per category; integer columns with few values are found alone."""
        check_name(name)
        categorical = sorted(set(categorical or ()))
        if categorical and reference is None:
            raise invalid(
                "categorical features are declared for the drift profile: give reference data"
            )
        if isinstance(source, bytes):
            model_bytes = source
        else:
            try:
                model_bytes = Path(source).read_bytes()
            except OSError as exc:
                raise invalid(f"cannot read model file {source}: {exc.strerror}") from None
        spec, session = _validate(model_bytes, name, "0")
        ref = profiles = None
        if reference is not None:
            ref = (
                load_reference_file(reference)
                if isinstance(reference, Path)
                else np.asarray(reference, dtype=np.float64)
            )
            if categorical and not (
                ref.ndim == 2 and 0 <= categorical[0] <= categorical[-1] < ref.shape[1]
            ):
                raise invalid(
                    f"categorical features {categorical} are not columns of the reference data"
                )
            profiles = _profiles(spec, ref, session, categorical)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(), dir=folder))
        try:
            created = datetime.now(UTC).isoformat(timespec="milliseconds")
            meta = {
                "sha256": hashlib.sha256(model_bytes).hexdigest(),
                "created": created,
                "inputs": [_tensor_doc(t) for t in spec.inputs],
                "outputs": [_tensor_doc(t) for t in spec.outputs],
                "metadata": metadata or {},
                "lineage": lineage or {},
            } | ({"categorical": categorical} if categorical else {})
            write_synced(temp / MODEL_FILE, model_bytes)
            write_synced(temp / META_FILE, orjson.dumps(meta, option=orjson.OPT_INDENT_2))
            if card is not None:
                write_synced(temp / CARD_FILE, card.encode())
            if ref is not None:
                buf = io.BytesIO()
                np.savez(buf, data=ref)
                write_synced(temp / REFERENCE_FILE, buf.getvalue())
            if profiles is not None:
                write_synced(temp / PROFILE_FILE, profiles)
            fsync_dir(temp)
            version = self._publish(temp, folder)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return self._read(name, version)

    def _publish(self, temp: Path, folder: Path) -> str:
        """Rename `temp` to the first free version number; retry when another writer wins."""
        for _ in range(1000):
            numbers = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
            version = str(max(numbers, default=0) + 1)
            try:
                os.rename(temp, folder / version)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                raise
            fsync_dir(folder)
            return version
        raise LockgateError(ErrorKind.CONFLICT, f"could not publish a version in {folder}")

    def gc_temp(self, older_than: float = 600.0) -> int:
        """Remove temporary folders left by crashed writers; returns how many. A folder is
        left alone while it is younger than `older_than` seconds or its writer (named in the
        folder: host and pid) is still running on this host."""
        removed = 0
        cutoff = time.time() - older_than
        for temp in self.root.glob(f"*/{_TEMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if temp.stat().st_mtime < cutoff and not _writer_alive(temp.name):
                    shutil.rmtree(temp)
                    removed += 1
        return removed


def _temp_prefix() -> str:
    return f"{_TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def _writer_alive(folder_name: str) -> bool:
    """Whether the process that made a temporary folder still runs (as far as this host can
    tell: a writer on another host counts as gone once the folder is old enough)."""
    host, _, rest = folder_name.removeprefix(_TEMP_PREFIX).rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tensor_doc(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
