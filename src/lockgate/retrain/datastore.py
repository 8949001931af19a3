"""Labelled data on disk: the content-addressed snapshots a retrained version was trained and
judged on, and the labelled files an operator evaluates a version with.

Snapshots live under `<home>/data/<hash>.npz`, where the hash is `dataset.content_hash(x, y)`
(sha256 over the shapes and bytes of x as float32 and y as float64): the name says what the file
holds, identical data is stored once however many versions use it, and a read checks the content
against its name. The prediction log forgets old rows as its retention requires; the snapshot
keeps exactly the rows a version's lineage names, so the version can be rebuilt.

Labelled files for `lockgate models evaluate`:
- `.npz` with arrays `X` (or `x`) of shape [rows, features] and `y` of shape [rows];
- `.csv` with a header row; the column named `label` (or the one given) is y, every other column
  is a feature, in file order.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.fsutil import fsync_dir, write_synced
from lockgate.retrain.dataset import content_hash

Array = np.ndarray[Any, Any]
DATA_DIR = "data"


class DataStore:
    """Snapshots of labelled data under `<home>/data`, named by their content hash."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / DATA_DIR

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise invalid(f"not a sha256 content hash: {digest!r}")
        return self.root / f"{digest}.npz"

    def put(self, x: Array, y: Array) -> str:
        """Store (x, y) unless already stored; returns its content hash."""
        x = np.ascontiguousarray(x, dtype="<f4")
        y = np.ascontiguousarray(y, dtype="<f8")
        digest = content_hash(x, y)
        final = self.path(digest)
        if final.exists():
            return digest
        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        temp = self.root / f".{digest}.{os.getpid()}-{time.monotonic_ns()}"
        try:
            write_synced(temp, buf.getvalue())
            os.replace(temp, final)  # the same content under the same name: a race is harmless
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(self.root)
        return digest

    def get(self, digest: str) -> tuple[Array, Array]:
        """(x float32, y float64) of a snapshot; NOT_FOUND when it is gone, UNAVAILABLE when its
        content no longer matches its name."""
        path = self.path(digest)
        try:
            with np.load(path, allow_pickle=False) as archive:
                x, y = np.asarray(archive["x"]), np.asarray(archive["y"])
        except FileNotFoundError:
            raise not_found(f"the data snapshot {path} does not exist") from None
        except (OSError, ValueError, KeyError) as exc:
            raise LockgateError(
                ErrorKind.UNAVAILABLE, f"cannot read the data snapshot {path}: {exc}"
            ) from None
        if content_hash(x, y) != digest:
            raise LockgateError(
                ErrorKind.UNAVAILABLE, f"the data snapshot {path} does not match its hash"
            )
        return x, y


def load_labelled(path: Path, label_column: str = "label") -> tuple[Array, Array]:
    """(x float32 [rows, features], y float64 [rows]) from a `.npz` or `.csv` file (see the
    module doc); INVALID naming the problem."""
    path = Path(path)
    if path.suffix == ".npz":
        x, y = _npz(path)
    elif path.suffix == ".csv":
        x, y = _csv(path, label_column)
    else:
        raise invalid(f"labelled data must be .npz (X, y) or .csv (with a header), got {path}")
    if x.ndim != 2 or x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise invalid(f"{path}: X must be [rows, features] and y [rows], got {x.shape}, {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise invalid(f"{path}: X and y must be finite numbers")
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float64)


def _npz(path: Path) -> tuple[Array, Array]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            key = "X" if "X" in names else "x"
            if key not in names or "y" not in names:
                raise invalid(f"{path}: needs arrays 'X' and 'y', has {sorted(names)}")
            x, y = np.asarray(archive[key]), np.asarray(archive["y"])
    except (OSError, ValueError) as exc:
        raise invalid(f"cannot read {path}: {exc}") from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise invalid(f"{path}: X and y must be numeric, got {x.dtype} and {y.dtype}")
    return x.astype(np.float64), y.reshape(-1).astype(np.float64)


def _csv(path: Path, label_column: str) -> tuple[Array, Array]:
    try:
        with path.open(encoding="utf-8") as fh:
            header = [c.strip() for c in fh.readline().strip().split(",")]
            table = np.loadtxt(fh, delimiter=",", ndmin=2, dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"cannot read {path}: {exc}") from None
    if label_column not in header:
        raise invalid(f"{path}: no column {label_column!r} in the header {header}")
    if table.shape[1] != len(header):
        raise invalid(f"{path}: {table.shape[1]} columns of numbers, {len(header)} in the header")
    label = header.index(label_column)
    features = [i for i in range(len(header)) if i != label]
    return table[:, features], table[:, label]
