"""Segment logs on real files: round trips, time ranges, rotation and retention, torn and
corrupt chunks, a writer killed with SIGKILL, and readers racing a writer."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.errors import LockgateError
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.monitor.segments import SegmentLog

Array = np.ndarray[Any, Any]

# Shared by the tests and the child process of the SIGKILL test: chunk i is a pure function of i.
CHUNK_SOURCE = """
import numpy as np

def make_chunk(i, scale=1):
    rows = (1 + (i * 7919) % 23) * scale
    base = np.arange(rows) + 100_000 * i
    return {
        "ts": 1.7e9 + i + base / 1e9,
        "x": np.stack([base, -base, base * 0.5], axis=1).astype(np.float32),
        "k": (base * 31).astype(np.int64),
        "id": base.astype("S32"),
    }
"""
_namespace: dict[str, Any] = {}
exec(CHUNK_SOURCE, _namespace)
make_chunk = _namespace["make_chunk"]

KEY = ("model", "1")


def concat(chunks: list[dict[str, Array]]) -> dict[str, Array]:
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def assert_columns_equal(got: dict[str, Array], want: dict[str, Array]) -> None:
    assert list(got) == list(want)
    for name, column in want.items():
        assert got[name].dtype == column.dtype, name
        np.testing.assert_array_equal(got[name], column, err_msg=name)


def segment_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.seg"))


def test_round_trip_across_keys_ranges_and_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    keys = [("m", "1"), ("m", "2"), ("other.model", "10")]
    written: dict[tuple[str, ...], list[dict[str, Array]]] = {k: [] for k in keys}
    with SegmentLog(tmp_path, segment_bytes=3000) as seglog:
        for i in range(60):
            key = keys[int(rng.integers(len(keys)))]
            chunk = make_chunk(i)
            chunk["ts"] = rng.permutation(chunk["ts"])  # rows need not be in time order
            if i % 17 == 5:
                chunk["ts"] = chunk["ts"] - 30.0  # time going backwards starts a segment
            seglog.append(key, chunk)
            written[key].append(chunk)
            if i % 10 == 0:  # reads see unflushed rows of their own process too
                assert_columns_equal(seglog.read(key), concat(written[key]))
        assert seglog.stats.segments_rotated > 3
    reader = SegmentLog(tmp_path)  # as another process would
    assert reader.keys() == sorted(keys)
    for key in keys:
        full = concat(written[key])
        assert_columns_equal(reader.read(key), full)
        for start, end in [(1.7e9 + 10, 1.7e9 + 40.5), (None, 1.7e9 + 20), (1.7e9 + 33, None)]:
            mask = np.ones(len(full["ts"]), bool)
            if start is not None:
                mask &= full["ts"] >= start
            if end is not None:
                mask &= full["ts"] < end
            want = {name: column[mask] for name, column in full.items()}
            assert_columns_equal(reader.read(key, start, end), want)
            subset = reader.read(key, start, end, columns=["id", "ts"])
            assert_columns_equal(subset, {"id": want["id"], "ts": want["ts"]})
            even = want["k"] % 2 == 0  # a row filter sees each chunk's rows in range
            filtered = reader.read(key, start, end, ["id", "ts"], lambda c: c["k"] % 2 == 0)
            assert_columns_equal(filtered, {"id": want["id"][even], "ts": want["ts"][even]})
        empty = reader.read(key, 1.0, 2.0)
        assert {n: (a.dtype, a.shape[1:]) for n, a in empty.items()} == {
            n: (a.dtype, a.shape[1:]) for n, a in full.items()
        }
        assert all(len(a) == 0 for a in empty.values())
    assert reader.read(("nothing", "here")) == {}
    assert reader.stats.corrupt_chunks == reader.stats.torn_tails == 0


def test_dtypes_and_shapes_survive(tmp_path: Path) -> None:
    ts = np.array([5.0, 6.0, 7.0])
    columns = {
        "ts": ts,
        "b": np.array([True, False, True]),
        "u8": np.array([1, 2, 255], np.uint8),
        "be": np.array([1.5, -2.0, 3.25], ">f8"),  # stored little-endian
        "f16": np.ones((3, 2), np.float16),
        "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
        "wide": np.zeros((3, 0), np.float32),
    }
    with SegmentLog(tmp_path) as seglog:
        seglog.append(KEY, columns)
        got = seglog.read(KEY)
    assert got["be"].dtype == np.dtype("<f8")
    for name, column in columns.items():
        np.testing.assert_array_equal(got[name], column)
        assert got[name].shape == column.shape


@pytest.mark.parametrize(
    ("key", "columns"),
    [
        (("../up", "1"), {"ts": np.zeros(1)}),
        ((), {"ts": np.zeros(1)}),
        (KEY, {"x": np.zeros(1)}),
        (KEY, {"ts": np.zeros(1, np.float32)}),
        (KEY, {"ts": np.array([np.nan])}),
        (KEY, {"ts": np.zeros(2), "x": np.zeros(3)}),
        (KEY, {"ts": np.zeros(2), "x": np.array(["a", "b"], object)}),
        (KEY, {"ts": np.zeros(2), "x": np.zeros((2, 2, 2))}),
    ],
)
def test_bad_appends_are_refused(
    tmp_path: Path, key: tuple[str, ...], columns: dict[str, Array]
) -> None:
    with SegmentLog(tmp_path) as seglog, pytest.raises(LockgateError):
        seglog.append(key, columns)
    assert segment_files(tmp_path) == []


def chunk_bytes(tmp_path: Path, chunk: dict[str, Array]) -> int:
    with SegmentLog(tmp_path / "probe") as probe:
        probe.append(KEY, chunk)
        return probe.stats.bytes_written


def fixed_chunk(ts: float) -> dict[str, Array]:
    return {"ts": np.full(4, ts), "x": np.arange(8, dtype=np.float32).reshape(4, 2)}


def test_rotation_by_size(tmp_path: Path) -> None:
    size = chunk_bytes(tmp_path, fixed_chunk(1.0))
    root = tmp_path / "log"
    with SegmentLog(root, segment_bytes=3 * size) as seglog:
        for i in range(10):
            seglog.append(KEY, fixed_chunk(1.0 + i))
        assert seglog.stats.segments_rotated == 3
        assert seglog.stats.chunks_written == 10 and seglog.stats.rows_written == 40
        assert seglog.stats.bytes_written == 10 * size
    sizes = [p.stat().st_size for p in segment_files(root)]
    assert sizes == [3 * size, 3 * size, 3 * size, size]
    assert [p.name.split("-")[0] for p in segment_files(root)] == [
        f"{t * 10**9:019d}" for t in (1, 4, 7, 10)
    ]


def test_rotation_by_time_with_an_injected_clock(tmp_path: Path) -> None:
    now = [100.0]
    with SegmentLog(tmp_path, segment_seconds=10.0, clock=lambda: now[0]) as seglog:
        seglog.append(KEY, fixed_chunk(1.0))
        now[0] += 5
        seglog.append(KEY, fixed_chunk(2.0))
        seglog.flush()
        assert len(segment_files(tmp_path)) == 1
        now[0] += 6
        seglog.append(KEY, fixed_chunk(3.0))  # the segment is 11 s old: a new one
        assert len(segment_files(tmp_path)) == 2
        now[0] += 10
        seglog.flush()  # an idle key's segment is closed at its age, not left open
        assert seglog.stats.segments_rotated == 2 and not seglog._open
        seglog.append(KEY, fixed_chunk(4.0))
        assert len(segment_files(tmp_path)) == 3
        assert_columns_equal(
            seglog.read(KEY), concat([fixed_chunk(t) for t in (1.0, 2.0, 3.0, 4.0)])
        )


def test_retention_deletes_the_oldest_segments_of_all_keys(tmp_path: Path) -> None:
    size = chunk_bytes(tmp_path, fixed_chunk(1.0))
    root = tmp_path / "log"
    a, b = ("m", "1"), ("m", "2")
    seglog = SegmentLog(root, segment_bytes=2 * size, retention_bytes=5 * size)
    for i in range(12):  # a: chunks 0,2 | 4,6 | 8,10; b: 1,3 | 5,7 | 9,11 (2 per segment)
        seglog.append(a if i % 2 == 0 else b, fixed_chunk(10.0 + i))
        total = sum(p.stat().st_size for p in segment_files(root))
        assert total <= 5 * size + 2 * size  # at most one open segment beyond the budget
    seglog.close()
    assert seglog.stats.segments_rotated == 6
    assert seglog.stats.segments_deleted == 4 and seglog.stats.bytes_deleted == 8 * size
    assert sum(p.stat().st_size for p in segment_files(root)) == 4 * size
    assert_columns_equal(seglog.read(a), concat([fixed_chunk(18.0), fixed_chunk(20.0)]))
    assert_columns_equal(seglog.read(b), concat([fixed_chunk(19.0), fixed_chunk(21.0)]))


def write_chunks(root: Path, n: int, **kwargs: Any) -> list[int]:
    """Write make_chunk(0..n-1) to KEY; the byte offset where each chunk ends."""
    ends = []
    with SegmentLog(root, **kwargs) as seglog:
        for i in range(n):
            seglog.append(KEY, make_chunk(i))
            ends.append(seglog.stats.bytes_written)
    return ends


def test_torn_tail_at_every_offset_of_the_last_chunk(tmp_path: Path) -> None:
    root = tmp_path / "log"
    ends = write_chunks(root, 3)
    (path,) = segment_files(root)
    data = path.read_bytes()
    assert len(data) == ends[-1]
    complete = concat([make_chunk(0), make_chunk(1)])
    header = 120  # every offset through the frame and the msgpack header, then a sample
    for cut in [*range(ends[1], ends[1] + header), *range(ends[1] + header, ends[2], 7)]:
        path.write_bytes(data[:cut])
        reader = SegmentLog(root)
        assert_columns_equal(reader.read(KEY), complete)
        assert reader.stats.corrupt_chunks == 0
        assert reader.stats.torn_tails == (cut > ends[1])
    path.write_bytes(data[: ends[1]] + bytes(300))  # zeros after a crash: also a torn tail
    reader = SegmentLog(root)
    assert_columns_equal(reader.read(KEY), complete)
    assert (reader.stats.corrupt_chunks, reader.stats.torn_tails) == (0, 1)


def test_corrupt_middle_chunk_ends_its_segment_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "log"
    ends = write_chunks(tmp_path / "probe", 3)
    write_chunks(root, 6, segment_bytes=ends[2])  # chunks 0-2 in the first segment
    first = segment_files(root)[0]
    data = first.read_bytes()
    assert len(data) == ends[2]
    want = concat([make_chunk(i) for i in (0, 3, 4, 5)])
    for offset in range(ends[0], ends[1], 4):  # frame, header and column bytes of chunk 1
        first.write_bytes(data[:offset] + bytes([data[offset] ^ 0x41]) + data[offset + 1 :])
        reader = SegmentLog(root)
        with caplog.at_level(logging.WARNING, "lockgate.monitor.predlog"):
            caplog.clear()
            for _ in range(2):
                assert_columns_equal(reader.read(KEY), want)
        assert (reader.stats.corrupt_chunks, reader.stats.torn_tails) == (1, 0)
        assert len(caplog.records) == 1 and "corrupt chunk" in caplog.records[0].getMessage()


KILL_CHILD = (
    CHUNK_SOURCE
    + """
import sys
from pathlib import Path
from lockgate.monitor.segments import SegmentLog

log = SegmentLog(Path(sys.argv[1]), segment_bytes=4_000)
i = 0
while True:
    log.append(("model", "1"), make_chunk(i))
    log.flush()
    i += 1
    print(i, flush=True)
"""
)


def test_sigkill_while_writing_loses_nothing_flushed(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    read = b""
    try:
        assert child.stdout is not None
        first = child.stdout.readline()  # started writing
        assert first, child.stderr.read() if child.stderr else ""
        read = first
        # killed mid-stream once it has rolled over to a second segment at least
        deadline = time.monotonic() + 60
        while len(segment_files(tmp_path)) < 2:
            assert time.monotonic() < deadline, "the writer never filled a segment"
            read += child.stdout.readline()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()
    lines = (read + out).decode().split("\n")
    flushed = int(lines[-2])  # the last complete line; a partial last one is ignored
    got = SegmentLog(tmp_path).read(KEY)
    rows = len(got["ts"])
    n, total = 0, 0
    while total < rows:
        total += len(make_chunk(n)["ts"])
        n += 1
    assert total == rows, "only whole chunks are read back"
    assert n >= flushed > 0
    assert_columns_equal(got, concat([make_chunk(i) for i in range(n)]))
    assert len(segment_files(tmp_path)) > 1


@pytest.mark.parametrize("same_object", [True, False])
def test_readers_racing_the_writer_see_whole_chunks(tmp_path: Path, same_object: bool) -> None:
    seglog = SegmentLog(tmp_path, segment_bytes=1_000_000)
    reader = seglog if same_object else SegmentLog(tmp_path)
    chunks = [make_chunk(i, scale=97) for i in range(60)]  # ~70 kB: writes cut chunks
    bounds = np.cumsum([0] + [len(c["ts"]) for c in chunks])
    full = concat(chunks)
    done = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def read_loop() -> None:
        try:
            while not done.is_set():
                got = reader.read(KEY)
                rows = len(got.get("ts", ()))
                assert rows in bounds, f"{rows} rows is not a whole number of chunks"
                assert_columns_equal(got, {n: c[:rows] for n, c in full.items()} if rows else got)
                reads[0] += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=read_loop)
    thread.start()
    for i, chunk in enumerate(chunks):
        seglog.append(KEY, chunk)
        if i % 5 == 0:
            seglog.flush()
            seen = reads[0]
            deadline = time.monotonic() + 60
            while reads[0] == seen and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.0005)  # until the reader has read in between writes
    seglog.close()
    done.set()
    thread.join(30)
    assert not failures, failures[0]
    assert reads[0] >= 12
    assert reader.stats.corrupt_chunks == 0
    assert_columns_equal(reader.read(KEY), full)


def test_prediction_and_feedback_wrappers(tmp_path: Path) -> None:
    rows = 5
    inputs = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16)
    with PredictionLog(tmp_path / "predictions") as predlog:
        predlog.append_predictions(
            "fraud",
            3,
            ts=np.linspace(100.0, 101.0, rows),
            request_id=np.array([f"r{i}" for i in range(rows)]),
            endpoint="fraud",
            variant=np.array([b"stable", b"canary"] * 2 + [b"stable"]),
            inputs=inputs,
            outputs=inputs[:, :2].copy(),
            latency_s=np.full(rows, 0.002, np.float32),
            queue_s=0.0,
        )
        got = predlog.read_predictions("fraud", 3, 100.2, None)
    assert predlog.keys() == [("fraud", "3")]
    np.testing.assert_array_equal(got["inputs"], inputs[1:])
    assert got["request_id"].dtype == np.dtype("S32") and got["request_id"][0] == b"r1"
    assert got["endpoint"].tolist() == [b"fraud"] * 4
    assert got["variant"].tolist() == [b"canary", b"stable", b"canary", b"stable"]
    assert got["queue_s"].dtype == np.float32 and got["ts"].dtype == np.float64
    with FeedbackLog(tmp_path / "feedback") as feedback:
        feedback.append_labels(200.0, np.array([b"r1", b"r2"], "S32"), np.array([1.0, 0.0]))
        feedback.append_labels(np.array([201.0]), np.array(["r4"]), 1.0)
        labels = feedback.read_labels(200.5)
        assert feedback.keys() == [("feedback",)]
    assert labels["request_id"].tolist() == [b"r4"] and labels["label"].tolist() == [1.0]
    assert feedback.read_labels()["label"].dtype == np.float64
