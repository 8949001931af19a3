"""Append-only segment files for the prediction and feedback logs, written in bulk by the
monitor's drain (never on the request path) and read back as numpy arrays by the admin API
and the retrain worker.

Layout: ``<root>/<key part>/.../<first-ts-ns>-<seq>.seg``; for predictions the key is
``(model, version)``. A segment is a sequence of chunks, one per :meth:`SegmentLog.append`::

    frame   = <4s magic "LGC1"><u32 payload_len><u32 header_len><u32 rows>
              <f64 ts_min><f64 ts_max><u32 payload_crc32><u32 crc32 of the 36 bytes before>
    payload = msgpack [[name, dtype.str, [trailing dims]], ...]  (header_len bytes)
              then each column's raw bytes, little-endian, C order

All integers are little-endian. The frame carries the chunk's time range under its own checksum,
so a time-range read skips chunks with one small read; the segment name's timestamp is a lower
bound of every ts in it (the writer rotates when time goes backwards), so whole segments are
skipped by name. A chunk cut short at the end of a file is a torn tail (a crash, or a writer still
appending): the data ends there. A chunk with a bad frame or checksum is corrupt: reading that
segment stops there, it is counted and logged once. Reads never raise on either.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Self

import msgpack
import numpy as np

from lockgate.errors import invalid
from lockgate.fsutil import fsync_dir

log = logging.getLogger(__name__)
Array = np.ndarray[Any, Any]
Key = tuple[str, ...]
Chunks = Iterator[tuple[dict[str, Array], float, float]]  # (columns, ts_min, ts_max)

MAGIC = b"LGC1"
FRAME = struct.Struct("<4sIIIddII")  # see the module docstring; the last field checks the rest
_CHECKED = FRAME.size - 4
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# <first ts ns>-<seq>[-<writer>].seg; the writer (replica, worker) keeps the processes that share
# a folder apart in the file names; readers merge every writer's segments.
_SEGMENT = re.compile(r"(\d+)-(\d+)(?:-[A-Za-z0-9_.]+)?\.seg")
_WRITER = re.compile(r"[^A-Za-z0-9_.]+")
_KINDS = "biufcS"  # numeric dtypes and fixed-width bytes
_WRITE_BUFFER = 256 * 1024
REQUEST_ID = "S32"  # request ids as stored by the ring
_MARGIN_S = 1e-3  # float slack when comparing a segment's name timestamp with a bound


@dataclass(slots=True)
class SegmentLogStats:
    """Counters since this object was created (readers add corrupt chunks and torn tails)."""

    chunks_written: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    segments_rotated: int = 0
    segments_deleted: int = 0
    bytes_deleted: int = 0
    corrupt_chunks: int = 0  # distinct corrupt chunks seen by reads
    torn_tails: int = 0  # reads that found an incomplete last chunk


@dataclass(slots=True)
class _Open:
    path: Path
    file: BinaryIO
    opened: float  # clock() at creation
    lo: float  # ts_min of its first chunk: a lower bound of every ts in the segment
    size: int = 0
    dirty: bool = False


def _check_key(key: Key) -> None:
    if not key or not all(isinstance(p, str) and _KEY_PART.fullmatch(p) for p in key):
        raise invalid(f"bad log key {key!r}: parts must match {_KEY_PART.pattern}")


def _segments(folder: Path) -> list[tuple[int, int, Path]]:
    """(seq, first ts ns, path) of the folder's segments, in write order."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(m, folder / n) for n in names if (m := _SEGMENT.fullmatch(n))]
    return sorted((int(m[2]), int(m[1]), p) for m, p in found)


def _decode(payload: bytes, header_len: int, rows: int, crc: int) -> dict[str, Array]:
    """Column views into the payload; raises (ValueError, ...) when it does not add up."""
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    spec = msgpack.unpackb(payload[:header_len])
    out: dict[str, Array] = {}
    offset = header_len
    for name, dtype_str, tail in spec:
        dtype = np.dtype(dtype_str)
        if dtype.kind not in _KINDS:
            raise ValueError(f"unexpected dtype {dtype_str!r}")
        shape = (rows, *(int(d) for d in tail))
        count = math.prod(shape)
        out[name] = np.frombuffer(payload, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    if offset != len(payload) or "ts" not in out:
        raise ValueError("columns do not match the payload")
    return out


class SegmentLog:
    """Durable, append-only columnar log in segment files, by stream key.

    One thread writes (``append``/``flush``/``close``, the drain); any thread or process may
    ``read`` at the same time. ``flush`` is the durability point: a crash loses at most what was
    appended since the last one. Retention deletes the oldest closed segments of all keys.
    """

    def __init__(
        self,
        root: Path,
        *,
        segment_bytes: int = 64 * 2**20,
        segment_seconds: float = 300.0,
        retention_bytes: int = 4 * 2**30,
        clock: Callable[[], float] = time.monotonic,
        writer: str = "",
    ) -> None:
        self.root = Path(root)
        self.writer = _WRITER.sub("_", writer)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.retention_bytes = retention_bytes
        self.stats = SegmentLogStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[Key, _Open] = {}
        self._corrupt_seen: set[tuple[Path, int]] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    def append(self, key: Key, columns: dict[str, Array]) -> None:
        """Write one chunk: equal-length columns including a float64 ``ts`` (unix seconds)."""
        ts = columns.get("ts")
        if not isinstance(ts, np.ndarray) or ts.dtype != np.float64 or ts.ndim != 1:
            raise invalid("a log chunk needs a 1-D float64 'ts' column")
        rows = ts.shape[0]
        if rows == 0:
            return
        lo, hi = float(ts.min()), float(ts.max())
        if not (lo >= 0.0 and hi < math.inf):
            raise invalid("'ts' must be finite unix seconds")
        spec: list[list[Any]] = []
        arrays: list[Array] = []
        for name, column in columns.items():
            a = np.asarray(column)
            shaped = a.ndim in (1, 2) and a.shape[0] == rows and isinstance(name, str)
            if a.dtype.kind not in _KINDS or not shaped:
                raise invalid(f"column {name!r}: need {rows} rows of numbers or bytes, 1-D or 2-D")
            if a.dtype.str[0] == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            a = np.ascontiguousarray(a)
            spec.append([name, a.dtype.str, list(a.shape[1:])])
            arrays.append(a)
        header = msgpack.packb(spec)
        length = len(header) + sum(a.nbytes for a in arrays)
        if length >= 2**32:
            raise invalid(f"a log chunk must stay under 4 GiB, not {length} bytes")
        # The chunk in one buffer, one checksum, one write: the drain calls this from its thread,
        # and each large crc32 or write lets go of the GIL and takes it back from the event loop.
        views = (a.reshape(-1).view(np.uint8).data for a in arrays)
        chunk = bytearray().join([bytes(FRAME.size), header, *views])
        crc = zlib.crc32(memoryview(chunk)[FRAME.size :])
        head = FRAME.pack(MAGIC, length, len(header), rows, lo, hi, crc, 0)[:_CHECKED]
        frame = head + struct.pack("<I", zlib.crc32(head))
        chunk[: FRAME.size] = frame
        with self._lock:
            seg = self._writable(key, lo)
            try:
                seg.file.write(chunk)
            except OSError:  # a half-written chunk: later chunks go to a fresh segment
                with contextlib.suppress(OSError):
                    self._open.pop(key).file.close()
                raise
            seg.size += len(frame) + length
            seg.dirty = True
            self.stats.chunks_written += 1
            self.stats.rows_written += rows
            self.stats.bytes_written += len(frame) + length
            if seg.size >= self.segment_bytes:
                self._rotate(key)

    def flush(self) -> None:
        """Make all appended chunks durable (flush + fsync); close segments past their age."""
        with self._lock:
            rotated = False
            for key, seg in list(self._open.items()):
                if seg.dirty:
                    seg.file.flush()
                    os.fsync(seg.file.fileno())
                    seg.dirty = False
                if self._clock() - seg.opened >= self.segment_seconds:
                    self._close_segment(key)
                    self.stats.segments_rotated += 1
                    rotated = True
            if rotated:
                self._retain()

    def close(self) -> None:
        """Flush and close every open segment (a later append opens new ones)."""
        with self._lock:
            for key in list(self._open):
                self._close_segment(key)

    def _writable(self, key: Key, lo: float) -> _Open:
        seg = self._open.get(key)
        if seg is not None and (lo < seg.lo or self._clock() - seg.opened >= self.segment_seconds):
            self._rotate(key)
            seg = None
        if seg is None:
            seg = self._open[key] = self._new_segment(key, lo)
        return seg

    def _new_segment(self, key: Key, lo: float) -> _Open:
        _check_key(key)
        folder = self.root.joinpath(*key)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            for parent in [folder, *folder.parents][: len(key) + 1]:
                fsync_dir(parent)
        existing = _segments(folder)
        seq = existing[-1][0] + 1 if existing else 1
        lo_ns = math.floor(lo * 1e9)
        while True:
            suffix = f"-{self.writer}" if self.writer else ""
            path = folder / f"{lo_ns:019d}-{seq:06d}{suffix}.seg"
            try:
                file = open(path, "xb", buffering=_WRITE_BUFFER)  # noqa: SIM115 - kept open
                break
            except FileExistsError:  # another process took this name
                seq += 1
        fsync_dir(folder)
        return _Open(path, file, self._clock(), lo)

    def _close_segment(self, key: Key) -> None:
        seg = self._open.pop(key)
        try:
            seg.file.flush()
            os.fsync(seg.file.fileno())
        finally:
            seg.file.close()

    def _rotate(self, key: Key) -> None:
        self._close_segment(key)
        self.stats.segments_rotated += 1
        self._retain()

    def _retain(self) -> None:
        """Delete the oldest closed segments (all keys) while the total exceeds the budget."""
        found = []
        for path in self.root.rglob("*.seg"):
            if m := _SEGMENT.fullmatch(path.name):
                with contextlib.suppress(FileNotFoundError):
                    found.append((int(m[1]), int(m[2]), path, path.stat().st_size))
        total = sum(f[3] for f in found)
        open_paths = {s.path for s in self._open.values()}
        for _, _, path, size in sorted(found):
            if total <= self.retention_bytes:
                break
            if path in open_paths:
                continue
            total -= size
            try:
                path.unlink()
            except FileNotFoundError:  # another process's retention got there first
                continue
            self.stats.segments_deleted += 1
            self.stats.bytes_deleted += size

    # -- reading -------------------------------------------------------------------------------
    def keys(self) -> list[Key]:
        """Every key with at least one segment."""
        found: list[Key] = []
        for folder, _, files in os.walk(self.root):
            parts = Path(folder).relative_to(self.root).parts
            if parts and any(_SEGMENT.fullmatch(f) for f in files):
                found.append(tuple(parts))
        return sorted(found)

    def read(
        self,
        key: Key,
        start: float | None = None,
        end: float | None = None,
        columns: list[str] | None = None,
        where: Callable[[dict[str, Array]], Array] | None = None,
    ) -> dict[str, Array]:
        """Rows of ``key`` with ``start <= ts < end``, in write order, as one array per column.

        Only columns present in every matching chunk are returned. With no matching rows the
        arrays are empty (typed like the key's first chunk), or the dict is empty for no data.
        ``where``, given each chunk's rows in range (every column), returns a boolean mask of
        the rows to keep: a read that keeps few rows then holds no more than those and one
        chunk in memory, however large the range.
        """
        _check_key(key)
        with self._lock:  # this process's own unflushed rows become visible to the read
            seg = self._open.get(key)
            if seg is not None:
                seg.file.flush()
        first = -math.inf if start is None else start
        stop = math.inf if end is None else end
        parts: list[dict[str, Array]] = []
        for cols, lo, hi in self._chunks(key, first, stop):
            if lo < first or hi >= stop:
                mask = (cols["ts"] >= first) & (cols["ts"] < stop)
                cols = {name: a[mask] for name, a in cols.items()}
            if where is not None:
                keep = where(cols)
                names = columns if columns is not None else list(cols)
                # Copies: views would keep every chunk's whole payload alive.
                cols = {name: cols[name][keep] for name in names if name in cols}
            parts.append(cols)
        if not parts:
            return self._empty(key, columns)
        names = [n for n in parts[0] if all(n in p for p in parts)]
        if columns is not None:
            names = [n for n in columns if n in names]
        return {n: np.concatenate([p[n] for p in parts]) for n in names}

    def _empty(self, key: Key, columns: list[str] | None) -> dict[str, Array]:
        for cols, _, _ in self._chunks(key, -math.inf, math.inf):
            names = columns if columns is not None else list(cols)
            return {n: cols[n][:0].copy() for n in names if n in cols}
        return {}

    def _chunks(self, key: Key, start: float, end: float) -> Chunks:
        """Every chunk of ``key`` that may hold rows in range, in write order."""
        for _, lo_ns, path in _segments(self.root.joinpath(*key)):
            if lo_ns / 1e9 - _MARGIN_S >= end:
                continue  # every ts in this segment is >= end
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # deleted by retention since the listing
                continue
            try:
                yield from self._scan(fd, path, start, end)
            finally:
                os.close(fd)

    def _scan(self, fd: int, path: Path, start: float, end: float) -> Chunks:
        offset = 0
        while frame := os.pread(fd, FRAME.size, offset):
            cols, why = None, ""  # an incomplete chunk is the end of the data so far
            if len(frame) == FRAME.size:
                magic, length, header_len, rows, lo, hi, crc, check = FRAME.unpack(frame)
                if magic != MAGIC or zlib.crc32(frame[:_CHECKED]) != check or header_len > length:
                    rest = os.pread(fd, max(0, os.fstat(fd).st_size - offset), offset)
                    why = "bad frame" if rest.strip(b"\0") else ""  # zeros: never written
                elif hi < start or lo >= end:
                    offset += FRAME.size + length
                    continue
                elif len(payload := os.pread(fd, length, offset + FRAME.size)) == length:
                    try:
                        cols = _decode(payload, header_len, rows, crc)
                    except Exception as exc:  # anything undecodable is corruption
                        why = repr(exc)
            if cols is None:
                self._bad(path, offset, why)
                return
            offset += FRAME.size + length
            yield cols, lo, hi

    def _bad(self, path: Path, offset: int, why: str) -> None:
        """Count a torn tail (no ``why``) or a corrupt chunk (logged once)."""
        with self._lock:
            if not why:
                self.stats.torn_tails += 1
                return
            if (path, offset) in self._corrupt_seen:
                return
            self._corrupt_seen.add((path, offset))
            self.stats.corrupt_chunks += 1
        log.warning("%s: corrupt chunk at byte %d (%s); skipped the rest", path, offset, why)
