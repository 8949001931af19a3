"""Training data from what the gateway actually saw: the prediction log's logged input features,
joined by request id with the feedback labels, reproducibly (the manifest's content hash names
exactly the rows a model was trained on).

The labels are read first, and of the prediction log only the rows of labelled requests are kept,
chunk by chunk: memory and time follow the labelled rows, not the traffic (an hour of a busy
endpoint is tens of millions of rows, a few of them labelled). The join is vectorised (sort +
unique + searchsorted): a request counts once, by the first row it logged (rows of a multi-row
request, or a shadow's copy, share its id, and feedback labels a request, not a row); a request
labelled twice keeps its latest label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.monitor.predlog import FeedbackLog, PredictionLog

Array = np.ndarray[Any, Any]
_COLUMNS = ["ts", "request_id", "inputs"]


@dataclass(frozen=True, slots=True)
class Dataset:
    """Labelled rows, oldest first."""

    x: Array  # float32 [rows, features]: the logged `inputs` column
    y: Array  # float64 [rows]: the feedback label
    ts: Array  # float64 [rows]: when the prediction was made (unix seconds)
    manifest: dict[str, Any]  # hash, rows, time_range, versions, features, ...

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


def content_hash(x: Array, y: Array) -> str:
    """sha256 over the shapes and bytes of x (float32) and y (float64): equal data, equal hash."""
    x = np.ascontiguousarray(x, dtype="<f4")
    y = np.ascontiguousarray(y, dtype="<f8")
    digest = hashlib.sha256()
    digest.update(f"x{x.shape}y{y.shape}".encode())
    digest.update(x.data)
    digest.update(y.data)
    return digest.hexdigest()


def _manifest(x: Array, y: Array, ts: Array, **extra: Any) -> dict[str, Any]:
    time_range = [float(ts.min()), float(ts.max())] if ts.size else [None, None]
    return {
        "hash": content_hash(x, y),
        "rows": int(x.shape[0]),
        "time_range": time_range,
        "features": int(x.shape[1]),
        **extra,
    }


def _read_predictions(
    predlog: PredictionLog,
    model: str,
    versions: list[str],
    start: float,
    end: float,
    feature_count: int | None,
    label_ids: Array,
) -> tuple[Array, Array, Array, int]:
    """(ts, request_id, inputs) of every version's rows whose request id is in the sorted
    `label_ids`, ordered by time (ties: version order, then write order), and how many rows
    were logged in the window in all."""
    parts: list[dict[str, Array]] = []
    logged = 0

    def labelled(cols: dict[str, Array]) -> Array:
        nonlocal logged
        rows = cols["ts"].shape[0]
        logged += rows
        ids = cols.get("request_id")
        if ids is None or not label_ids.size:  # a log without ids is reported below
            return np.zeros(rows, np.bool_)
        pos = np.minimum(np.searchsorted(label_ids, ids), label_ids.size - 1)
        return np.asarray(label_ids[pos] == ids)

    for version in versions:
        cols = predlog.read_predictions(model, version, start, end, _COLUMNS, labelled)
        if not cols:
            continue
        if any(c not in cols for c in _COLUMNS):
            raise invalid(f"{model} v{version}: the prediction log lacks one of {_COLUMNS}")
        width = cols["inputs"].shape[1]
        if width == 0:
            raise invalid(
                f"{model} v{version}: no input features were logged (only numeric inputs of at "
                "most 256 values per row are monitored), so there is nothing to train on"
            )
        expected = parts[0]["inputs"].shape[1] if parts else width
        if feature_count is not None:
            expected = feature_count
        if width != expected:
            raise invalid(f"{model} v{version}: logged {width} input features, expected {expected}")
        parts.append(cols)
    if not parts:
        features = feature_count or 0
        return np.zeros(0), np.zeros(0, "S32"), np.zeros((0, features), np.float32), logged
    ts = np.concatenate([p["ts"] for p in parts])
    ids = np.concatenate([p["request_id"] for p in parts])
    inputs = np.concatenate([p["inputs"] for p in parts])
    order = np.argsort(ts, kind="stable")
    return ts[order], ids[order], inputs[order], logged


def _latest_labels(
    feedback: FeedbackLog, start: float, sources: Collection[str] | None
) -> tuple[Array, Array]:
    """(sorted unique request ids, the latest label of each), from labels logged since
    `start` (a label comes after its prediction) by one of `sources` (None: any). Ties in ts:
    the one written last wins."""
    cols = feedback.read_labels(start, None, sources)
    if not cols or cols["ts"].shape[0] == 0:
        return np.zeros(0, "S32"), np.zeros(0)
    ids, ts, label = cols["request_id"], cols["ts"], cols["label"]
    order = np.lexsort((ts, ids))  # by id, then time; stable, so write order breaks ties
    ids, label = ids[order], label[order]
    last = np.ones(ids.shape[0], np.bool_)
    last[:-1] = ids[1:] != ids[:-1]
    return ids[last], label[last]


def build_dataset(
    predlog: PredictionLog,
    feedback: FeedbackLog,
    model: str,
    versions: list[str],
    start: float,
    end: float,
    max_rows: int,
    feature_count: int | None = None,
    label_sources: Collection[str] | None = None,
) -> Dataset:
    """Labelled predictions of `versions` of `model` with `start <= ts < end`: the newest
    `max_rows`, oldest first. Rows without a (finite) label or with non-finite features are
    dropped. `feature_count`, when given, is the width every version must have logged;
    `label_sources`, when given, the API key names whose labels count (others are ignored)."""
    if max_rows < 1:
        raise invalid(f"max_rows must be >= 1, got {max_rows}")
    versions = [str(v) for v in versions]
    label_ids, labels = _latest_labels(feedback, start, label_sources)
    ts, ids, inputs, logged = _read_predictions(
        predlog, model, versions, start, end, feature_count, label_ids
    )
    _, first = np.unique(ids, return_index=True)  # index of each id's first row in time order
    first.sort()
    ts, ids, inputs = ts[first], ids[first], inputs[first]
    # Every id left has a label: the read kept only those.
    y = labels[np.searchsorted(label_ids, ids)] if ids.size else np.zeros(0)
    keep = np.isfinite(y) & np.isfinite(inputs).all(axis=1)
    x = np.ascontiguousarray(inputs[keep], dtype=np.float32)[-max_rows:]
    y = np.asarray(y[keep], dtype=np.float64)[-max_rows:]
    ts = np.asarray(ts[keep], dtype=np.float64)[-max_rows:]
    manifest = _manifest(
        x,
        y,
        ts,
        model=model,
        versions=versions,
        window=[float(start), float(end)],
        logged_rows=logged,
        labelled_requests=int(ids.shape[0]),
        **({"label_sources": sorted(label_sources)} if label_sources is not None else {}),
    )
    return Dataset(x, y, ts, manifest)


def require_rows(dataset: Dataset, min_rows: int) -> Dataset:
    """The dataset itself, or UNAVAILABLE (not enough labels yet: try again later)."""
    if dataset.rows < min_rows:
        m = dataset.manifest
        raise LockgateError(
            ErrorKind.UNAVAILABLE,
            f"not enough labelled rows to train: {dataset.rows} < data.min_rows {min_rows} "
            f"({m.get('model')} versions {m.get('versions')}, window {m.get('window')})",
        )
    return dataset


def split(dataset: Dataset, holdout_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, holdout): a seeded random partition (both keep time order). The same dataset
    and seed always give the same split; each part's manifest names the parent's hash."""
    n = dataset.rows
    if not 0 < holdout_fraction < 1:
        raise invalid(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if n < 2:
        raise invalid(f"cannot split {n} rows into a training set and a holdout")
    held = min(n - 1, max(1, round(n * holdout_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    holdout_index = np.sort(order[:held])
    train_index = np.sort(order[held:])

    def part(index: Array, name: str) -> Dataset:
        x, y, ts = dataset.x[index], dataset.y[index], dataset.ts[index]
        base = {k: v for k, v in dataset.manifest.items() if k not in ("hash", "rows")}
        manifest = {
            **base,
            **_manifest(x, y, ts),
            "split": {
                "part": name,
                "parent_hash": dataset.manifest["hash"],
                "holdout_fraction": holdout_fraction,
                "seed": seed,
            },
        }
        return replace(dataset, x=x, y=y, ts=ts, manifest=manifest)

    return part(train_index, "train"), part(holdout_index, "holdout")
