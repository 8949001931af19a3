"""The state database (SQLite in WAL mode): endpoints, pinned versions and the audit log, under
one monotonically increasing revision.

Every change is one transaction that checks the revision the caller read (optimistic
concurrency), writes the new state, appends its audit record and bumps the revision, so a crash
leaves each change either wholly there or not at all. Readers never block writers (WAL).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from lockgate.errors import ErrorKind, LockgateError

STATE_FILE = "state.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS endpoints (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pins (
    model TEXT NOT NULL, version TEXT NOT NULL, PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after TEXT,
    revision INTEGER NOT NULL
);
"""


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


@dataclass(frozen=True, slots=True)
class State:
    """One consistent snapshot: endpoint specs (plain JSON documents) and pinned versions."""

    revision: int
    endpoints: dict[str, dict[str, Any]]
    pins: frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Change:
    """What a write did, for the audit log and for the caller's answer."""

    action: str
    target: str
    before: Any
    after: Any


Mutation = Callable[[State], tuple[dict[str, dict[str, Any]], frozenset[tuple[str, str]], Change]]


class StateDB:
    """Per-thread WAL connections to `<home>/state.db`, and transactions on them."""

    def __init__(self, home: Path, schema: str) -> None:
        self.path = Path(home) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connect().executescript(schema)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = connect_state_db(self.path)
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class StateStore(StateDB):
    """Endpoints, pins and the audit log. Thread-safe: each thread gets its own connection."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, _SCHEMA)

    # -- reading ------------------------------------------------------------------------------
    def revision(self) -> int:
        row = self._connect().execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        return int(row[0])

    def read(self) -> State:
        with self._transaction(write=False) as db:
            return self._read(db)

    @staticmethod
    def _read(db: sqlite3.Connection) -> State:
        revision = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
        endpoints = {
            name: orjson.loads(spec)
            for name, spec in db.execute("SELECT name, spec FROM endpoints ORDER BY name")
        }
        pins = frozenset((m, v) for m, v in db.execute("SELECT model, version FROM pins"))
        return State(int(revision), endpoints, pins)

    def audit(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` audit records, newest first."""
        query = "SELECT id, at, actor, action, target, before, after, revision FROM audit"
        args: tuple[Any, ...] = ()
        if target is not None:
            query += " WHERE target = ?"
            args = (target,)
        query += " ORDER BY id DESC LIMIT ?"
        rows = self._connect().execute(query, (*args, limit)).fetchall()
        keys = ("id", "at", "actor", "action", "target", "before", "after", "revision")
        out = []
        for row in rows:
            record = dict(zip(keys, row, strict=True))
            for key in ("before", "after"):
                record[key] = orjson.loads(record[key]) if record[key] is not None else None
            out.append(record)
        return out

    # -- writing ------------------------------------------------------------------------------
    def apply(self, mutation: Mutation, *, actor: str, expected_revision: int | None) -> State:
        """Run `mutation` on the current state and commit its result with an audit record.

        `expected_revision` is the revision the caller read; a different current revision is a
        CONFLICT and nothing changes. The mutation may raise LockgateError to refuse."""
        with self._transaction(write=True) as db:
            current = self._read(db)
            if expected_revision is not None and expected_revision != current.revision:
                raise LockgateError(
                    ErrorKind.CONFLICT,
                    f"state changed: revision is {current.revision}, "
                    f"the change was based on {expected_revision}; re-read and retry",
                )
            endpoints, pins, change = mutation(current)
            revision = current.revision + 1
            for name in current.endpoints.keys() - endpoints.keys():
                db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            for name, spec in endpoints.items():
                if current.endpoints.get(name) != spec:
                    db.execute(
                        "INSERT OR REPLACE INTO endpoints (name, spec) VALUES (?, ?)",
                        (name, orjson.dumps(spec)),
                    )
            for model, version in current.pins - pins:
                db.execute("DELETE FROM pins WHERE model = ? AND version = ?", (model, version))
            for model, version in pins - current.pins:
                db.execute("INSERT INTO pins (model, version) VALUES (?, ?)", (model, version))
            db.execute(
                "INSERT INTO audit (at, actor, action, target, before, after, revision) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                    actor,
                    change.action,
                    change.target,
                    None if change.before is None else orjson.dumps(change.before),
                    None if change.after is None else orjson.dumps(change.after),
                    revision,
                ),
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
            return State(revision, endpoints, pins)
