"""The database connection, write transactions, and schema creation.

Two backends behind one small interface (``Conn``):

- SQLite (the embedded default) runs on a synchronous SQLAlchemy connection, called
  directly on the event loop. A query on a local WAL file takes ~35 µs that way, against
  ~1.2 ms through ``databases`` + aiosqlite (a thread hop per call and no compiled-SQL
  cache), which would cap settlement at a few hundred transfers a second. Every write
  transaction is serialized in the process (an asyncio lock) and opened with BEGIN
  IMMEDIATE, so it takes the file's write lock up front instead of failing with
  "database is locked" mid-transaction. When another process holds the lock, BEGIN fails
  at once (busy timeout 0) and we retry with ``await asyncio.sleep``, so waiting never
  blocks the event loop. Writes share transactions (group commit): those that queue up
  while one COMMIT fsyncs run next, one after another, each in its own SAVEPOINT, and
  one COMMIT makes them all durable before any of them returns.
- PostgreSQL runs on ``databases`` + asyncpg (a pool). Under READ COMMITTED correctness
  comes from atomic conditional updates and row locks taken in a fixed order (ledger.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import asyncpg
import redis.exceptions
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql import visitors

from server import migrate
from server.settings import Settings

LOCK_WAIT_S = 30.0
# While another process holds SQLite's write lock, BEGIN is retried after 0.2 ms, then
# twice as long each time up to this: a retry costs ~20 µs, and a longer pause is time
# the lock may already have been free (the worker's transactions last 1-2 ms).
BEGIN_RETRY_MAX_S = 0.001
CLOSE_WAIT_S = 5.0

log = logging.getLogger("settle.db")

Query = sa.Executable | str


Values = dict[str, Any] | None


class Conn(Protocol):
    """What ledger operations need from a connection, on either backend.

    ``values`` fills the ``bindparam``s of a statement built once at import time (the
    hot path: such statements are compiled once per process on SQLite); an INSERT
    built without values takes its column values from it.
    """

    async def fetch_all(self, query: Query, values: Values = None) -> Sequence[Any]: ...
    async def fetch_one(self, query: Query, values: Values = None) -> Any: ...
    async def fetch_val(self, query: Query, values: Values = None) -> Any: ...
    async def execute(self, query: Query, values: Values = None) -> Any: ...
    async def execute_many(self, query: Query, values: list[dict[str, Any]]) -> None: ...


_NAMED = sqlite_dialect.dialect(paramstyle="named")
# (id(statement), value names) -> (statement, SQL, default parameters). Only module-level
# statements pass ``values``; keeping the statement in the entry pins its id.
_PREPARED: dict[tuple[int, tuple[str, ...]], tuple[Any, str, dict[str, Any]]] = {}


def _prepared(stmt: Any, names: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    key = (id(stmt), names)
    hit = _PREPARED.get(key)
    if hit is None or hit[0] is not stmt:
        # column_keys: a bare INSERT names just the columns given (others take defaults).
        compiled = stmt.compile(dialect=_NAMED, column_keys=list(names))
        defaults = {name: bp.value for name, bp in compiled.binds.items() if not bp.required}
        hit = _PREPARED[key] = (stmt, compiled.string, defaults)
    return hit[1], hit[2]


class SqliteConn:
    """``Conn`` over a synchronous SQLAlchemy connection (see the module docstring).

    Prepared statements (called with ``values``) skip SQLAlchemy's per-call statement
    construction and cache-key work and go straight to the sqlite3 cursor: that cut an
    acceptance from ~5 ms to well under 1 ms of CPU here.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def _run(self, query: Query) -> sa.CursorResult[Any]:
        return self.conn.execute(sa.text(query) if isinstance(query, str) else query)

    def _raw(self, query: Query, values: dict[str, Any]) -> Any:
        sql, defaults = _prepared(query, tuple(values))
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(sql, {**defaults, **values})
        return cursor

    @staticmethod
    def _rows(cursor: Any) -> list[dict[str, Any]]:
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        cursor.close()
        return rows

    async def fetch_all(self, query: Query, values: Values = None) -> Sequence[Any]:
        if values is not None:
            return self._rows(self._raw(query, values))
        return self._run(query).mappings().all()

    async def fetch_one(self, query: Query, values: Values = None) -> Any:
        if values is not None:
            rows = self._rows(self._raw(query, values))
            return rows[0] if rows else None
        return self._run(query).mappings().first()

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        if values is not None:
            row = await self.fetch_one(query, values)
            return None if row is None else next(iter(row.values()))
        row = self._run(query).first()
        return None if row is None else row[0]

    async def execute(self, query: Query, values: Values = None) -> Any:
        if values is not None:
            self._raw(query, values).close()
            return
        self._run(query).close()

    async def execute_many(self, query: Query, values: list[dict[str, Any]]) -> None:
        if not values:
            return
        sql, defaults = _prepared(query, tuple(values[0]))
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.executemany(sql, [{**defaults, **v} for v in values])
        cursor.close()


_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
# (id(statement), value names) -> (statement, SQL, positional names, defaults).
_PG_PREPARED: dict[tuple[int, tuple[str, ...]], tuple[Any, str, list[str], dict[str, Any]]] = {}


def _pg_prepared(stmt: Any, names: tuple[str, ...]) -> tuple[str, list[str], dict[str, Any]]:
    key = (id(stmt), names)
    hit = _PG_PREPARED.get(key)
    if hit is None or hit[0] is not stmt:
        compiled = stmt.compile(dialect=_ASYNCPG, column_keys=list(names))
        defaults = {name: bp.value for name, bp in compiled.binds.items() if not bp.required}
        order = list(compiled.positiontup or [])
        hit = _PG_PREPARED[key] = (stmt, compiled.string, order, defaults)
    return hit[1], hit[2], hit[3]


class PgConn:
    """``Conn`` over a ``databases`` connection (or the pool), for PostgreSQL.

    ``execute_many`` goes straight to asyncpg's ``executemany`` with SQL compiled once
    per process (``databases`` would compile and send each row on its own): that is what
    lets a settlement batch write a thousand rows in a few round trips.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _bind(query: Query, values: Values) -> Any:
        if values is None or isinstance(query, str):
            return query
        if isinstance(query, sa.Insert) and not query._values:
            return query.values(**values)

        # DML has no .params(): substitute the values into the bindparams instead.
        def fill(element: Any) -> Any:
            if isinstance(element, sa.BindParameter) and element.key in values:
                with_value: Any = element._with_value
                return with_value(values[element.key], maintain_key=True, required=False)
            return None

        traverse: Any = visitors.replacement_traverse
        return traverse(query, {}, fill)

    async def fetch_all(self, query: Query, values: Values = None) -> Sequence[Any]:
        return list(await self.conn.fetch_all(self._bind(query, values)))

    async def fetch_one(self, query: Query, values: Values = None) -> Any:
        return await self.conn.fetch_one(self._bind(query, values))

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        return await self.conn.fetch_val(self._bind(query, values))

    async def execute(self, query: Query, values: Values = None) -> Any:
        return await self.conn.execute(self._bind(query, values))

    async def execute_many(self, query: Query, values: list[dict[str, Any]]) -> None:
        if not values:
            return
        sql, order, defaults = _pg_prepared(query, tuple(values[0]))
        rows = [tuple({**defaults, **v}[name] for name in order) for v in values]
        await self.conn.raw_connection.executemany(sql, rows)


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(
        url.replace("sqlite+aiosqlite://", "sqlite://"),
        connect_args={"timeout": 0, "check_same_thread": False},
        poolclass=sa.pool.NullPool,
    )

    @sa.event.listens_for(engine, "connect")
    def pragmas(dbapi_conn: Any, record: Any) -> None:
        # synchronous=FULL: each commit is fsynced, so an acknowledged (202) transfer
        # survives power loss, for ~0.4 ms per commit here. NORMAL would survive a crash
        # of settle but could lose the last commits on power loss.
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    return engine


class _Batch:
    """The writes that share one SQLite transaction, and so one COMMIT (group commit)."""

    def __init__(self) -> None:
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here, so that a failure nobody waits for is not logged as unhandled.
        self.committed.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.broken = False  # rolled back under its writes: it must not commit

    def settle(self, commit: asyncio.Future[Any]) -> None:
        """Resolve ``committed`` from the outcome of the COMMIT statement."""
        if self.committed.done():
            return
        if commit.cancelled():
            self.committed.cancel()
        elif (exc := commit.exception()) is not None:
            self.committed.set_exception(exc)
        else:
            self.committed.set_result(None)


class Store:
    """The database, plus the write-transaction discipline each backend needs."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url
        self.is_sqlite = settings.is_sqlite
        self._write_lock = asyncio.Lock()
        # SQLite: the open transaction that writes join, and the tasks committing them.
        self._batch: _Batch | None = None
        self._committers: set[asyncio.Task[None]] = set()
        self._writer: SqliteConn | None = None
        self._reader: SqliteConn | None = None
        if self.is_sqlite:
            self._engine = _sqlite_engine(self.url)
        else:
            from databases import Database

            self.db = Database(self.url, min_size=2, max_size=20)

    async def connect(self) -> None:
        if not self.is_sqlite:
            await self.db.connect()
            return
        self._writer = SqliteConn(
            self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        )
        self._reader = SqliteConn(
            self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        )
        # Readers in WAL mode are not blocked by writers; a short wait covers the rare
        # cases (WAL recovery) where they are.
        self._reader.conn.exec_driver_sql("PRAGMA busy_timeout=2000")

    async def disconnect(self) -> None:
        if not self.is_sqlite:
            try:
                await asyncio.wait_for(self.db.disconnect(), CLOSE_WAIT_S)
            except TimeoutError:
                # asyncpg's close waits for every connection to come back to the pool;
                # one the server dropped mid-operation can stay checked out for good
                # (seen after pg_terminate_backend). Do not hang the shutdown on it.
                log.warning("database pool did not close within %s s: terminated", CLOSE_WAIT_S)
                pool = self.db._backend._pool
                if pool is not None:
                    pool.terminate()
            return
        # Writes that have ended are committed before the connection closes.
        await asyncio.gather(*self._committers, return_exceptions=True)
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.conn.close()
        self._writer = self._reader = None
        self._engine.dispose()

    @property
    def _read(self) -> Conn:
        return self._reader if self._reader is not None else PgConn(self.db)

    async def fetch_all(self, query: Query, values: Values = None) -> list[Any]:
        return list(await self._read.fetch_all(query, values))

    async def fetch_one(self, query: Query, values: Values = None) -> Any:
        return await self._read.fetch_one(query, values)

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        return await self._read.fetch_val(query, values)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Conn]:
        """One write: durably committed when the block ends, rolled back on error.

        On SQLite the block runs alone (the process's write lock), inside a SAVEPOINT of
        a transaction it may share with the writes queued with it; it returns once that
        transaction has committed, so an acknowledged write is on disk, and one that
        failed has seen only committed work of others (see the module docstring).
        """
        if not self.is_sqlite:
            async with self.db.connection() as conn, conn.transaction():
                yield PgConn(conn)
            return
        writer = self._writer
        assert writer is not None, "Store.connect() was not called"
        failure: BaseException | None = None
        async with self._write_lock:
            batch = await self._join(writer)
            writer.conn.exec_driver_sql("SAVEPOINT write")
            try:
                yield writer
                writer.conn.exec_driver_sql("RELEASE write")
            except BaseException as exc:
                failure = exc
                self._undo(writer, batch)
        if isinstance(failure, GeneratorExit):
            raise failure
        try:
            await asyncio.shield(batch.committed)
        except Exception:
            if failure is None:
                raise
        if failure is not None:
            raise failure

    async def _join(self, writer: SqliteConn) -> _Batch:
        """The open transaction, or a new one (BEGIN IMMEDIATE) with its committer, which
        queues for the write lock behind the writes already waiting: they join it."""
        if self._batch is None:
            await _begin_immediate(writer.conn)
            self._batch = _Batch()
            committer = asyncio.create_task(self._commit(self._batch))
            self._committers.add(committer)
            committer.add_done_callback(self._committers.discard)
        return self._batch

    def _undo(self, writer: SqliteConn, batch: _Batch) -> None:
        """Roll one failed write back to its savepoint. On the errors after which SQLite
        has rolled the whole transaction back (disk full, I/O), the batch fails."""
        raw = writer.conn.connection.driver_connection
        with contextlib.suppress(sa.exc.DBAPIError):
            if raw is not None and raw.in_transaction:
                writer.conn.exec_driver_sql("ROLLBACK TO write")
                writer.conn.exec_driver_sql("RELEASE write")
                return
        batch.broken = True
        if self._batch is batch:
            self._batch = None
        with contextlib.suppress(sa.exc.DBAPIError):
            writer.conn.exec_driver_sql("ROLLBACK")

    async def _commit(self, batch: _Batch) -> None:
        async with self._write_lock:
            await self._end(batch)

    async def _end(self, batch: _Batch) -> None:
        """COMMIT ``batch`` (the write lock held) and tell its writes how it went."""
        if self._batch is batch:
            self._batch = None
        if batch.committed.done():
            return
        if batch.broken:
            message = "the transaction was rolled back: retry"
            batch.committed.set_exception(sqlite3.OperationalError(message))
            return
        writer = self._writer
        assert writer is not None
        # COMMIT fsyncs (synchronous=FULL): off the event loop, so that reads and other
        # requests go on meanwhile. Even if this task is cancelled, the lock is held until
        # COMMIT is over: nothing else may touch the connection before.
        commit = asyncio.ensure_future(asyncio.to_thread(writer.conn.exec_driver_sql, "COMMIT"))
        commit.add_done_callback(batch.settle)  # how the writes learn the outcome
        cancelled = False
        while not commit.done():
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                cancelled = True
            except Exception:
                break
        raw = writer.conn.connection.driver_connection
        if raw is not None and raw.in_transaction:  # COMMIT failed: end it for the next
            with contextlib.suppress(sa.exc.DBAPIError):
                writer.conn.exec_driver_sql("ROLLBACK")
        if cancelled:
            raise asyncio.CancelledError

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """The write lock, with no transaction of ours open (for schema migrations)."""
        async with self._write_lock:
            if self._batch is not None:
                await self._end(self._batch)
            yield

    def insert(self, table: sa.Table) -> sqlite_dialect.Insert | postgresql.Insert:
        """A dialect-specific INSERT, which offers ``on_conflict_do_nothing``."""
        if self.is_sqlite:
            return sqlite_dialect.insert(table)
        return postgresql.insert(table)

    def for_update(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """Row locks on PostgreSQL; SQLite already holds the whole-file write lock."""
        return query if self.is_sqlite else query.with_for_update()

    async def ping(self) -> None:
        await self.fetch_val("SELECT 1")


async def _begin_immediate(conn: sa.Connection) -> None:
    """Take SQLite's write lock, yielding to the event loop while another process has it."""
    deadline = time.monotonic() + LOCK_WAIT_S
    pause = 0.0002
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, BEGIN_RETRY_MAX_S)


def findable(value: str) -> str:
    """A key from a request (an id, a username) to look up. PostgreSQL text cannot hold
    NUL, so no stored key has one and querying with it fails: look up "" instead, which
    matches nothing, on either database."""
    return "" if "\x00" in value else value


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means a backing service (the database, Redis) is unreachable or
    refusing work for now: the server's problem, but transient. Requests answer 503, so
    a careful client retries with its Idempotency-Key instead of giving up."""
    if isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError):
        # ALTER DATABASE ... ALLOW_CONNECTIONS false, a database being dropped.
        return "accepting connections" in str(exc)
    return isinstance(
        exc,
        OSError
        # SQLite: the write lock held by another process for longer than LOCK_WAIT_S.
        | sqlite3.OperationalError
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


async def create_schema(store: Store) -> None:
    """Bring the schema up to date with the Alembic migrations (``server/migrations``).

    Runs in a thread: Alembic is synchronous and runs its own event loop for asyncpg.
    Concurrent callers are safe: each migration runs in a transaction, and on SQLite our
    write lock keeps this process's own writers out meanwhile.
    """
    async with store.exclusive():
        await asyncio.to_thread(migrate.upgrade, store.url)
