"""The ring's writer, compiled from _ringwrite.c: one call per model run copies it into a set of
ring columns (see monitor/ring.py)."""

from collections.abc import Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

FULL: int  # `write`: the run does not fit in what is left of the set
UNSUPPORTED: int  # `write`: a tensor the writer cannot read (cast it to float32 first)
# Where a target's values come from: a feed, an output, or a derived (summarised) input.
FROM_INPUTS: int
FROM_OUTPUTS: int
FROM_DERIVED: int
# Rows of the requests' values (one column per request), and their count.
ROUTE: int
CLIENT: int
RECEIVED_NS: int
ENQUEUED_NS: int
REQUEST_ROWS: int
REQUEST_FIELDS: int
# Rows of the runs' values (one column per model run), and their count.
STARTED_NS: int
DONE_NS: int
RUN_REQUESTS: int
RUN_FIELDS: int

class Writer:
    @property
    def rows(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def runs(self) -> int: ...
    @property
    def mismatched(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def ids(self) -> list[str]: ...
    def __init__(
        self,
        inputs: Array,
        outputs: Array,
        targets: Sequence[tuple[int, str | int, int, int, int]],
        requests: Array,
        runs: Array,
        ts: Array,
        ids: list[str],
    ) -> None: ...
    def clear(self) -> None: ...
    def restore(self, rows: int, requests: int, runs: int, /) -> None: ...
    def write(
        self,
        feeds: dict[str, Array],
        outputs: dict[str, Array],
        derived: Sequence[Array | None] | None,
        metas: list[tuple[str, int, int, int]],
        rows: list[int],
        enqueued_ns: list[int],
        started_ns: int,
        done_ns: int,
        ts: float,
        /,
    ) -> int: ...
