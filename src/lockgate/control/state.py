"""The state database: endpoints, pinned versions and the audit log, under one monotonically
increasing revision.

Every change is one transaction that checks the revision the caller read (optimistic
concurrency), writes the new state, appends its audit record and bumps the revision, so a crash
leaves each change either wholly there or not at all. The database is SQLite in WAL mode at
`<home>/state.db` (readers never block writers), or PostgreSQL when a `postgresql://` URL is
given (see statedb.py): the same SQL and the same guarantees on both.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from lockgate.control.schema import migrate
from lockgate.control.statedb import STATE_FILE, Tx, open_backend
from lockgate.errors import ErrorKind, LockgateError
from lockgate.specs import Change, EndpointSpec, Mutation, State, Transition, VersionKey

# State, Change, Mutation and Transition are defined with the rest of the typed model in
# lockgate.specs; they are re-exported here, where the store that reads and commits them is.
__all__ = ["STATE_FILE", "Change", "Mutation", "State", "StateDB", "StateStore", "Transition"]
_REVISION = "SELECT value FROM meta WHERE key = 'revision'"


class StateDB:
    """One state database for a store: `<home>/state.db` unless `url` names another
    (`postgresql://user@host/db`, `sqlite:///path`). Opening it brings its schema up to date, so
    a store never runs against tables it does not know. Each thread has its own connection."""

    def __init__(self, home: Path, url: str | None = None) -> None:
        self.home = Path(home)
        self.url = url
        self._db = open_backend(self.home, url)
        self.path = self._db.path  # the SQLite file, None on PostgreSQL
        migrate(self._db)

    def _transaction(self, *, write: bool = True) -> AbstractContextManager[Tx]:
        return self._db.transaction(write=write)

    def close(self) -> None:
        """Close the calling thread's connection."""
        self._db.close()


class StateStore(StateDB):
    """Endpoints, pins and the audit log. Thread-safe: each thread gets its own connection.
    Rows are parsed into the typed model as they are read: `read()` returns EndpointSpecs."""

    # -- reading ------------------------------------------------------------------------------
    def revision(self) -> int:
        """The current revision: one indexed read, cheap enough to poll."""
        return int(self._db.execute(_REVISION).fetchone()[0])

    def read(self) -> State:
        with self._transaction(write=False) as db:
            return self._read(db)

    @staticmethod
    def _read(db: Tx) -> State:
        revision = db.execute(_REVISION).fetchone()[0]
        endpoints = {
            name: EndpointSpec.from_doc(orjson.loads(spec))
            for name, spec in db.execute("SELECT name, spec FROM endpoints ORDER BY name")
        }
        pins = frozenset(VersionKey(m, v) for m, v in db.execute("SELECT model, version FROM pins"))
        return State(int(revision), endpoints, pins)

    def audit(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` audit records, newest first."""
        query = (
            "SELECT id, at, actor, role, action, target, before, after, revision, forced FROM audit"
        )
        args: tuple[Any, ...] = ()
        if target is not None:
            query += " WHERE target = ?"
            args = (target,)
        query += " ORDER BY id DESC LIMIT ?"
        rows = self._db.execute(query, (*args, limit)).fetchall()
        keys = (
            "id", "at", "actor", "role", "action", "target", "before", "after", "revision", "forced"
        )  # fmt: skip
        out = []
        for row in rows:
            record = dict(zip(keys, row, strict=True))
            for key in ("before", "after", "forced"):
                record[key] = orjson.loads(record[key]) if record[key] is not None else None
            out.append(record)
        return out

    # -- writing ------------------------------------------------------------------------------
    def apply(
        self,
        mutation: Mutation,
        *,
        actor: str,
        expected_revision: int | None,
        role: str | None = None,
    ) -> State:
        """Run `mutation` on the current state and commit its result with an audit record.

        `expected_revision` is the revision the caller read; a different current revision is a
        CONFLICT and nothing changes. The mutation may raise LockgateError to refuse. `role` is
        the role of the admin token that asked (None: a local tool). Endpoints are stored as
        their `to_doc()` JSON, only those the mutation changed."""
        with self._transaction(write=True) as db:
            current = self._read(db)
            if expected_revision is not None and expected_revision != current.revision:
                raise LockgateError(
                    ErrorKind.CONFLICT,
                    f"state changed: revision is {current.revision}, "
                    f"the change was based on {expected_revision}; re-read and retry",
                )
            step = mutation(current)
            endpoints, pins, change = step.endpoints, step.pins, step.change
            revision = current.revision + 1
            for name in current.endpoints.keys() - endpoints.keys():
                db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            for name, spec in endpoints.items():
                if current.endpoints.get(name) != spec:
                    db.execute(
                        "INSERT INTO endpoints (name, spec) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                        (name, orjson.dumps(spec.to_doc())),
                    )
            for model, version in current.pins - pins:
                db.execute("DELETE FROM pins WHERE model = ? AND version = ?", (model, version))
            for model, version in pins - current.pins:
                db.execute("INSERT INTO pins (model, version) VALUES (?, ?)", (model, version))
            db.execute(
                "INSERT INTO audit (at, actor, role, action, target, before, after, revision, "
                "forced) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                    actor,
                    role,
                    change.action,
                    change.target,
                    None if change.before is None else orjson.dumps(change.before),
                    None if change.after is None else orjson.dumps(change.after),
                    revision,
                    None if change.forced is None else orjson.dumps(change.forced),
                ),
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
            self._db.notify(db, revision)
            return State(revision, endpoints, pins)

    def record(
        self,
        action: str,
        target: str,
        after: Any,
        *,
        actor: str,
        role: str | None = None,
        before: Any = None,
    ) -> None:
        """Append an audit record for an act that changes no served state (a registration, an
        evaluation). It carries the current revision and does not bump it: gateways re-read
        the state only when it changed. Taken under the write lock, so records stay in
        revision order with the changes around them."""
        with self._transaction(write=True) as db:
            (revision,) = db.execute(_REVISION).fetchone()
            db.execute(
                "INSERT INTO audit (at, actor, role, action, target, before, after, revision) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                    actor,
                    role,
                    action,
                    target,
                    None if before is None else orjson.dumps(before),
                    None if after is None else orjson.dumps(after),
                    int(revision),
                ),
            )
