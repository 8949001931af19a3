"""The state database's schema is lockgate's own: created and migrated at startup, versioned,
once per migration even when processes start together, and a state.db from before versioning is
adopted as version 1 without loss."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson
import psycopg
import pytest

from lockgate.control.dbapi import Backend
from lockgate.control.rollouts import ACTIVE, RolloutStore
from lockgate.control.schema import MIGRATIONS, migrate
from lockgate.control.state import Change, State, StateStore, Transition
from lockgate.errors import LockgateError
from lockgate.specs import RolloutPlan, VersionKey

TABLES = ("meta", "endpoints", "pins", "audit", "rollouts", "aliases")

# The schemas lockgate created before versioning (state.py and rollouts.py), verbatim.
OLD_STATE_SCHEMA = """
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
OLD_ROLLOUT_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, before TEXT, after TEXT,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT NOT NULL, candidate TEXT NOT NULL,
    champion TEXT, plan TEXT NOT NULL, status TEXT NOT NULL, step INTEGER NOT NULL,
    weight REAL NOT NULL, requested TEXT, requested_by TEXT, ending TEXT, reason TEXT,
    history TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_active ON rollouts (endpoint)
    WHERE status IN ('pending', 'shadow', 'running', 'paused');
CREATE TABLE IF NOT EXISTS aliases (
    endpoint TEXT NOT NULL, alias TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
    updated TEXT NOT NULL, PRIMARY KEY (endpoint, alias)
);
"""
PLAN = RolloutPlan.from_doc({"steps": [10.0, 100.0], "analysis_seconds": 1.0})


def versions(backend: Backend) -> list[int]:
    return [v for (v,) in backend.execute("SELECT version FROM schema_version ORDER BY version")]


def tables(backend: Backend) -> set[str]:
    with backend.transaction(write=False) as tx:
        return {t for t in (*TABLES, "schema_version", "notes") if backend.table_exists(tx, t)}


def test_an_empty_database_is_migrated_once(tmp_path: Path, state_url: str | None) -> None:
    store = StateStore(tmp_path, state_url)
    assert versions(store._db) == list(range(1, len(MIGRATIONS) + 1))
    assert tables(store._db) == {*TABLES, "schema_version"}
    assert store.revision() == 0 and store.audit() == []
    RolloutStore(tmp_path, state_url)
    StateStore(tmp_path, state_url)  # opening again applies nothing
    assert versions(store._db) == list(range(1, len(MIGRATIONS) + 1))


def test_a_new_migration_is_applied_once_and_a_failing_one_not_at_all(
    tmp_path: Path, state_url: str | None
) -> None:
    db = StateStore(tmp_path, state_url)._db
    notes = (
        "CREATE TABLE notes (id {int8} PRIMARY KEY, body TEXT NOT NULL)",
        "INSERT INTO notes (id, body) VALUES (1, 'first')",
    )
    assert migrate(db, (*MIGRATIONS, notes)) == len(MIGRATIONS) + 1
    assert migrate(db, (*MIGRATIONS, notes)) == len(MIGRATIONS) + 1  # a rerun would fail
    assert [tuple(r) for r in db.execute("SELECT id, body FROM notes")] == [(1, "first")]
    broken = ("CREATE TABLE more_notes (id INTEGER)", "INSERT INTO nowhere VALUES (1)")
    with pytest.raises((sqlite3.Error, psycopg.Error), match="nowhere"):
        migrate(db, (*MIGRATIONS, notes, broken))
    assert versions(db) == list(range(1, len(MIGRATIONS) + 2))  # all of it rolled back
    with db.transaction(write=False) as tx:
        assert not db.table_exists(tx, "more_notes")
    # a lockgate that knows fewer migrations than the database has refuses it, and says why
    with pytest.raises(LockgateError, match="newer than this lockgate knows") as exc:
        StateStore(tmp_path, state_url)
    assert f"schema version {len(MIGRATIONS) + 1}" in exc.value.message


def test_stores_migrating_at_once_apply_each_migration_once(
    tmp_path: Path, state_url: str | None
) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_store(i: int) -> None:
        barrier.wait()
        try:
            (StateStore if i % 2 else RolloutStore)(tmp_path, state_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = StateStore(tmp_path, state_url)
    assert versions(store._db) == list(range(1, len(MIGRATIONS) + 1))
    assert store.revision() == 0


def _old_state_db(path: Path, *scripts: str) -> None:
    """A state.db as the code before versioning left it: its schema and some history."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for script in scripts:
        db.executescript(script)
    spec = {"variants": [{"name": "stable", "model": "fraud", "version": "3", "weight": 100.0}]}
    audit = "INSERT INTO audit (at, actor, action, target, before, after, revision) VALUES "
    db.executescript(
        "BEGIN;"
        f"{audit} ('2024-01-01T00:00:00.000+00:00', 'alice', 'pin.add', 'fraud', NULL, NULL, 1);"
        f"{audit} ('2024-01-01T00:00:01.000+00:00', 'bob', 'endpoint.put', 'fraud', NULL,"
        " NULL, 2);"
        "UPDATE meta SET value = 2 WHERE key = 'revision'; COMMIT;"
    )
    db.execute("INSERT INTO pins (model, version) VALUES ('fraud', '1')")
    db.execute("INSERT INTO endpoints (name, spec) VALUES (?, ?)", ("fraud", orjson.dumps(spec)))
    db.close()


def _schema(path: Path) -> list[tuple[object, ...]]:
    """Each table's columns and indexes, as SQLite describes them."""
    db = sqlite3.connect(path)
    out: list[tuple[object, ...]] = []
    for table in TABLES:
        out += [(table, *c) for c in db.execute(f"PRAGMA table_info({table})")]
        out += [(table, *i) for i in db.execute(f"PRAGMA index_list({table})")]
    db.close()
    return out


def test_a_state_db_from_before_versioning_is_adopted_without_loss(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    _old_state_db(old / "state.db", OLD_STATE_SCHEMA, OLD_ROLLOUT_SCHEMA)
    rollouts = RolloutStore(old)
    rid = rollouts.start("fraud", "fraud", "4", "3", PLAN, actor="carol")
    store = StateStore(old)
    assert versions(store._db) == list(range(1, len(MIGRATIONS) + 1))
    state = store.read()
    assert state.revision == 2 and state.pins == frozenset({("fraud", "1")})
    assert state.endpoints["fraud"].variants[0].key == VersionKey("fraud", "3")
    assert [(a["id"], a["actor"]) for a in store.audit()][-2:] == [(2, "bob"), (1, "alice")]
    assert rollouts.get(rid).status == "pending"

    def bump(s: State) -> Transition:
        return Transition(
            s.endpoints, s.pins - {("fraud", "1")}, Change("pin.remove", "fraud", "1", None)
        )

    assert store.apply(bump, actor="dave", expected_revision=2).revision == 3
    assert store.audit(limit=1)[0]["revision"] == 3
    # adopting rewrote nothing: the tables are those a new database gets
    StateStore(new)
    assert _schema(old / "state.db") == _schema(new / "state.db")


def test_a_state_db_only_the_old_state_store_opened_gains_the_rollout_tables(
    tmp_path: Path,
) -> None:
    _old_state_db(tmp_path / "state.db", OLD_STATE_SCHEMA)
    store = RolloutStore(tmp_path)
    store.set_alias("fraud", "champion", "fraud", "3", actor="alice")
    assert store.alias("fraud", "champion") == ("fraud", "3")
    assert StateStore(tmp_path).read().revision == 2


def test_the_one_active_index_names_the_active_statuses() -> None:
    assert f"WHERE status IN {ACTIVE!r}" in " ".join(MIGRATIONS[0])
