"""The default state database: a SQLite file in WAL mode (`<home>/state.db`, one host)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lockgate.control.dbapi import Backend, Rows, Tx


def connect_state_db(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout. Switching to WAL takes an exclusive lock
    and may fail at once (not wait) while another process opens the file, e.g. a gateway and
    its retrain worker starting together: retry until the timeout."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=FULL")  # a committed change survives power loss
    return db


class SQLiteBackend(Backend):
    """A SQLite file in WAL mode: readers never block writers; BEGIN IMMEDIATE serialises
    writers across processes on this host."""

    name = "sqlite"
    types = {
        "int8": "INTEGER",
        "float8": "REAL",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "rowid": "",  # every SQLite table has an implicit rowid already
    }

    def __init__(self, path: Path) -> None:
        self.path = self._file = path
        self.where = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = connect_state_db(self._file)
            self._local.db = db
        return db

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows:
        return self._connect().execute(sql, params)

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def migration(self) -> AbstractContextManager[Tx]:
        return self.transaction(write=True)  # BEGIN IMMEDIATE excludes everyone else already

    def table_exists(self, tx: Tx, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return tx.execute(query, (name,)).fetchone() is not None

    def notify(self, tx: Tx, revision: int) -> None:
        pass  # processes on one host poll the file

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
