"""The PostgreSQL state backend: one database shared by gateways and workers on many hosts.

The semantics are SQLite's: a write transaction first locks the revision row (`SELECT ... FOR
UPDATE`), so writers in every process and on every host take turns, and each sees what the
previous one committed; a read transaction is one REPEATABLE READ snapshot; a single-statement
read such as `revision()` (polled every 0.2 s) is one round trip in autocommit. Migrations run
under `pg_advisory_xact_lock`. A write that bumps the revision also sends `NOTIFY
lockgate_state` (payload: the new revision) at commit: a hint for listeners; gateways poll.

Connections are per thread and opened on first use. A lost one (server restart, failover, idle
timeout) is replaced on the next call: a read, or the start of a transaction, retries once on a
fresh connection; a transaction cut off half-way fails UNAVAILABLE. Messages name the database
as postgresql://user@host:port/db, never with its password.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lockgate.control.dbapi import Backend, Rows, Tx
from lockgate.errors import ErrorKind, LockgateError, invalid

CHANNEL = "lockgate_state"
_MIGRATION_LOCK = 0x6C6F636B67617465  # "lockgate": the advisory lock key for migrations
_WRITE_LOCK = "SELECT value FROM meta WHERE key = 'revision' FOR UPDATE"
_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_DEFAULTS = {"connect_timeout": "10", "application_name": "lockgate"}  # unless the URL says
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://[^:@/]*):(.*)@", re.IGNORECASE)
Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")


@lru_cache(maxsize=512)
def _sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (the stores' SQL has no literal `?`)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _params(params: Sequence[Any]) -> tuple[Any, ...]:
    """JSON documents arrive as orjson's bytes; PostgreSQL keeps them as TEXT."""
    return tuple(p.decode() if isinstance(p, bytes) else p for p in params)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """`text` without the password, nor a quoted fragment of it (libpq quotes bad tokens)."""
    text = " ".join(text.split())  # libpq's messages span lines
    for secret in secrets:
        text = text.replace(secret, "***")

    def hide(quoted: re.Match[str]) -> str:
        return '"***"' if any(quoted[1] in secret for secret in secrets) else quoted[0]

    return re.sub(r'"([^"]+)"', hide, text) if secrets else text


def _rollback(conn: Conn) -> None:
    if not conn.closed:
        with suppress(psycopg.Error):  # the error being raised already says what went wrong
            conn.execute("ROLLBACK")


class _Transaction:
    """Statements inside one transaction on one connection."""

    def __init__(self, backend: PostgresBackend, conn: Conn) -> None:
        self._backend, self._conn = backend, conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows:
        try:
            return self._conn.execute(_sql(sql), _params(params))
        except psycopg.OperationalError as exc:
            if self._conn.closed:
                raise self._backend.lost(exc) from None
            raise


class PostgresBackend(Backend):
    """A PostgreSQL database named by a libpq URL; psycopg 3, one connection per thread."""

    name = "postgresql"
    types = {
        "int8": "BIGINT",
        "float8": "DOUBLE PRECISION",
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "rowid": "rowid BIGINT GENERATED ALWAYS AS IDENTITY,",  # insertion order, as SQLite's
    }

    lock_timeout = 30.0  # seconds a writer waits for the write lock, as SQLite's busy timeout

    def __init__(self, url: str) -> None:
        match = _USERINFO.match(url)
        self._secrets: tuple[str, ...] = (match[2],) if match and match[2] else ()
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error as exc:
            shown = _USERINFO.sub(r"\1:***@", url)
            raise invalid(
                f"malformed PostgreSQL state URL {shown}: {_scrub(str(exc), self._secrets)}"
            ) from None
        if info.get("password"):  # as written in the URL, and percent-decoded
            self._secrets = (*self._secrets, str(info["password"]))
        user, db = info.get("user"), info.get("dbname") or info.get("user") or ""
        host, port = info.get("host") or "localhost", info.get("port") or "5432"
        self.where = f"postgresql://{f'{user}@' if user else ''}{host}:{port}/{db}"
        defaults = {k: v for k, v in _DEFAULTS.items() if k not in info}
        self._conninfo = make_conninfo(url, **defaults)
        self._local = threading.local()
        self._connect()  # fail now, with a clear message, not at the first request

    def _connect(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True)
                # a writer that hangs mid-transaction must not block every other one forever
                conn.execute(
                    f"SET lock_timeout = {int(self.lock_timeout * 1000)}; "
                    f"SET idle_in_transaction_session_timeout = {int(self.lock_timeout * 2000)}"
                )
            except psycopg.Error as exc:
                reason = _scrub(str(exc), self._secrets)
                message = f"cannot connect to the state database {self.where}: {reason}"
                raise LockgateError(ErrorKind.UNAVAILABLE, message) from None
            self._local.conn = conn
        return conn

    def lost(self, exc: BaseException, detail: str = "") -> LockgateError:
        """The error for a connection that died under a call; the next call reconnects."""
        reason = _scrub(str(exc), self._secrets)
        return LockgateError(
            ErrorKind.UNAVAILABLE,
            f"lost the connection to the state database {self.where}{detail} ({reason}); "
            "the next call reconnects",
        )

    def _retrying(self, first: Callable[[Conn], T]) -> T:
        """Run `first` (statements without effect so far) on this thread's connection, and once
        more on a new one if that connection turns out to be dead."""
        conn = self._connect()
        try:
            return first(conn)
        except psycopg.OperationalError:
            if not conn.closed:
                raise
        conn = self._connect()
        try:
            return first(conn)
        except psycopg.OperationalError as exc:
            if conn.closed:
                raise self.lost(exc) from None
            raise

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows:
        return self._retrying(lambda conn: conn.execute(_sql(sql), _params(params)))

    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        return self._transaction(("BEGIN", _WRITE_LOCK) if write else (_READ,))

    def migration(self) -> AbstractContextManager[Tx]:
        return self._transaction(("BEGIN", f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))

    @contextmanager
    def _transaction(self, begin: tuple[str, ...]) -> Iterator[Tx]:
        def start(conn: Conn) -> Conn:
            try:
                for statement in begin:
                    conn.execute(statement)
            except psycopg.errors.LockNotAvailable:
                _rollback(conn)
                raise LockgateError(
                    ErrorKind.UNAVAILABLE,
                    f"the state database {self.where} stayed locked by another writer for "
                    f"{self.lock_timeout:g} s",
                ) from None
            except BaseException:
                _rollback(conn)
                raise
            return conn

        conn = self._retrying(start)
        try:
            yield _Transaction(self, conn)
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except psycopg.OperationalError as exc:
            if conn.closed:
                raise self.lost(exc, " at COMMIT: the change may or may not be committed") from None
            raise

    def table_exists(self, tx: Tx, name: str) -> bool:
        return bool(tx.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0])

    def notify(self, tx: Tx, revision: int) -> None:
        tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(revision)))

    def close(self) -> None:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
