"""A real PostgreSQL server for the tests, registered in tests/conftest.py.

- `postgres_server` (session): initdb into a temp dir (trust auth, superuser `lockgate`),
  listening on 127.0.0.1 on a free port with its unix socket in the temp dir, fsync off; stopped
  at the end of the session. Started only when a test asks for it.
- `postgres_url` (function): a fresh database per test, `postgresql://lockgate@127.0.0.1:PORT/t_N`.
- `state_url` (function, parametrised): None (SQLite at `<home>/state.db`) and a `postgres_url`,
  so one store test runs on both backends.

Missing server binaries FAIL the tests that need them (run tools/ensure-postgres.sh): a skipped
backend would be an untested one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.processes import free_port

BINARIES = ("initdb", "pg_ctl", "postgres")
_databases = itertools.count()


def find_binaries() -> dict[str, str] | None:
    """initdb, pg_ctl and postgres on PATH, or else in the newest /usr/lib/postgresql/*/bin
    (where Debian keeps them, off PATH)."""
    found = {name: shutil.which(name) for name in BINARIES}
    if all(found.values()):
        return {name: str(path) for name, path in found.items()}
    dirs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1,
        reverse=True,
    )
    for bindir in dirs:
        if all((bindir / name).is_file() for name in BINARIES):
            return {name: str(bindir / name) for name in BINARIES}
    return None


@dataclass
class PostgresServer:
    """A running private cluster; `url(db)` names one of its databases."""

    root: Path
    bins: dict[str, str]
    port: int = 0
    host: str = "127.0.0.1"
    run_as: dict[str, Any] = field(default_factory=dict)  # subprocess user/group when root

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://lockgate@{self.host}:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{next(_databases)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=120, check=False, **self.run_as
        )

    def start(self) -> None:
        data, sock, log = self.root / "data", self.root / "sock", self.root / "server.log"
        sock.mkdir(exist_ok=True)
        if self.run_as:
            os.chown(sock, self.run_as["user"], self.run_as["group"])
        init = self._run(
            self.bins["initdb"], "-D", str(data), "--auth=trust", "-U", "lockgate",
            "-E", "UTF8", "--no-sync", "--locale=C",
        )  # fmt: skip
        if init.returncode != 0:
            pytest.fail(f"initdb failed:\n{init.stdout}{init.stderr}", pytrace=False)
        for _ in range(5):  # a free port may be taken before the server binds it
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
            )
            started = self._run(
                self.bins["pg_ctl"], "-D", str(data), "-l", str(log), "-w", "-t", "60",
                "-o", options, "start",
            )  # fmt: skip
            if started.returncode == 0:
                return
        server_log = log.read_text() if log.exists() else ""
        pytest.fail(
            f"PostgreSQL did not start:\n{started.stdout}{started.stderr}\n{server_log}",
            pytrace=False,
        )

    def stop(self) -> None:
        self._run(self.bins["pg_ctl"], "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")


def _root_setup() -> tuple[Path, dict[str, Any]]:
    """initdb refuses to run as root: run the server as an unprivileged user, in a directory
    that user can reach (pytest's temp dirs are private to root)."""
    name = "postgres" if _has_user("postgres") else "nobody"
    user = pwd.getpwnam(name)
    root = Path(tempfile.mkdtemp(prefix="lockgate-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    return root, {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    bins = find_binaries()
    if bins is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) are neither on PATH nor in "
            "/usr/lib/postgresql/*/bin: run tools/ensure-postgres.sh (Debian package postgresql)",
            pytrace=False,
        )
    if os.geteuid() == 0:
        root, run_as = _root_setup()
    else:
        root, run_as = tmp_path_factory.mktemp("postgres"), {}
    server = PostgresServer(root, bins, run_as=run_as)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if run_as:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    url = postgres_server.create_database()
    yield url
    with postgres_server.admin() as conn, contextlib.suppress(psycopg.Error):
        conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str | None:
    """The state database for a store test: None (SQLite in the test's home) or PostgreSQL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url
