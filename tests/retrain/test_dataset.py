"""Datasets from real prediction and feedback logs, checked against a plain-Python join."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain.dataset import Dataset, build_dataset, require_rows, split
from tests.conftest import single_threaded

Array = np.ndarray[Any, Any]
T0 = 1.7e9
F = 3


def logs(tmp_path: Path) -> tuple[PredictionLog, FeedbackLog]:
    return PredictionLog(tmp_path / "predlog"), FeedbackLog(tmp_path / "feedback")


def predict(log: PredictionLog, version: str, ts: float, rid: str, rows: Array) -> None:
    """One request (all its rows share the request id and the batch's ts)."""
    rows = np.asarray(rows, np.float32).reshape(-1, F)
    log.append_predictions(
        "m",
        version,
        ts=ts,
        request_id=np.array([rid.encode()] * len(rows), dtype="S32"),
        endpoint="m",
        variant="stable",
        inputs=rows,
        outputs=np.zeros((len(rows), 1), np.float32),
        latency_s=0.001,
        queue_s=0.0,
    )


def label(log: FeedbackLog, ts: float, rid: str, value: float) -> None:
    log.append_labels(ts, np.array([rid.encode()], dtype="S32"), np.array([value]))


def reference_join(
    predictions: list[tuple[float, int, int, str, Array]],
    labels: list[tuple[float, int, str, float]],
    start: float,
    end: float,
    max_rows: int,
) -> tuple[Array, Array, Array]:
    """Plain Python: first row per request in time order, latest label per id."""
    first: dict[str, tuple[float, Array]] = {}
    for ts, _, _, rid, row in sorted(predictions, key=lambda p: (p[0], p[1], p[2])):
        if start <= ts < end and rid not in first:
            first[rid] = (ts, row)
    latest: dict[str, tuple[float, int, float]] = {}
    for ts, order, rid, value in labels:
        if ts >= start and (rid not in latest or (ts, order) >= latest[rid][:2]):
            latest[rid] = (ts, order, value)
    joined = [(ts, row, latest[rid][2]) for rid, (ts, row) in first.items() if rid in latest]
    joined.sort(key=lambda j: j[0])
    joined = joined[-max_rows:]
    x = np.array([j[1] for j in joined], np.float32).reshape(-1, F)
    return x, np.array([j[2] for j in joined]), np.array([j[0] for j in joined])


def test_join_matches_a_plain_python_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    plog, flog = logs(tmp_path)
    predictions: list[tuple[float, int, int, str, Array]] = []
    labels: list[tuple[float, int, str, float]] = []
    written = 0
    for i in range(400):
        version = int(rng.integers(0, 2))
        # some requests are seen by both versions (a shadow copy): same id, later or equal ts
        rid = f"req-{i}" if rng.random() > 0.1 else f"req-{int(rng.integers(0, max(i, 1)))}"
        ts = T0 + float(rng.integers(0, 300))  # repeated timestamps on purpose
        rows = rng.normal(size=(int(rng.integers(1, 4)), F)).astype(np.float32)
        predict(plog, str(version + 1), ts, rid, rows)
        for row in rows:
            predictions.append((ts, version, written, rid, row))
            written += 1
    for j in range(500):
        rid = f"req-{int(rng.integers(0, 450))}"  # unknown ids and unlabelled requests too
        ts = T0 + 300 + float(rng.integers(0, 50))
        value = float(rng.integers(0, 2))
        label(flog, ts, rid, value)
        labels.append((ts, j, rid, value))

    for start, end, max_rows in (
        (T0, T0 + 1000, 10_000),
        (T0 + 50, T0 + 200, 10_000),
        (T0, T0 + 1000, 37),
    ):
        data = build_dataset(plog, flog, "m", ["1", "2"], start, end, max_rows)
        x, y, ts = reference_join(predictions, labels, start, end, max_rows)
        assert data.rows == len(y) > 0
        np.testing.assert_array_equal(data.x, x)
        np.testing.assert_array_equal(data.y, y)
        np.testing.assert_array_equal(data.ts, ts)
        assert data.x.dtype == np.float32 and data.y.dtype == np.float64
        assert data.manifest["rows"] == len(y)
        assert data.manifest["time_range"] == [ts.min(), ts.max()]
        assert data.manifest["versions"] == ["1", "2"]
        assert data.manifest["features"] == F


def test_duplicate_labels_keep_the_latest(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    predict(plog, "1", T0, "a", [[1, 2, 3]])
    predict(plog, "1", T0 + 1, "b", [[4, 5, 6]])
    label(flog, T0 + 20, "a", 1.0)  # written first, but the latest by time
    label(flog, T0 + 10, "a", 0.0)
    label(flog, T0 + 10, "b", 0.0)
    label(flog, T0 + 10, "b", 1.0)  # same time: the one written last wins
    data = build_dataset(plog, flog, "m", ["1"], T0, T0 + 100, 100)
    np.testing.assert_array_equal(data.y, [1.0, 1.0])


def test_multi_row_requests_use_their_first_row(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    predict(plog, "1", T0, "multi", [[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    predict(plog, "2", T0 + 1, "multi", [[9, 9, 9]])  # a shadow's copy, later
    label(flog, T0 + 5, "multi", 1.0)
    data = build_dataset(plog, flog, "m", ["1", "2"], T0, T0 + 100, 100)
    np.testing.assert_array_equal(data.x, [[1, 1, 1]])
    assert data.manifest["logged_rows"] == 4 and data.manifest["labelled_requests"] == 1


@pytest.mark.single_thread  # it starts tracemalloc: see tests/conftest.py
def test_unlabelled_traffic_is_never_held_in_memory(tmp_path: Path) -> None:
    """Busy traffic, few labels: the read keeps only labelled rows, chunk by chunk, so its peak
    memory is a fraction of what the window holds."""
    plog, flog = logs(tmp_path)
    rows_per_chunk, chunks = 20_000, 20
    for c in range(chunks):
        numbers = np.arange(c * rows_per_chunk, (c + 1) * rows_per_chunk)
        ids = np.char.add(b"id", numbers.astype("S"))
        plog.append_predictions(
            "m",
            "1",
            ts=T0 + c + np.arange(rows_per_chunk) / rows_per_chunk,
            request_id=ids.astype("S32"),
            endpoint="m",
            variant="stable",
            inputs=np.full((rows_per_chunk, F), c, np.float32),
            outputs=np.zeros((rows_per_chunk, 1), np.float32),
            latency_s=0.001,
            queue_s=0.0,
        )
    plog.flush()
    for c in range(0, chunks, 4):
        label(flog, T0 + 100, f"id{c * rows_per_chunk + 7}", 1.0)
    single_threaded()
    tracemalloc.start()
    data = build_dataset(plog, flog, "m", ["1"], T0, T0 + 100, 1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(data.x[:, 0], np.arange(0, chunks, 4))
    assert data.manifest["logged_rows"] == rows_per_chunk * chunks
    window_bytes = rows_per_chunk * chunks * (8 + 32 + 4 * F)  # ts, request id, inputs
    assert peak < window_bytes / 4  # reading it all would hold more than window_bytes


def test_time_window_and_unlabelled_rows(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    for i in range(10):
        predict(plog, "1", T0 + i, f"r{i}", [[i, 0, 0]])
        if i != 5:
            label(flog, T0 + 50, f"r{i}", float(i % 2))
    data = build_dataset(plog, flog, "m", ["1"], T0 + 3, T0 + 8, 100)
    np.testing.assert_array_equal(data.ts, T0 + np.array([3, 4, 6, 7]))
    np.testing.assert_array_equal(data.x[:, 0], [3, 4, 6, 7])
    np.testing.assert_array_equal(data.y, [1, 0, 0, 1])
    assert data.manifest["window"] == [T0 + 3, T0 + 8]


def test_max_rows_keeps_the_newest(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    for i in range(20):
        predict(plog, "1", T0 + 19 - i, f"r{i}", [[19 - i, 0, 0]])  # logged newest first
        label(flog, T0 + 100, f"r{i}", 1.0)
    data = build_dataset(plog, flog, "m", ["1"], T0, T0 + 100, 5)
    np.testing.assert_array_equal(data.x[:, 0], [15, 16, 17, 18, 19])


def test_non_finite_features_and_labels_are_dropped(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    predict(plog, "1", T0, "a", [[np.nan, 0, 0]])
    predict(plog, "1", T0, "b", [[1, 0, 0]])
    predict(plog, "1", T0, "c", [[2, 0, 0]])
    label(flog, T0 + 1, "a", 1.0)
    label(flog, T0 + 1, "b", np.nan)
    label(flog, T0 + 1, "c", 0.0)
    data = build_dataset(plog, flog, "m", ["1"], T0, T0 + 10, 10)
    np.testing.assert_array_equal(data.x, [[2, 0, 0]])


def test_empty_logs_and_feature_count(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    data = build_dataset(plog, flog, "m", ["1"], T0, T0 + 10, 10, feature_count=F)
    assert data.rows == 0 and data.x.shape == (0, F)
    assert data.manifest["time_range"] == [None, None]
    predict(plog, "1", T0, "a", [[1, 2, 3]])
    with pytest.raises(LockgateError, match="logged 3 input features, expected 4"):
        build_dataset(plog, flog, "m", ["1"], T0, T0 + 10, 10, feature_count=4)


def build(tmp_path: Path, change: float = 0.0, label_value: float = 1.0) -> Dataset:
    plog, flog = logs(tmp_path)
    for i in range(30):
        predict(plog, "1", T0 + i, f"r{i}", [[i + (change if i == 7 else 0.0), 1, 2]])
        label(flog, T0 + 100, f"r{i}", label_value if i == 3 else 0.0)
    return build_dataset(plog, flog, "m", ["1"], T0, T0 + 100, 100)


def test_content_hash(tmp_path: Path) -> None:
    a = build(tmp_path / "a")
    b = build(tmp_path / "b")
    assert a.manifest["hash"] == b.manifest["hash"]
    assert len(a.manifest["hash"]) == 64
    assert build(tmp_path / "c", change=1e-3).manifest["hash"] != a.manifest["hash"]
    assert build(tmp_path / "d", label_value=0.0).manifest["hash"] != a.manifest["hash"]


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    data = build(tmp_path)
    train, holdout = split(data, 0.2, seed=3)
    assert (train.rows, holdout.rows) == (24, 6)
    again_train, again_holdout = split(data, 0.2, seed=3)
    np.testing.assert_array_equal(train.x, again_train.x)
    np.testing.assert_array_equal(holdout.ts, again_holdout.ts)
    assert set(train.ts) & set(holdout.ts) == set()
    assert sorted(set(train.ts) | set(holdout.ts)) == list(data.ts)
    assert np.all(np.diff(train.ts) > 0)  # both parts keep time order
    assert holdout.manifest["split"]["parent_hash"] == data.manifest["hash"]
    assert holdout.manifest["rows"] == 6 and holdout.manifest["hash"] != data.manifest["hash"]
    _, other = split(data, 0.2, seed=4)
    assert set(other.ts) != set(holdout.ts)
    with pytest.raises(LockgateError):
        split(data, 1.0, seed=0)


def test_require_rows(tmp_path: Path) -> None:
    data = build(tmp_path)
    assert require_rows(data, 30) is data
    with pytest.raises(LockgateError, match=re.escape("30 < data.min_rows 31")) as caught:
        require_rows(data, 31)
    assert caught.value.kind is ErrorKind.UNAVAILABLE


def test_versions_that_logged_no_features_are_refused(tmp_path: Path) -> None:
    plog, flog = logs(tmp_path)
    plog.append_predictions(
        "m",
        "1",
        ts=T0,
        request_id=np.array([b"a"], dtype="S32"),
        endpoint="m",
        variant="stable",
        inputs=np.zeros((1, 0), np.float32),
        outputs=np.zeros((1, 1), np.float32),
        latency_s=0.001,
        queue_s=0.0,
    )
    with pytest.raises(LockgateError, match="no input features were logged"):
        build_dataset(plog, flog, "m", ["1"], T0, T0 + 10, 10)


@pytest.mark.parametrize("column", ["request_id", "inputs"])
def test_a_log_without_a_needed_column_is_named(tmp_path: Path, column: str) -> None:
    plog, flog = logs(tmp_path)
    chunk = {
        "ts": np.array([T0]),
        "request_id": np.array([b"a"], dtype="S32"),
        "inputs": np.zeros((1, F), np.float32),
    }
    del chunk[column]
    plog.append(("m", "1"), chunk)
    label(flog, T0 + 1, "a", 1.0)
    with pytest.raises(LockgateError, match=r"m v1: the prediction log lacks one of"):
        build_dataset(plog, flog, "m", ["1"], T0, T0 + 10, 10)
