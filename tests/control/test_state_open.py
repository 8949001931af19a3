"""Processes opening one state database at the same moment (a gateway, its workers and the
retrain worker start together) all get a working WAL connection."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from lockgate.control.rollouts import RolloutStore
from lockgate.control.state import StateStore


def _open_both(home: str, barrier: multiprocessing.synchronize.Barrier) -> int:
    barrier.wait()
    store = StateStore(Path(home))
    RolloutStore(Path(home))
    return store.revision()


def test_concurrent_first_opens(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        home = tmp_path / str(attempt)
        barrier = ctx.Manager().Barrier(6)
        with ctx.Pool(6) as pool:
            revisions = pool.starmap(_open_both, [(str(home), barrier)] * 6)
        assert revisions == [0] * 6
        mode = StateStore(home)._connect().execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
