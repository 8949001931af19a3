"""Where the state database lives: the backend a state URL names.

Two backends implement `dbapi.Backend`: SQLite in WAL mode (`<home>/state.db`, the default: one
host, `statedb_sqlite.py`) and PostgreSQL (`postgresql://...`: a shared server for many hosts,
`statedb_pg.py`, imported only when asked for). The stores' statements are plain SQL that runs
on both (`INSERT ... ON CONFLICT` needs SQLite >= 3.24).
"""

from __future__ import annotations

from pathlib import Path

from lockgate.control.dbapi import Backend as Backend
from lockgate.control.dbapi import Tx as Tx
from lockgate.control.statedb_sqlite import SQLiteBackend
from lockgate.errors import invalid

STATE_FILE = "state.db"


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
