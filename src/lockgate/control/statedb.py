"""Where the state database lives, behind one small seam, so that the stores' SQL is written once.

A `Backend` gives each thread its own connection, transactions in which writers serialise, and
`?` placeholders. Two exist: SQLite in WAL mode (`<home>/state.db`, the default: one host) and
PostgreSQL (`postgresql://...`: a shared server for many hosts, in `statedb_pg.py`, imported
only when asked for). The stores' statements are plain SQL that runs on both (`INSERT ... ON
CONFLICT` needs SQLite >= 3.24); what differs — column types in the schema, how a writer takes
the write lock, how a table is looked up, change notification — is the backend's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from lockgate.errors import invalid

STATE_FILE = "state.db"


class Rows(Protocol):
    """A statement's result: a DB-API cursor of either driver."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """Runs statements (`?` placeholders) inside a transaction, or one by one on a backend."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows: ...


class Backend(ABC):
    """Connections (one per thread) and transactions on one state database.

    `transaction(write=True)` excludes every other writer, in any process or host, until it
    ends: SQLite's BEGIN IMMEDIATE, PostgreSQL's row lock on the revision. So a store's
    read-check-write is never interleaved with another's, exactly as on one machine."""

    name: str
    types: Mapping[str, str]  # DDL type names the migrations are written with
    where: str  # the database, for messages (never a password)
    path: Path | None = None  # the SQLite file, if that is what it is

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows:
        """One statement on its own (autocommit): single-statement reads."""

    @abstractmethod
    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A consistent snapshot to read (write=False), or the write lock (write=True)."""

    @abstractmethod
    def migration(self) -> AbstractContextManager[Tx]:
        """A write transaction that also excludes other processes migrating the schema."""

    @abstractmethod
    def table_exists(self, tx: Tx, name: str) -> bool: ...

    @abstractmethod
    def notify(self, tx: Tx, revision: int) -> None:
        """Tell listeners at commit that the revision changed: a hint, polling is the contract."""

    @abstractmethod
    def close(self) -> None:
        """Close the calling thread's connection (the next call opens a new one)."""


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


def open_backend(home: Path, url: str | None) -> Backend:
    """The backend `url` names: None is `<home>/state.db`; `sqlite:///relative/path` and
    `sqlite:////absolute/path` (SQLAlchemy's spelling) another SQLite file;
    `postgresql://user[:password]@host[:port]/db` (or `postgres://`) a PostgreSQL database."""
    if url is None:
        return SQLiteBackend(Path(home) / STATE_FILE)
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise invalid(f"a SQLite state URL is sqlite:///PATH, not {url!r}")
        return SQLiteBackend(Path(url[len("sqlite:///") :]))
    if scheme in ("postgresql", "postgres"):
        from lockgate.control.statedb_pg import PostgresBackend

        return PostgresBackend(url)
    raise invalid(  # the URL itself is not quoted: it may hold a password
        f"unsupported state database URL scheme {scheme!r}: "
        "use postgresql://user@host/db, sqlite:///PATH, or none for <home>/state.db"
    )
