"""The embedded store: a SQLite file, each connection on a thread of its own.

sqlite3 blocks, so each connection lives on its own thread, and each awaited call is a
hop to that thread and back (tens of microseconds). So a transaction is *one* hop, not
one per statement: its whole body (``server.store.base``) runs on the writer's thread,
and the writes that queue up meanwhile go with it (group commit):

    BEGIN IMMEDIATE; SAVEPOINT; body 1; RELEASE; SAVEPOINT; body 2; ...; COMMIT

Each body succeeds or fails on its own (a failing one rolls back to its savepoint), and
none returns before the COMMIT that makes it durable: ``synchronous=FULL`` fsyncs every
commit, so an acknowledged (202) transfer survives a power loss. While one batch commits,
the next queues; the loop only ever waits, so no read and no socket stalls behind a
write, and long reads run on reader connections (their own threads, WAL snapshots).

Several processes may share the file (``settle web`` and ``settle worker``). BEGIN
IMMEDIATE takes the file's write lock up front, so a transaction never fails half-way
with "database is locked"; when another process holds the lock, BEGIN fails at once
(busy timeout 0) and is retried after an ``asyncio.sleep``, so waiting never blocks the
event loop, and writes that queue meanwhile join the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from server.store.base import Body, Query, Row, Values, Write, run_body

T = TypeVar("T")

log = logging.getLogger("settle.store")

# How long a write waits for another process to release the file's write lock before
# it fails (503): far longer than any transaction of ours holds it.
LOCK_WAIT_S = 30.0
# While another process holds the write lock, BEGIN is retried after 0.2 ms, then twice
# as long each time up to this: a retry costs one hop, and a longer pause is time the
# lock may already have been free (a worker's transaction lasts a millisecond or two).
BEGIN_RETRY_MAX_S = 0.001
# Writes committed together at most: bounds one transaction's time holding the lock.
MAX_BATCH = 256
# Reader connections (threads): long reads (a statement, an audit) on some leave others
# free for the short ones every request makes.
READERS = 4
# The process's GIL switch interval, at most (Python's default: 5 ms). The writer
# thread holds the file's write lock, which every process's writes wait for, from BEGIN
# to COMMIT; each statement lets go of the GIL, and a busy event loop then keeps it for
# up to the switch interval before the writer's next statement may run. A shorter one
# shortens the lock's hold (bench/README.md, "The window on SQLite, before and after").
GIL_SWITCH_S = 0.0005

_DIALECT = sqlite_dialect.dialect(paramstyle="named")
# (id(statement), value names) -> (statement, SQL, default parameters). Only statements
# built once at import time pass ``values``; keeping the statement pins its id.
_PREPARED: dict[tuple[int, tuple[str, ...]], tuple[Any, str, dict[str, Any]]] = {}
_INSERT_NEW: dict[str, Any] = {}


def _prepare(query: Any, names: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    key = (id(query), names)
    hit = _PREPARED.get(key)
    if hit is None or hit[0] is not query:
        # column_keys: a bare INSERT names just the columns given (others take defaults).
        built = query.compile(dialect=_DIALECT, column_keys=list(names))
        defaults = {name: bp.value for name, bp in built.binds.items() if not bp.required}
        hit = _PREPARED[key] = (query, built.string, defaults)
    return hit[1], hit[2]


def compiled(query: Query, values: Values) -> tuple[str, Mapping[str, Any]]:
    """SQL and parameters for sqlite3. Prepared statements (given ``values``) skip
    SQLAlchemy's per-call compilation and cache-key work entirely."""
    if isinstance(query, str):
        return query, values or {}
    if values is None:
        statement: Any = query
        built = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
        return built.string, built.params
    sql, defaults = _prepare(query, tuple(values))
    return sql, ({**defaults, **values} if defaults else values)


class SqliteConn:
    """``Conn`` over a raw sqlite3 connection, used only on that connection's thread.

    Its methods are coroutines that never suspend: a body awaiting only them runs to its
    end in one step (``run_body``)."""

    __slots__ = ("raw", "transaction_id")

    def __init__(self, raw: sqlite3.Connection, transaction_id: int = 0) -> None:
        self.raw = raw
        # Which transaction this is (tests prove that writes share one).
        self.transaction_id = transaction_id

    def _run(self, query: Query, values: Values) -> sqlite3.Cursor:
        sql, params = compiled(query, values)
        return self.raw.execute(sql, params)

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        return self._run(query, values).fetchall()

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        return self._run(query, values).fetchone()

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        row = self._run(query, values).fetchone()
        return None if row is None else next(iter(row.values()))

    async def execute(self, query: Query, values: Values = None) -> None:
        self._run(query, values).close()

    async def execute_many(self, query: Query, values: Sequence[Mapping[str, Any]]) -> None:
        if not values:
            return
        defaults: dict[str, Any]
        if isinstance(query, str):
            sql, defaults = query, {}
        else:
            sql, defaults = _prepare(query, tuple(values[0]))
        rows = [{**defaults, **v} for v in values] if defaults else values
        self.raw.executemany(sql, rows).close()

    async def insert_new(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        stmt = _INSERT_NEW.get(table.name)
        if stmt is None:
            stmt = _INSERT_NEW[table.name] = sqlite_dialect.insert(table).on_conflict_do_nothing()
        cursor = self._run(stmt, values)
        inserted = cursor.rowcount == 1
        cursor.close()
        return inserted

    async def write_all(
        self, writes: Sequence[Write], new: tuple[sa.Table, Mapping[str, Any]] | None = None
    ) -> bool:
        for query, values in writes:
            if isinstance(values, Mapping):
                await self.execute(query, values)
            else:
                await self.execute_many(query, values)
        return new is None or await self.insert_new(*new)

    async def try_lock(self, key: int, wait: bool = False) -> bool:
        return True  # BEGIN IMMEDIATE already holds the file's write lock

    def locking(
        self, query: sa.Select[Any], skip_locked: bool = False, of: sa.Table | None = None
    ) -> sa.Select[Any]:
        return query


_BUSY = object()  # BEGIN IMMEDIATE found the write lock taken by another process
_TRANSACTION_IDS = itertools.count(1)


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


Pending = tuple[Body[Any], "asyncio.Future[Any]"]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _run_batch(raw: sqlite3.Connection, batch: list[Pending]) -> object:
    """On the writer's thread: one transaction for a batch of bodies. Returns _BUSY, or
    one outcome (a value or _Failed) per body of a prefix of the batch: when SQLite
    rolls a whole transaction back under us (disk full, I/O error), the bodies already
    run fail with it, and the rest are left for a new transaction."""
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            return _BUSY
        raise
    conn = SqliteConn(raw, next(_TRANSACTION_IDS))
    outcomes: list[object] = []
    for body, _ in batch:
        raw.execute("SAVEPOINT write")
        try:
            value = run_body(body(conn))
        except BaseException as exc:
            if _undo(raw):
                outcomes.append(_Failed(exc))
                continue
            lost = sqlite3.OperationalError("the transaction was rolled back: retry")
            return [_Failed(lost) for _ in outcomes] + [_Failed(exc)]
        raw.execute("RELEASE write")
        outcomes.append(value)
    try:
        raw.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            if raw.in_transaction:
                raw.execute("ROLLBACK")
        return [_Failed(exc) for _ in outcomes]
    return outcomes


def _undo(raw: sqlite3.Connection) -> bool:
    """Roll a failed body back to its savepoint; False if SQLite already rolled back the
    whole transaction."""
    with contextlib.suppress(sqlite3.Error):
        if raw.in_transaction:
            raw.execute("ROLLBACK TO write")
            raw.execute("RELEASE write")
            return True
    with contextlib.suppress(sqlite3.Error):
        if raw.in_transaction:
            raw.execute("ROLLBACK")
    return False


def _read(raw: sqlite3.Connection, body: Body[T]) -> T:
    """On a reader's thread: ``body`` in one read transaction (one WAL snapshot)."""
    raw.execute("BEGIN")
    try:
        return run_body(body(SqliteConn(raw)))
    finally:
        raw.execute("COMMIT")


def _fetch(raw: sqlite3.Connection, how: str, query: Query, values: Values) -> Any:
    cursor = SqliteConn(raw)._run(query, values)
    try:
        if how == "all":
            return cursor.fetchall()
        row = cursor.fetchone()
        if how == "one" or row is None:
            return row
        return next(iter(row.values()))
    finally:
        cursor.close()


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    # Plain dicts, like the PostgreSQL store's records: rows are read by column name.
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def _connector(path: str, *, writer: bool) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves. Opening waits for the file
        # (another process may be recovering its WAL or checkpointing it as it closes:
        # several start at once), on this thread, not the loop.
        raw = sqlite3.connect(
            path,
            isolation_level=None,
            timeout=LOCK_WAIT_S if writer else 2,
            check_same_thread=False,
            cached_statements=256,
        )
        raw.row_factory = _dict_row
        if writer:
            # synchronous=FULL: each commit is fsynced, so an acknowledged write survives
            # power loss, for ~0.4 ms per commit here (group commit shares it).
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                raw.execute(f"PRAGMA {pragma}")
            # Then the writer never waits inside SQLite for the write lock: the loop
            # retries BEGIN instead (see above).
            raw.execute("PRAGMA busy_timeout=0")
        else:
            raw.execute("PRAGMA query_only=ON")
        return raw

    return connect


class _Thread:
    """A thread that owns one sqlite3 connection and runs what it is handed, in order.

    A whole function per hop (``call``), not a statement: a transaction body, a batch
    of them, a chunk of a long read. (aiosqlite's public API hops once per statement,
    and its way of running a function on its thread is private; docs/architecture.md
    has the figures.)"""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._connect = connect
        self.raw: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @classmethod
    async def open(cls, path: str, *, writer: bool) -> _Thread:
        name = "settle-sqlite-" + ("writer" if writer else "reader")
        thread = cls(_connector(path, writer=writer), name)
        await thread.start()
        return thread

    async def start(self) -> None:
        """Start the thread and open the connection on it."""
        self._thread.start()
        self.raw = await self._submit(self._connect)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, done = job
            try:
                result = fn()
            except BaseException as exc:  # handed back to the awaiting coroutine
                done.get_loop().call_soon_threadsafe(_fail, done, exc)
            else:
                done.get_loop().call_soon_threadsafe(_succeed, done, result)

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, done))
        return done

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(raw_connection, *args)`` on this thread."""
        raw = self.raw
        if raw is None:
            raise sqlite3.ProgrammingError("the connection is closed")
        return await self._submit(lambda: fn(raw, *args))

    async def close(self) -> None:
        raw, self.raw = self.raw, None
        if raw is not None:
            await self._submit(raw.close)
        self._jobs.put(None)


def _succeed(done: asyncio.Future[Any], result: Any) -> None:
    if not done.done():  # the awaiting coroutine may have been cancelled meanwhile
        done.set_result(result)


def _fail(done: asyncio.Future[Any], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)


class SqliteStore:
    """``Store`` on a SQLite file: one writer thread with group commit, reader threads."""

    def __init__(self, url: str, readers: int = READERS) -> None:
        self.url = url
        database = sa.engine.make_url(url.replace("sqlite+aiosqlite:", "sqlite:")).database
        if not database or database == ":memory:":
            raise ValueError("settle needs a SQLite file: sqlite:///PATH")
        self.path = database
        self._reader_count = readers
        self._writer: _Thread | None = None
        self._readers: asyncio.Queue[_Thread] = asyncio.Queue()
        self._all: list[_Thread] = []
        self._pending: list[Pending] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def is_sqlite(self) -> bool:
        return True

    async def connect(self) -> None:
        if sys.getswitchinterval() > GIL_SWITCH_S:
            sys.setswitchinterval(GIL_SWITCH_S)
        self._writer = await _Thread.open(self.path, writer=True)
        self._all = [self._writer]
        for _ in range(self._reader_count):
            reader = await _Thread.open(self.path, writer=False)
            self._all.append(reader)
            self._readers.put_nowait(reader)
        self._closing = False
        self._loop_task = asyncio.create_task(self._write_loop(), name="settle-sqlite-writer")

    async def disconnect(self) -> None:
        """Commit what is queued, then close every connection."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for thread in self._all:
            with contextlib.suppress(Exception):
                await thread.close()
        self._all, self._writer = [], None
        self._readers = asyncio.Queue()

    async def transaction(self, body: Body[T], accounts: Sequence[str] | None = None) -> T:
        if self._closing or self._loop_task is None:
            raise sqlite3.OperationalError("the store is closed")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((body, done))
        self._wake.set()
        return await done

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            async with self._lock:
                try:
                    await self._commit_pending()
                except Exception:
                    # A bug here must not stop every write of the process for good.
                    log.exception("the SQLite writer failed; failing its queued writes")
                    self._fail(len(self._pending), sqlite3.OperationalError("write failed"))

    async def _commit_pending(self) -> None:
        """Commit every queued write, a batch (one transaction) at a time."""
        assert self._writer is not None
        started, pause = time.monotonic(), 0.0002
        while self._pending:
            self._pending = [item for item in self._pending if not item[1].cancelled()]
            batch = self._pending[:MAX_BATCH]
            if not batch:
                return
            try:
                outcomes = await self._writer.call(_run_batch, batch)
            except Exception as exc:  # BEGIN itself failed (I/O error, closed file)
                self._fail(len(batch), exc)
                continue
            if outcomes is _BUSY:
                if time.monotonic() - started > LOCK_WAIT_S:
                    self._fail(len(batch), sqlite3.OperationalError("database is locked"))
                    continue
                # Another process holds the write lock: wait on the loop, not in SQLite.
                await asyncio.sleep(pause)
                pause = min(pause * 2, BEGIN_RETRY_MAX_S)
                continue
            assert isinstance(outcomes, list)
            for (_, done), outcome in zip(batch, outcomes, strict=False):
                if done.done():
                    continue
                if isinstance(outcome, _Failed):
                    done.set_exception(outcome.error)
                else:
                    done.set_result(outcome)
            del self._pending[: len(outcomes)]
            started, pause = time.monotonic(), 0.0002

    def _fail(self, count: int, error: BaseException) -> None:
        for _, done in self._pending[:count]:
            if not done.done():
                done.set_exception(error)
        del self._pending[:count]

    async def _on_reader(self, fn: Callable[..., T], *args: Any) -> T:
        reader = await self._readers.get()
        try:
            return await reader.call(fn, *args)
        finally:
            self._readers.put_nowait(reader)

    async def read(self, body: Body[T]) -> T:
        return await self._on_reader(_read, body)

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        rows: list[Row] = await self._on_reader(_fetch, "all", query, values)
        return rows

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        return await self._on_reader(_fetch, "one", query, values)

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        return await self._on_reader(_fetch, "val", query, values)

    async def chunks(
        self, query: sa.Select[Any], values: Values = None, size: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """One statement, read ``size`` rows per hop on one reader: a single SELECT reads
        one WAL snapshot however long it runs."""
        reader = await self._readers.get()
        cursor: sqlite3.Cursor | None = None
        try:
            cursor = await reader.call(lambda raw: SqliteConn(raw)._run(query, values))
            while True:
                rows: list[Row] = await reader.call(lambda raw: cursor.fetchmany(size))
                if not rows:
                    return
                yield rows
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    await reader.call(lambda raw: cursor.close())
            self._readers.put_nowait(reader)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    async def ping(self) -> None:
        await self.fetch_val("SELECT 1")
