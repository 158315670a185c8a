"""What the rest of settle needs from a database, on either backend.

A ``Store`` runs *transaction bodies*: ``async def body(conn: Conn) -> T`` functions that
talk to the database only through ``conn`` and await nothing else. That restriction is
what lets the SQLite store run a whole body on its driver's thread in one hop (see
``server.store.sqlite``) while the PostgreSQL store awaits each statement on its pool:
the ledger is written once, for both.

Dialect differences the ledger needs (claiming a key, row locks, an advisory lock) are
methods of ``Conn``, never ``if sqlite`` in the ledger.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import asyncpg
import redis.exceptions
import sqlalchemy as sa

T = TypeVar("T")

Query = sa.Executable | str
Values = Mapping[str, Any] | None
# A result row: mapping-like (``row["column"]``, ``dict(row)``) on both backends.
Row = Any
# A statement built once with its values; an INSERT built without values takes a row
# (a mapping) or several (a sequence of mappings).
Write = tuple[sa.Executable, Mapping[str, Any] | Sequence[Mapping[str, Any]]]


class Conn(Protocol):
    """A connection inside one transaction (or one consistent read).

    ``values`` fills the ``bindparam``s of a statement built once at import time (the
    hot path: such statements are compiled once per process); an INSERT built without
    values takes its column values from it. Statements built on the fly pass no values.
    """

    async def fetch_all(self, query: Query, values: Values = None) -> Sequence[Row]: ...
    async def fetch_one(self, query: Query, values: Values = None) -> Row | None: ...
    async def fetch_val(self, query: Query, values: Values = None) -> Any: ...
    async def execute(self, query: Query, values: Values = None) -> None: ...
    async def execute_many(self, query: Query, values: Sequence[Mapping[str, Any]]) -> None: ...

    async def insert_new(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        """INSERT the row unless one with the same key exists; whether it was inserted
        (the loser of a race for the key gets False, never an error)."""
        ...

    async def write_all(
        self, writes: Sequence[Write], new: tuple[sa.Table, Mapping[str, Any]] | None = None
    ) -> bool:
        """The ``writes``, then ``new`` inserted unless a row with its key exists
        (``insert_new``), as one: whether ``new`` was inserted (True without one).

        PostgreSQL sends them as one statement (data-modifying CTEs: one round trip,
        compiled once per shape), whose parts all see the snapshot from before it: no
        write may depend on another's effect (a row inserted by one is still checked as a
        foreign key by another). SQLite runs them one after another."""
        ...

    async def try_lock(self, key: int, wait: bool = False) -> bool:
        """A lock held until the transaction ends, or False at once if another holds
        it (``wait``: wait for it instead, then True). SQLite: always True (the
        transaction holds the file's write lock)."""
        ...

    def locking(
        self, query: sa.Select[Any], skip_locked: bool = False, of: sa.Table | None = None
    ) -> sa.Select[Any]:
        """``query`` taking row locks (``FOR NO KEY UPDATE [OF table] [SKIP LOCKED]``)
        where the database locks rows (``of``: only that table's, in a join); SQLite's
        transaction already excludes every other writer."""
        ...


Body = Callable[[Conn], Coroutine[Any, Any, T]]


class Store(Protocol):
    """The database: transactions, consistent reads, and single statements."""

    url: str

    @property
    def is_sqlite(self) -> bool: ...

    async def connect(self) -> None: ...
    async def disconnect(self) -> None: ...

    async def transaction(self, body: Body[T], accounts: Sequence[str] | None = None) -> T:
        """Run ``body`` in a write transaction: its result once durably committed, or
        its exception with everything it wrote rolled back.

        ``accounts``: the rows of ``accounts`` the body locks, when it locks no other
        rows. Such bodies may commit together with others (group commit; SQLite's
        writes always do)."""
        ...

    async def read(self, body: Body[T]) -> T:
        """Run ``body`` on one consistent snapshot, off the event loop."""
        ...

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]: ...
    async def fetch_one(self, query: Query, values: Values = None) -> Row | None: ...
    async def fetch_val(self, query: Query, values: Values = None) -> Any: ...

    def chunks(
        self, query: sa.Select[Any], values: Values = None, size: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """The rows of a long read, ``size`` at a time, never all in memory at once."""
        ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """No transaction of this process open meanwhile (schema migrations)."""
        ...

    async def ping(self) -> None: ...


class BodyAwaited(RuntimeError):
    """A transaction body awaited something other than its connection."""


def run_body(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a transaction body's coroutine to its end without an event loop.

    The SQLite connection's methods never suspend, so a body that awaits only them
    finishes in one ``send``; anything else it awaited (a network call, a sleep) would
    need a loop this thread does not have, and is refused."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise BodyAwaited("a transaction body may await only its connection")


def findable(value: str) -> str:
    """A key from a request (an id, a username) to look up. PostgreSQL text cannot hold
    NUL, so no stored key has one and querying with it fails: look up "" instead, which
    matches nothing, on either database."""
    return "" if "\x00" in value else value


_SQLITE_TRANSIENT = ("locked", "busy", "rolled back", "closed", "disk I/O", "unable to open")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means a backing service (the database, Redis) is unreachable or
    refusing work for now: the server's problem, but transient. Requests answer 503, so
    a careful client retries with its Idempotency-Key instead of giving up."""
    if isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError):
        # ALTER DATABASE ... ALLOW_CONNECTIONS false, a database being dropped.
        return "accepting connections" in str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        # The write lock held by another process for longer than we wait, a transaction
        # SQLite rolled back under us, a file it cannot reach: not a syntax error (a bug).
        return any(sign in str(exc) for sign in _SQLITE_TRANSIENT)
    return isinstance(
        exc,
        OSError
        # PostgreSQL: class 08 (connection exceptions), 57 (operator intervention:
        # shutdown, backend terminated, cannot connect now), 53 (too many connections),
        # and asyncpg's own "the connection is closed".
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.InsufficientResourcesError
        | asyncpg.InterfaceError
        # A connection's protocol state broken by the server dropping it mid-operation
        # (asyncpg issues #784, #1069): nothing of this request was committed.
        | asyncpg.InternalClientError
        | redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError,
    )
