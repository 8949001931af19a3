"""The seam every state-database backend implements, so that the stores' SQL is written once.

A `Backend` gives each thread its own connection, transactions in which writers serialise, and
`?` placeholders. What differs between backends — column types in the schema, how a writer takes
the write lock, how a table is looked up, change notification — is the backend's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol


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
