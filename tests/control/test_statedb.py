"""The state database's guarantees on both backends, through separate store objects (separate
connections, as separate processes or hosts would have): writers serialise, exactly one of two
writers on the same revision wins, an audit row exists iff its change committed; and on
PostgreSQL clear errors, reconnection and change notification."""

from __future__ import annotations

import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lockgate.control.rollouts import RolloutStore
from lockgate.control.state import Change, Mutation, State, StateStore, Transition
from lockgate.control.statedb_pg import PostgresBackend
from lockgate.errors import ErrorKind, LockgateError
from lockgate.specs import EndpointSpec
from tests.postgres import PostgresServer


def endpoint(count: int) -> EndpointSpec:
    """An endpoint that stands for a counter: its version is the count."""
    return EndpointSpec.implicit("m", str(count))


def count(state: State, name: str) -> int:
    spec = state.endpoints.get(name)
    return 0 if spec is None else int(spec.variants[0].version)


def bump(name: str, delay: float = 0.0) -> Mutation:
    """Count one more on endpoint `name` (a lost update would show as a missing count)."""

    def mutation(state: State) -> Transition:
        # Hold the transaction open, so that a rival most likely overlaps it. Not a wait for
        # anything: exactly one writer wins whether or not they overlap.
        time.sleep(delay)
        n = count(state, name)
        change = Change("bump", name, {"count": n}, {"count": n + 1})
        return Transition({**state.endpoints, name: endpoint(n + 1)}, state.pins, change)

    return mutation


def run_threads(*targets: Any) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_two_writers_on_one_revision_exactly_one_wins(
    tmp_path: Path, state_url: str | None
) -> None:
    stores = {"alice": StateStore(tmp_path, state_url), "bob": StateStore(tmp_path, state_url)}
    base = stores["alice"].revision()
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def writer(actor: str) -> None:
        barrier.wait()
        try:
            stores[actor].apply(bump("e", delay=0.2), actor=actor, expected_revision=base)
            outcomes[actor] = "committed"
        except LockgateError as exc:
            outcomes[actor] = exc.kind.name

    run_threads(lambda: writer("alice"), lambda: writer("bob"))
    assert sorted(outcomes.values()) == ["CONFLICT", "committed"]
    (winner,) = (a for a, o in outcomes.items() if o == "committed")
    state = stores["bob"].read()
    assert state.revision == base + 1 and state.endpoints == {"e": endpoint(1)}
    assert [(a["actor"], a["revision"]) for a in stores["alice"].audit()] == [(winner, base + 1)]


def test_concurrent_writers_serialise_without_lost_updates(
    tmp_path: Path, state_url: str | None
) -> None:
    def writer() -> None:
        store = StateStore(tmp_path, state_url)
        for _ in range(10):
            store.apply(bump("e"), actor=threading.current_thread().name, expected_revision=None)

    run_threads(*[writer] * 4)
    store = StateStore(tmp_path, state_url)
    assert store.read().revision == 40 and count(store.read(), "e") == 40
    records = list(reversed(store.audit(limit=100)))  # oldest first, by id
    assert [a["revision"] for a in records] == list(range(1, 41))
    assert [a["before"]["count"] for a in records] == list(range(40))


def test_an_audit_row_exists_iff_its_change_committed(
    tmp_path: Path, state_url: str | None
) -> None:
    store = StateStore(tmp_path, state_url)
    store.apply(bump("a"), actor="ops", expected_revision=0)

    def refuse(state: State) -> Any:
        raise LockgateError(ErrorKind.INVALID, "refused")

    def half_written(state: State) -> Any:  # drops `a`, writes `b`, then cannot encode the audit
        return Transition({"b": endpoint(1)}, state.pins, Change("put", "b", None, {"bad": {1, 2}}))

    with pytest.raises(LockgateError, match="refused"):
        store.apply(refuse, actor="ops", expected_revision=1)
    with pytest.raises(LockgateError) as conflict:
        store.apply(bump("a"), actor="ops", expected_revision=0)
    assert conflict.value.kind is ErrorKind.CONFLICT
    with pytest.raises(TypeError):
        store.apply(half_written, actor="ops", expected_revision=1)
    other = StateStore(tmp_path, state_url)  # another connection sees the same
    for s in (store, other):
        assert s.read() == State(1, {"a": endpoint(1)}, frozenset())
        assert [(a["revision"], a["action"]) for a in s.audit()] == [(1, "bump")]


def test_sqlite_url_names_another_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/elsewhere.db"  # sqlite:////absolute/path
    StateStore(tmp_path / "home", url).apply(bump("a"), actor="ops", expected_revision=0)
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "home" / "state.db").exists()
    assert RolloutStore(tmp_path / "home", url).alias("a", "champion") is None
    assert StateStore(tmp_path, url).revision() == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def _error(url: str) -> LockgateError:
    with pytest.raises(LockgateError) as info:
        StateStore(Path("/nonexistent-home"), url)
    text = "".join(traceback.format_exception(info.value))
    assert "hunter2" not in text, text  # not in the message, nor anywhere in the traceback
    return info.value


def test_bad_state_urls_are_clear_errors_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    port = _closed_port()
    exc = _error(f"postgresql://lockgate:hunter2@127.0.0.1:{port}/state")
    assert exc.kind is ErrorKind.UNAVAILABLE
    where = f"postgresql://lockgate@127.0.0.1:{port}/state"
    assert f"cannot connect to the state database {where}: " in exc.message
    assert "refused" in exc.message
    exc = _error(f"postgres://lockgate:hunter2@127.0.0.1:{postgres_server.port}/missing_db")
    assert exc.kind is ErrorKind.UNAVAILABLE and 'database "missing_db" does not exist' in str(exc)
    exc = _error("postgresql://lockgate:hunter2%zz@127.0.0.1/state")
    assert exc.kind is ErrorKind.INVALID and "malformed PostgreSQL state URL" in exc.message
    exc = _error("mysql://root:hunter2@db.example/state")
    assert exc.kind is ErrorKind.INVALID and "unsupported" in exc.message


def _kill_connections(server: PostgresServer, url: str) -> None:
    with server.admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (url.rsplit("/", 1)[1],),
        )


def test_a_lost_postgresql_connection_is_replaced_on_the_next_call(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    store = StateStore(tmp_path, postgres_url)
    store.apply(bump("a"), actor="ops", expected_revision=0)
    _kill_connections(postgres_server, postgres_url)
    assert store.revision() == 1  # a read retries once on a new connection
    _kill_connections(postgres_server, postgres_url)
    assert store.apply(bump("a"), actor="ops", expected_revision=1).revision == 2
    _kill_connections(postgres_server, postgres_url)
    assert count(store.read(), "a") == 2

    def cut_off(state: State) -> Any:
        _kill_connections(postgres_server, postgres_url)
        return bump("a")(state)

    with pytest.raises(LockgateError) as info:  # half-way through: fails, changes nothing
        store.apply(cut_off, actor="ops", expected_revision=2)
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert "lost the connection to the state database postgresql://lockgate@127.0.0.1:" in str(
        info.value
    )
    assert store.revision() == 2 and len(store.audit()) == 2
    assert store.apply(bump("a"), actor="ops", expected_revision=2).revision == 3


def test_a_postgresql_writer_waits_for_the_write_lock_at_most_lock_timeout(
    tmp_path: Path, postgres_url: str
) -> None:
    store = StateStore(tmp_path, postgres_url)
    store._db.lock_timeout = 0.3  # type: ignore[attr-defined]
    store.close()  # the next call connects with it
    with psycopg.connect(postgres_url, autocommit=True) as hung, hung.transaction():
        hung.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(LockgateError, match="stayed locked by another writer") as info:
            store.apply(bump("a"), actor="ops", expected_revision=0)
        assert info.value.kind is ErrorKind.UNAVAILABLE
        # it waited for the lock, and gave up on the configured timeout, not the default 30 s
        assert 0.3 <= time.monotonic() - started < PostgresBackend.lock_timeout
        assert store.revision() == 0  # reads are not blocked by a writer
    assert store.apply(bump("a"), actor="ops", expected_revision=0).revision == 1


def test_postgresql_notifies_each_new_revision(tmp_path: Path, postgres_url: str) -> None:
    store, rollouts = StateStore(tmp_path, postgres_url), RolloutStore(tmp_path, postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute("LISTEN lockgate_state")
        store.apply(bump("a"), actor="ops", expected_revision=0)
        rollouts.set_alias("a", "champion", "a", "1")  # bookkeeping: the revision stays
        with pytest.raises(LockgateError):
            store.apply(bump("a"), actor="ops", expected_revision=0)  # not committed: silent
        store.apply(bump("a"), actor="ops", expected_revision=1)
        payloads = [n.payload for n in listener.notifies(timeout=60, stop_after=2)]
        assert payloads == ["1", "2"]
        assert list(listener.notifies(timeout=0.2)) == []
