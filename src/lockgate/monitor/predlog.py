"""The prediction and feedback logs: :class:`~lockgate.monitor.segments.SegmentLog`s of
predictions (with their request ids, routes, clients and timings) and of ground-truth labels."""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from lockgate.monitor.segments import REQUEST_ID, Array, Key, SegmentLog


def _bytes_column(value: Array | str | bytes, rows: int) -> Array:
    """A per-row label column: a str/bytes broadcast to every row, or an array (codes or text)."""
    if isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        return np.full(rows, raw, dtype=f"S{max(1, len(raw))}")
    a = np.asarray(value)
    return a.astype("S") if a.dtype.kind == "U" else a


def _rows_of(request_id: Array, *scalars: Array | float) -> tuple[Array, list[Array]]:
    ids = np.asarray(request_id)
    ids = ids.astype(REQUEST_ID) if ids.dtype != np.dtype(REQUEST_ID) else ids
    return ids, [np.broadcast_to(np.asarray(x), ids.shape[:1]) for x in scalars]


class PredictionLog(SegmentLog):
    """What the gateway predicted: one stream per ``(model, version)``.

    Columns: ``ts`` float64, ``request_id`` S32, ``endpoint``/``variant`` (fixed-width bytes or
    integer codes), ``client`` (fixed-width bytes: the name of the caller's API key, empty
    without keys; absent from logs written before keys existed), ``inputs``/``outputs`` float32
    ``[rows, features]``, ``latency_s``/``queue_s`` float32.
    """

    def append_predictions(
        self,
        model: str,
        version: int | str,
        *,
        ts: Array | float,
        request_id: Array,
        endpoint: Array | str,
        variant: Array | str,
        inputs: Array,
        outputs: Array,
        latency_s: Array | float,
        queue_s: Array | float,
        client: Array | str = "",
    ) -> None:
        """Append one drained batch of predictions (scalars are broadcast to every row)."""
        ids, (ts_, latency, queue) = _rows_of(request_id, ts, latency_s, queue_s)
        rows = ids.shape[0]
        if rows == 0:
            return
        columns = {
            "ts": ts_.astype(np.float64, copy=False),
            "request_id": ids,
            "endpoint": _bytes_column(endpoint, rows),
            "variant": _bytes_column(variant, rows),
            "client": _bytes_column(client, rows),
            "inputs": np.asarray(inputs, np.float32).reshape(rows, -1),
            "outputs": np.asarray(outputs, np.float32).reshape(rows, -1),
            "latency_s": latency.astype(np.float32, copy=False),
            "queue_s": queue.astype(np.float32, copy=False),
        }
        self.append((model, str(version)), columns)

    def read_predictions(
        self,
        model: str,
        version: int | str,
        start: float | None = None,
        end: float | None = None,
        columns: list[str] | None = None,
        where: Callable[[dict[str, Array]], Array] | None = None,
    ) -> dict[str, Array]:
        """The predictions of one version with ``start <= ts < end`` (see :meth:`read`)."""
        return self.read((model, str(version)), start, end, columns, where)


class FeedbackLog(SegmentLog):
    """Ground-truth labels by request id, in one stream (joined to predictions later), each
    with its ``source``: the name of the API key that sent it (empty without keys)."""

    KEY: Key = ("feedback",)

    def append_labels(
        self,
        ts: Array | float,
        request_id: Array,
        label: Array | float,
        source: Array | str = "",
    ) -> None:
        """Append labels received together (scalars are broadcast to every row)."""
        ids, (ts_, labels) = _rows_of(request_id, ts, label)
        columns = {
            "ts": ts_.astype(np.float64, copy=False),
            "request_id": ids,
            "label": labels.astype(np.float64, copy=False),
            "source": _bytes_column(source, ids.shape[0]),
        }
        self.append(self.KEY, columns)

    def read_labels(
        self,
        start: float | None = None,
        end: float | None = None,
        sources: Collection[str] | None = None,
    ) -> dict[str, Array]:
        """Columns ``ts``, ``request_id``, ``label`` (and ``source`` when every label read has
        one) with ``start <= ts < end``; with `sources`, only labels whose source is one of
        them (labels logged without a source never are)."""
        if sources is None:
            return self.read(self.KEY, start, end)
        allowed = np.array(sorted(s.encode() for s in sources), dtype=bytes)

        def from_sources(cols: dict[str, Array]) -> Array:
            source = cols.get("source")
            if source is None or not allowed.size:
                return np.zeros(cols["ts"].shape[0], np.bool_)
            return np.isin(source, allowed)

        return self.read(self.KEY, start, end, ["ts", "request_id", "label"], from_sources)
