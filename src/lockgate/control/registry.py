"""Model versions on disk: `models/<name>/<version>/` holding `model.onnx`, `meta.json` and,
when given, `reference.npz` with the drift profiles built from it (`profile.npz`, see
:mod:`lockgate.monitor.profiles`), the warm-up inputs (`warmup.npz`, see
:mod:`lockgate.control.warmup_file`) and the serving configuration (`config.toml`, see
:mod:`lockgate.model_config`). A version's model and data are immutable once published; its
configuration is replaced whole (write, fsync, rename) by `set_config`.

Publishing writes a temporary folder next to the versions, fsyncs it, and renames it to the next
free version number. `rename` of a folder onto an existing non-empty folder fails, so two writers
racing for one number cannot both win: the loser takes the next number. A crash leaves either a
whole version or a `.tmp-*` folder that `gc_temp` removes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from lockgate.control import warmup_file
from lockgate.control.onnx_schema import first_line
from lockgate.control.registration import (
    check_warmup,
    drift_profiles,
    load_reference_file,
    read_reference,
    read_schema,
    validate,
)
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.fsutil import fsync_dir, write_synced
from lockgate.model_config import ModelConfig
from lockgate.specs import NAME_PATTERN as NAME_PATTERN  # model names: the same rule
from lockgate.types import ModelSpec, TensorSpec

if TYPE_CHECKING:  # the profiles' kernels (numba) load only when a profile is built or read
    from lockgate.monitor.profiles import VersionProfiles

__all__ = ["Registry", "VersionInfo", "check_name", "load_reference_file", "read_schema"]
log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
REFERENCE_FILE = "reference.npz"
PROFILE_FILE = "profile.npz"
CARD_FILE = "card.md"
CONFIG_FILE = "config.toml"
WARMUP_FILE = warmup_file.WARMUP_FILE
GATES_FILE = "gates.json"  # gate results, added once after publication (write_gates)
_TEMP_PREFIX = ".tmp-"


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
            "inputs": [_tensor_doc(t) for t in self.spec.inputs],
            "outputs": [_tensor_doc(t) for t in self.spec.outputs],
            "metadata": self.metadata,
            "lineage": self.lineage,
            "reference": self.reference_path is not None,
            "drift_profile": self.profile_path is not None,
            "warmup": self.warmup_path is not None,
            "conversions": list(self.conversions),
            "config": self.config.to_json(),
        }


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise invalid(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


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
            if "data" not in archive.files:
                return None  # arrays by input name: their profiles were built at registration
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
            log.warning("unreadable drift profile %s: %s", path, first_line(exc))
            return None

    def verify(self, info: VersionInfo) -> None:
        """Raise UNAVAILABLE when the model file no longer matches its recorded checksum."""
        digest = hashlib.sha256(info.model_path.read_bytes()).hexdigest()
        if digest != info.sha256:
            raise LockgateError(
                ErrorKind.UNAVAILABLE,
                f"{info.name} v{info.version}: model.onnx checksum mismatch (file changed on disk)",
            )

    def load_warmup(self, info: VersionInfo) -> dict[str, np.ndarray[Any, Any]] | None:
        """The version's warm-up inputs by input name (strings as unicode arrays), if any."""
        path = info.warmup_path
        return warmup_file.load_npz(path) if path is not None else None

    def _read(self, name: str, version: str) -> VersionInfo:
        path = self.root / name / version
        doc = orjson.loads((path / META_FILE).read_bytes())

        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(t["name"], t["datatype"], tuple(t["shape"]), tuple(t.get("labels", ())))
                for t in items
            )

        spec = ModelSpec(name, version, specs(doc["inputs"]), specs(doc["outputs"]))
        config_path = path / CONFIG_FILE
        config, config_error = ModelConfig(), ""
        if config_path.exists():
            try:
                config = ModelConfig.from_toml(config_path.read_text(), str(config_path))
            except (LockgateError, OSError, UnicodeDecodeError) as exc:
                config_error = f"{config_path}: {getattr(exc, 'message', exc)}"
        return VersionInfo(
            name=name,
            version=version,
            path=path,
            sha256=doc["sha256"],
            created=doc["created"],
            spec=spec,
            metadata=doc.get("metadata", {}),
            lineage=doc.get("lineage", {}),
            config=config,
            config_error=config_error,
            conversions=tuple(doc.get("conversions", ())),
            gates_passed=self._verdict(path),
        )

    @staticmethod
    def _verdict(path: Path) -> bool | None:
        """The gate verdict of the version in `path` (None: no results, or unreadable ones,
        which the policy treats as ungated)."""
        try:
            return orjson.loads((path / GATES_FILE).read_bytes()).get("passed") is True
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("unreadable gate results in %s: %s", path, exc)
            return False

    # -- writing ------------------------------------------------------------------------------
    def register(
        self,
        source: Path | bytes,
        name: str,
        *,
        metadata: dict[str, Any] | None = None,
        reference: Path | np.ndarray[Any, Any] | dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        card: str | None = None,
        warmup: Path | dict[str, Any] | None = None,
        config: ModelConfig | Path | None = None,
        categorical: list[int] | None = None,
    ) -> VersionInfo:
        """Validate and publish `source` as the next version of `name`, with its model card
        (`card.md`), warm-up inputs (`warmup.npz`: an `.npz` file or arrays by input name,
        which the model must run on) and serving configuration (`config.toml`: a
        ModelConfig or a TOML file), when given. `reference`: a table, or arrays by input name
        (a dict, or an `.npz` whose arrays are named after the inputs: string inputs need it).
        `categorical`: input feature indices (columns of the reference table; with wide or
        string inputs, indices among the monitored features) whose drift is measured per
        category; integer columns with few values are found alone."""
        check_name(name)
        categorical = sorted(set(categorical or ()))
        if categorical and reference is None:
            raise invalid(
                "categorical features are declared for the drift profile: give reference data"
            )
        if isinstance(source, bytes):
            original = source
        else:
            try:
                original = Path(source).read_bytes()
            except OSError as exc:
                raise invalid(f"cannot read model file {source}: {exc.strerror}") from None
        spec, session, inspected = validate(original, name, "0")
        model_bytes = inspected.model_bytes
        if isinstance(config, Path):
            config = ModelConfig.from_toml(_read_text(config, "model config"), str(config))
        warm = None
        if warmup is not None:
            warm = warmup_file.read_warmup(warmup, spec)
            check_warmup(spec, session, warm)
        ref = profiles = None
        if reference is not None:
            ref = read_reference(reference, spec)
            if (
                categorical
                and not isinstance(ref, dict)
                and not (ref.ndim == 2 and 0 <= categorical[0] <= categorical[-1] < ref.shape[1])
            ):
                raise invalid(
                    f"categorical features {categorical} are not columns of the reference data"
                )
            profiles = drift_profiles(spec, ref, session, warm, categorical)
        for note in inspected.conversions:
            log.info("registering %s: %s", name, note)
        meta: dict[str, Any] = {
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "inputs": [_tensor_doc(t) for t in spec.inputs],
            "outputs": [_tensor_doc(t) for t in spec.outputs],
            "metadata": metadata or {},
            "lineage": lineage or {},
        }
        if categorical:
            meta["categorical"] = categorical
        if inspected.conversions:
            meta["conversions"] = list(inspected.conversions)
            meta["source_sha256"] = hashlib.sha256(original).hexdigest()
        files = {MODEL_FILE: model_bytes, META_FILE: orjson.dumps(meta, option=orjson.OPT_INDENT_2)}
        if card is not None:
            files[CARD_FILE] = card.encode()
        if isinstance(ref, dict):  # arrays by input name: kept as such
            files[REFERENCE_FILE] = warmup_file.to_npz_bytes(ref)
        elif ref is not None:
            files[REFERENCE_FILE] = warmup_file.to_npz_bytes({"data": ref})
        if profiles is not None:
            files[PROFILE_FILE] = profiles
        if warm is not None:
            files[WARMUP_FILE] = warmup_file.to_npz_bytes(warm)
        if config is not None:
            files[CONFIG_FILE] = config.to_toml().encode()
        return self._read(name, self._write_version(name, files))

    def _write_version(self, name: str, files: dict[str, bytes]) -> str:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(), dir=folder))
        try:
            for file, data in files.items():
                write_synced(temp / file, data)
            fsync_dir(temp)
            return self._publish(temp, folder)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def set_config(self, name: str, version: str, config: ModelConfig) -> VersionInfo:
        """Replace a version's serving configuration (whole: written beside it, fsynced and
        renamed over `config.toml`). Gateways apply it when they next load the version."""
        info = self.get(name, version)
        target = info.path / CONFIG_FILE
        temp = info.path / f"{_TEMP_PREFIX}{CONFIG_FILE}.{os.getpid()}"
        try:
            write_synced(temp, config.to_toml().encode())
            os.replace(temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        fsync_dir(info.path)
        return self._read(name, info.version)

    # -- gate results: one file per version, written once -------------------------------------
    def write_gates(self, info: VersionInfo, doc: dict[str, Any]) -> None:
        """Record `info`'s gate results (`gates.json` in its folder). Written once: a version
        that already has results is a CONFLICT, so what a version was judged on never changes
        behind its back. The file is written aside, fsynced, and hard-linked into place (a link
        never replaces an existing file), so a reader sees the whole document or none."""
        final = info.path / GATES_FILE
        temp = info.path / f".{GATES_FILE}.{os.getpid()}-{time.monotonic_ns()}"
        write_synced(temp, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        try:
            os.link(temp, final)
        except FileExistsError:
            raise LockgateError(
                ErrorKind.CONFLICT,
                f"{info.name} v{info.version} already has recorded gate results ({final})",
            ) from None
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(info.path)

    def verdicts(self, versions: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], bool]:
        """{(model, version): passed} of the given versions that have recorded gate results
        (read without the rest of each version: the admin API asks at every change)."""
        out = {}
        for name, numbers in versions.items():
            for version in numbers:
                verdict = self._verdict(self.root / name / version)
                if verdict is not None:
                    out[(name, version)] = verdict
        return out

    def gates(self, info: VersionInfo) -> dict[str, Any] | None:
        """The version's recorded gate results, or None when it has none."""
        try:
            doc: dict[str, Any] = orjson.loads((info.path / GATES_FILE).read_bytes())
        except FileNotFoundError:
            return None
        return doc

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
    doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
    if t.labels:
        doc["labels"] = list(t.labels)
    return doc


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid(f"cannot read the {what} {path}: {exc}") from None
