"""The per-row columns of a drained ring set, from its per-batch and per-request C arrays, in one
compiled call: each numpy step on a few thousand values (a repeat, a subtraction, a cast) lets go
of the GIL and takes it back from the event loop, and assembling took a dozen of them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lockgate.monitor.kernels.jit import jit

Int64s = NDArray[np.int64]


@jit
def request_rows(
    batches: tuple[Int64s, Int64s, NDArray[np.float64], Int64s],
    requests: tuple[Int64s, Int64s, Int64s, Int64s],
) -> tuple[
    NDArray[np.float64], NDArray[np.float32], NDArray[np.float32], NDArray[np.int16],
    NDArray[np.bool_],
]:  # fmt: skip
    """``(ts, latency, queue, route, first)`` per row.

    ``batches``: per model run, ``(started_ns, done_ns, unix seconds, requests in it)``;
    ``requests``: per request, in run order, ``(received_ns, enqueued_ns, rows, route code)``.
    A request's latency is ``done - received`` and its queue time ``started - enqueued`` of its
    run, in float32 seconds, on each of its rows; ``first`` marks each request's first row.
    """
    started, done, ts, per_batch = batches
    received, enqueued, rows, routes = requests
    total = 0
    for r in range(rows.shape[0]):
        total += rows[r]
    out_ts = np.empty(total, np.float64)
    latency = np.empty(total, np.float32)
    queue = np.empty(total, np.float32)
    route = np.empty(total, np.int16)
    first = np.zeros(total, np.bool_)
    r = 0
    row = 0
    for b in range(per_batch.shape[0]):
        for _ in range(per_batch[b]):
            if r >= rows.shape[0]:
                raise ValueError("the runs hold more requests than were recorded")
            wait = np.float32((done[b] - received[r]) / 1e9)
            queued = np.float32((started[b] - enqueued[r]) / 1e9)
            if rows[r] > 0:
                first[row] = True
            for _ in range(rows[r]):
                out_ts[row] = ts[b]
                latency[row] = wait
                queue[row] = queued
                route[row] = routes[r]
                row += 1
            r += 1
    return out_ts, latency, queue, route, first


@jit
def first_rows_by_route(
    route: NDArray[np.int16],
    first: NDArray[np.bool_],
    latency: NDArray[np.float32],
    queue: NDArray[np.float32],
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """One value per request (its first row): ``(latency grouped by route code in ascending
    order, offsets[codes + 1] of each code's group, queue)``, float64, for the latency sketches.
    A counting sort: group ``c`` is ``grouped[offsets[c]:offsets[c + 1]]``, in row order."""
    n_codes = 0
    for i in range(route.shape[0]):
        if first[i]:
            if route[i] < 0:
                raise ValueError("route codes are non-negative")
            n_codes = max(n_codes, route[i] + 1)
    offsets = np.zeros(n_codes + 1, np.int64)
    for i in range(route.shape[0]):
        if first[i]:
            offsets[route[i] + 1] += 1
    for c in range(n_codes):
        offsets[c + 1] += offsets[c]
    grouped = np.empty(offsets[n_codes], np.float64)
    queued = np.empty(offsets[n_codes], np.float64)
    fill = offsets[:n_codes].copy()
    k = 0
    for i in range(route.shape[0]):
        if first[i]:
            grouped[fill[route[i]]] = latency[i]
            fill[route[i]] += 1
            queued[k] = queue[i]
            k += 1
    return grouped, offsets, queued
