"""The state database's schema: an ordered list of migrations that lockgate applies itself.

Migration n takes the schema from version n - 1 to n; table `schema_version` has one row per
applied migration. `migrate` applies the missing ones in order, each in its own transaction
together with its row, under a lock that excludes other processes migrating at the same moment
(so a gateway and a retrain worker starting together are safe). A database already at the
latest version costs one short read. Never edit a released migration: append a new one.

Migration 1 is the schema lockgate used before versioning, written with `CREATE ... IF NOT
EXISTS`: a state.db from that time is adopted as version 1 without loss (its missing tables, if
it was only ever opened by one of the stores, are created).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from lockgate.control.dbapi import Backend, Tx
from lockgate.errors import ErrorKind, LockgateError

# DDL templates: {int8}, {float8}, {serial} and {rowid} are the backend's type names.
Migration = tuple[str, ...]

MIGRATIONS: tuple[Migration, ...] = (
    (  # 1: endpoints, pins, audit under one revision; rollouts and aliases
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value {int8} NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('revision', 0) ON CONFLICT (key) DO NOTHING",
        "CREATE TABLE IF NOT EXISTS endpoints (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS pins ("
        " model TEXT NOT NULL, version TEXT NOT NULL, PRIMARY KEY (model, version))",
        "CREATE TABLE IF NOT EXISTS audit ("
        " id {serial}, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,"
        " target TEXT NOT NULL, before TEXT, after TEXT, revision {int8} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS rollouts ({rowid}"
        " id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT NOT NULL,"
        " candidate TEXT NOT NULL, champion TEXT, plan TEXT NOT NULL, status TEXT NOT NULL,"
        " step INTEGER NOT NULL, weight {float8} NOT NULL, requested TEXT, requested_by TEXT,"
        " ending TEXT, reason TEXT, history TEXT NOT NULL, created TEXT NOT NULL,"
        " updated TEXT NOT NULL)",
        # one active rollout per endpoint (the statuses are rollouts.ACTIVE, frozen here)
        "CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_active ON rollouts (endpoint)"
        " WHERE status IN ('pending', 'shadow', 'running', 'paused')",
        "CREATE TABLE IF NOT EXISTS aliases ("
        " endpoint TEXT NOT NULL, alias TEXT NOT NULL, model TEXT NOT NULL,"
        " version TEXT NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (endpoint, alias))",
    ),
    (  # 2: the role of the token that made each change
        "ALTER TABLE audit ADD COLUMN role TEXT",
    ),
    (  # 3: an admin's override of the gate policy (reason, role, what it allowed), as JSON
        "ALTER TABLE audit ADD COLUMN forced TEXT",
    ),
)

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)"
)


def schema_version(backend: Backend, tx: Tx) -> int:
    """The highest applied migration; 0 for an empty database or a pre-versioning state.db."""
    if not backend.table_exists(tx, "schema_version"):
        return 0
    (version,) = tx.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(version or 0)


def migrate(backend: Backend, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations `backend` lacks, in order; returns the schema version."""
    latest = len(migrations)
    with backend.transaction(write=False) as tx:
        current = schema_version(backend, tx)
    _check(backend, current, latest)
    for number in range(current + 1, latest + 1):
        with backend.migration() as tx:
            tx.execute(_VERSION_TABLE)
            current = schema_version(backend, tx)  # another process may have been first
            _check(backend, current, latest)
            if current >= number:
                continue
            for statement in migrations[number - 1]:
                tx.execute(statement.format_map(backend.types))
            applied = datetime.now(UTC).isoformat(timespec="milliseconds")
            tx.execute(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)", (number, applied)
            )
    return latest


def _check(backend: Backend, current: int, latest: int) -> None:
    if current > latest:
        raise LockgateError(
            ErrorKind.UNAVAILABLE,
            f"the state database {backend.where} has schema version {current}, newer than this "
            f"lockgate knows ({latest}): upgrade lockgate",
        )
