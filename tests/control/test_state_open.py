"""Processes opening one state database at the same moment (a gateway, its workers and the
retrain worker start together) all get a working connection to a migrated schema: on SQLite a
WAL connection, on PostgreSQL the same database."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from lockgate.control.rollouts import RolloutStore
from lockgate.control.schema import MIGRATIONS
from lockgate.control.state import StateStore


def _open_both(home: str, url: str | None, barrier: multiprocessing.synchronize.Barrier) -> int:
    barrier.wait()
    store = StateStore(Path(home), url)
    RolloutStore(Path(home), url)
    return store.revision()


def test_concurrent_first_opens(
    tmp_path: Path, state_url: str | None, request: pytest.FixtureRequest
) -> None:
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        home, url = tmp_path / str(attempt), state_url
        if url is not None and attempt:  # a fresh database per attempt
            url = request.getfixturevalue("postgres_server").create_database()
        barrier = ctx.Manager().Barrier(6)
        with ctx.Pool(6) as pool:
            revisions = pool.starmap(_open_both, [(str(home), url, barrier)] * 6)
        assert revisions == [0] * 6
        store = StateStore(home, url)
        rows = store._db.execute("SELECT version FROM schema_version").fetchall()
        assert [v for (v,) in rows] == list(range(1, len(MIGRATIONS) + 1))
        if url is None:
            assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
