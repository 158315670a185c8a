"""The scale-out store: PostgreSQL through ``databases`` (its pool) and the asyncpg
connection it hands out (``Connection.raw_connection``), whose transactions it uses
(the store's connection method says why).

Every statement is compiled by SQLAlchemy once per process (``_compiled``) and sent to
asyncpg as SQL text and positional arguments, whose prepared-statement cache then
prepares it once per connection: a request spends its CPU on the query's round trip,
not on building and compiling SQL each time (``databases`` itself compiles every call).

Under READ COMMITTED, correctness comes from atomic conditional updates, row locks taken
in a fixed order (the ledger), ``FOR NO KEY UPDATE SKIP LOCKED`` for settlement batches and a
transaction-scoped advisory lock for "settling now".

Group commit: transactions that say which accounts they lock (acceptances) and arrive
while one group is committing go together in the next, in one transaction:

    BEGIN; lock every account of the group, in id order; body 1; body 2; ...; COMMIT

so an account many pay at once is locked, and waits for a commit's WAL flush, once per
group rather than once per transfer. A body that fails before writing fails alone; one
that fails after writing (or whose statement failed) rolls the group back, and each of
its bodies then runs in a transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql import visitors

from server.batching import Batched
from server.store.base import Body, Query, Row, Values, Write, unavailable

T = TypeVar("T")

log = logging.getLogger("settle.store")

CLOSE_WAIT_S = 5.0
POOL_MIN, POOL_MAX = 2, 20
# Transactions committed together at most: bounds how long a group holds its locks.
MAX_GROUP = 64
# A group's accounts, locked up front in id order (the order every transaction locks
# accounts in), at the strength the ledger's own reads lock them with.
_LOCK_ACCOUNTS = "SELECT id FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"

_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
# (id(statement), value names) -> (statement, SQL, positional names, defaults). Only
# statements built once at import time pass ``values``; keeping the statement pins its id.
_PREPARED: dict[tuple[int, tuple[str, ...]], tuple[Any, str, list[str], dict[str, Any]]] = {}
# Statements derived once from another (a table's "insert unless it exists", a query's
# locking form): (id, variant) -> (weak reference to the original, derived). An entry
# goes with its original (a query built on the fly is derived for that call only).
_DERIVED: dict[tuple[int, str], tuple[weakref.ref[Any], Any]] = {}
# Several writes sent as one statement (``PgConn.write_all``), by their shape: the
# statements (kept: their ids are in the key), the SQL, where its arguments come from.
_COMBINED: dict[tuple[Any, ...], tuple[tuple[Any, ...], str, list[Any]]] = {}
_TRY_LOCK = sa.select(sa.func.pg_try_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))
_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))


def _prepared(stmt: Any, names: tuple[str, ...]) -> tuple[str, list[str], dict[str, Any]]:
    key = (id(stmt), names)
    hit = _PREPARED.get(key)
    if hit is None or hit[0] is not stmt:
        # column_keys: a bare INSERT names just the columns given (others take defaults).
        built = stmt.compile(dialect=_ASYNCPG, column_keys=list(names))
        defaults = {name: bp.value for name, bp in built.binds.items() if not bp.required}
        hit = _PREPARED[key] = (stmt, built.string, list(built.positiontup or []), defaults)
    return hit[1], hit[2], hit[3]


def _compiled(query: Query, values: Values) -> tuple[str, list[Any]]:
    """SQL text and positional arguments for asyncpg."""
    if isinstance(query, str):
        return query, []
    if values is None:
        # Built on the fly (its values inside it): compiled for this call only.
        statement: Any = query
        built = statement.compile(dialect=_ASYNCPG, compile_kwargs={"render_postcompile": True})
        params = built.construct_params()
        return built.string, [params[name] for name in built.positiontup or []]
    sql, order, defaults = _prepared(query, tuple(values))
    merged = {**defaults, **values} if defaults else values
    return sql, [merged[name] for name in order]


def _derived(stmt: Any, variant: str, make: Any) -> Any:
    key = (id(stmt), variant)
    hit = _DERIVED.get(key)
    if hit is None or hit[0]() is not stmt:
        hit = _DERIVED[key] = (weakref.ref(stmt), make(stmt))
        weakref.finalize(stmt, _DERIVED.pop, key, None)
    return hit[1]


def _rows(values: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    return [values] if isinstance(values, Mapping) else values


def _part(index: int, stmt: Any, values: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
    """Write ``index`` of a combined statement as a CTE, its parameters renamed
    ``w<index>_<name>`` (an INSERT's ``w<index>_<row>_<column>``)."""
    prefix = f"w{index}_"
    if isinstance(stmt, sa.Insert):
        table = stmt.table
        rows = [
            {name: sa.bindparam(f"{prefix}{r}_{name}", type_=table.c[name].type) for name in row}
            for r, row in enumerate(_rows(values))
        ]
        return stmt.values(rows).cte(f"w{index}")

    def renamed(element: Any, **kw: Any) -> Any:
        if isinstance(element, sa.BindParameter):
            return sa.bindparam(
                prefix + element.key,
                value=element.value,
                type_=element.type,
                required=element.required,
            )
        return None

    changed: Any = visitors.replacement_traverse(stmt, {}, renamed)
    return changed.cte(f"w{index}")


# Where each positional argument of a combined statement comes from: (write, row, name,
# default); ``row`` is None for a write whose values are one mapping of bind values.
_Source = tuple[int, int | None, str, Any]


def _combined(
    writes: Sequence[Write], new: tuple[sa.Table, Mapping[str, Any]] | None
) -> tuple[str, list[_Source]]:
    """The SQL of several writes (and the claim of ``new``) as one statement, compiled
    once per shape, and where each of its positional arguments comes from."""
    parts = [*writes, *([new] if new else [])]
    key = tuple((id(stmt), tuple(_rows(values)[0]), len(_rows(values))) for stmt, values in parts)
    hit = _COMBINED.get(key)
    if hit is None or any(a is not b for a, (b, _) in zip(hit[0], parts, strict=True)):
        ctes = [_part(i, stmt, values) for i, (stmt, values) in enumerate(writes)]
        if new is None:
            query = sa.select(sa.literal(1)).add_cte(*ctes)
        else:
            table, row = new
            claim = postgresql.insert(table).on_conflict_do_nothing().returning(sa.literal(1))
            claimed = _part(len(writes), claim, row)
            count = sa.select(sa.func.count()).select_from(claimed).scalar_subquery()
            query = sa.select(count).add_cte(*ctes)
        built = query.compile(dialect=_ASYNCPG)
        defaults = {name: bp.value for name, bp in built.binds.items() if not bp.required}
        # The renamed parameters (``_part``): w<write>_<row>_<column> for an INSERT's
        # rows, w<write>_<name> otherwise.
        origin: dict[str, tuple[int, int | None, str]] = {}
        for i, (stmt, values) in enumerate(parts):
            if isinstance(stmt, sa.Insert | sa.Table):
                for r, one in enumerate(_rows(values)):
                    origin.update({f"w{i}_{r}_{name}": (i, r, name) for name in one})
            else:
                assert isinstance(values, Mapping)
                origin.update({f"w{i}_{name}": (i, None, name) for name in values})
        sources: list[_Source] = [
            (*origin.get(name, (-1, None, name)), defaults.get(name))
            for name in built.positiontup or []
        ]
        hit = _COMBINED[key] = (tuple(stmt for stmt, _ in parts), built.string, sources)
    return hit[1], hit[2]


def _arguments(
    writes: Sequence[Write],
    new: tuple[sa.Table, Mapping[str, Any]] | None,
    sources: Sequence[_Source],
) -> list[Any]:
    """A combined statement's positional arguments, in order (see ``_combined``)."""
    rows = [_rows(values) for _, values in (*writes, *([new] if new else []))]
    return [
        default if i < 0 else rows[i][0 if r is None else r].get(name, default)
        for i, r, name, default in sources
    ]


class PgConn:
    """``Conn`` over one asyncpg connection (inside a transaction, or on its own)."""

    __slots__ = ("raw",)

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        sql, args = _compiled(query, values)
        return list(await self.raw.fetch(sql, *args))

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        sql, args = _compiled(query, values)
        return await self.raw.fetchrow(sql, *args)

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        sql, args = _compiled(query, values)
        return await self.raw.fetchval(sql, *args)

    async def execute(self, query: Query, values: Values = None) -> None:
        sql, args = _compiled(query, values)
        await self.raw.execute(sql, *args)

    async def execute_many(self, query: Query, values: Sequence[Mapping[str, Any]]) -> None:
        if not values:
            return
        sql, order, defaults = _prepared(query, tuple(values[0]))
        rows = [tuple({**defaults, **v}[name] for name in order) for v in values]
        await self.raw.executemany(sql, rows)

    async def insert_new(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        first_key = next(iter(table.primary_key.columns))
        stmt = _derived(
            table,
            "insert_new",
            lambda t: postgresql.insert(t).on_conflict_do_nothing().returning(first_key),
        )
        return await self.fetch_one(stmt, values) is not None

    async def write_all(
        self, writes: Sequence[Write], new: tuple[sa.Table, Mapping[str, Any]] | None = None
    ) -> bool:
        sql, sources = _combined(writes, new)
        count = await self.raw.fetchval(sql, *_arguments(writes, new, sources))
        return new is None or count == 1

    async def try_lock(self, key: int, wait: bool = False) -> bool:
        if wait:
            await self.fetch_val(_LOCK, {"key": key})
            return True
        return bool(await self.fetch_val(_TRY_LOCK, {"key": key}))

    def locking(
        self, query: sa.Select[Any], skip_locked: bool = False, of: sa.Table | None = None
    ) -> sa.Select[Any]:
        # FOR NO KEY UPDATE: no key is ever changed, and it does not wait for (or deadlock
        # with) the key-share locks that inserts referencing these rows take. Derived
        # once per statement, so that it is compiled once too (``_prepared``).
        return _derived(  # type: ignore[no-any-return]
            query,
            f"locking:{skip_locked}:{'' if of is None else of.name}",
            lambda q: q.with_for_update(skip_locked=skip_locked, key_share=True, of=of),
        )


def _reads(query: Query) -> bool:
    if isinstance(query, str):
        return query.lstrip()[:6].upper() == "SELECT"
    return isinstance(query, sa.Select)


class _InGroup(PgConn):
    """``PgConn`` for one body of a group: notes whether it wrote (any statement but a
    SELECT) or had a statement fail. A body that raises after either cannot fail on its
    own: its writes, or the aborted transaction, are the group's."""

    touched = False

    @contextlib.contextmanager
    def _statement(self, query: Query | None = None) -> Iterator[None]:
        if query is None or not _reads(query):
            self.touched = True
        try:
            yield
        except BaseException:
            self.touched = True
            raise

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        with self._statement(query):
            return await super().fetch_all(query, values)

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        with self._statement(query):
            return await super().fetch_one(query, values)

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        with self._statement(query):
            return await super().fetch_val(query, values)

    async def execute(self, query: Query, values: Values = None) -> None:
        with self._statement():
            await super().execute(query, values)

    async def execute_many(self, query: Query, values: Sequence[Mapping[str, Any]]) -> None:
        with self._statement():
            await super().execute_many(query, values)

    async def insert_new(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        with self._statement():
            return await super().insert_new(table, values)

    async def write_all(
        self, writes: Sequence[Write], new: tuple[sa.Table, Mapping[str, Any]] | None = None
    ) -> bool:
        with self._statement():
            return await super().write_all(writes, new)


class _Alone(Exception):
    """A body of a group failed after writing: each body runs on its own instead."""


# A body's result, or its exception.
_Outcome = tuple[bool, Any]
_Grouped = tuple[Body[Any], tuple[str, ...]]


async def _keep_session(raw: asyncpg.Connection) -> None:
    """What a connection going back to the pool needs beyond asyncpg's own clean-up
    (which ends any open transaction): nothing. asyncpg's default also sends a reset
    statement (advisory locks, cursors, LISTEN, session settings), one more round trip
    per use; settle keeps no session state: its locks are transaction-scoped, its cursors
    live inside transactions, it never LISTENs or SETs."""


class PostgresStore:
    """``Store`` on PostgreSQL: a pool of up to 20 connections per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Options beyond the URL go to asyncpg.create_pool (its documented ``reset``).
        self.db = Database(url, min_size=POOL_MIN, max_size=POOL_MAX, reset=_keep_session)
        # The connections out of the pool now: ended by force if closing hangs.
        self._lent: set[asyncpg.Connection] = set()
        self._group = Batched(self._commit_group, limit=MAX_GROUP)

    @property
    def is_sqlite(self) -> bool:
        return False

    async def connect(self) -> None:
        await self.db.connect()

    async def disconnect(self) -> None:
        await self._group.close()
        closing = asyncio.ensure_future(self.db.disconnect())
        done, _ = await asyncio.wait([closing], timeout=CLOSE_WAIT_S)
        if done:
            closing.result()
            return
        # asyncpg's close waits for every connection to come back to the pool; one the
        # server dropped mid-operation can stay checked out for good (seen after
        # pg_terminate_backend). Do not hang the shutdown on it: end those connections.
        log.warning("database pool did not close within %s s: terminated", CLOSE_WAIT_S)
        for raw in list(self._lent):
            raw.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, CLOSE_WAIT_S)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection from the pool, as asyncpg's own (``databases``' public
        ``raw_connection``), and transactions on it are asyncpg's too. ``databases``'
        ``Transaction`` enters its connection once more before BEGIN and leaves it only
        after COMMIT or ROLLBACK succeeds: a BEGIN, COMMIT or ROLLBACK that fails or is
        cancelled keeps the connection out of the pool for good (seen: a WebSocket closed
        while its catch-up read began; a connection the server ended mid-transaction).
        asyncpg's pool ends a transaction left open when the connection comes back."""
        async with self.db.connection() as conn:
            raw = conn.raw_connection
            self._lent.add(raw)
            try:
                yield raw
            finally:
                self._lent.discard(raw)

    async def transaction(self, body: Body[T], accounts: Sequence[str] | None = None) -> T:
        if accounts is None:
            return await self._alone(body)
        ok, value = await self._group((body, tuple(accounts)))
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    async def _alone(self, body: Body[T]) -> T:
        async with self._connection() as raw, raw.transaction():
            return await body(PgConn(raw))

    async def _commit_group(self, group: list[_Grouped]) -> list[_Outcome]:
        """The bodies waiting together, committed in one transaction (see the module's
        docstring); each one's result or exception, in order."""
        if len(group) > 1:
            try:
                return await self._together(group)
            except _Alone:
                pass
            except asyncpg.PostgresError as exc:
                if unavailable(exc):
                    raise
                # A deadlock, a statement cancelled: the group is rolled back.
                log.warning(
                    "a group of %d transactions failed, each runs alone: %r", len(group), exc
                )
        outcomes: list[_Outcome] = []
        for body, _ in group:
            try:
                outcomes.append((True, await self._alone(body)))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    async def _together(self, group: list[_Grouped]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        async with self._connection() as raw, raw.transaction():
            await raw.execute(
                _LOCK_ACCOUNTS, sorted({a for _, accounts in group for a in accounts})
            )
            for body, _ in group:
                conn = _InGroup(raw)
                try:
                    outcomes.append((True, await body(conn)))
                except Exception as exc:
                    if conn.touched:
                        raise _Alone from exc
                    outcomes.append((False, exc))
        return outcomes

    async def read(self, body: Body[T]) -> T:
        async with (
            self._connection() as raw,
            raw.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await body(PgConn(raw))

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        async with self._connection() as raw:
            return await PgConn(raw).fetch_all(query, values)

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        async with self._connection() as raw:
            return await PgConn(raw).fetch_one(query, values)

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        async with self._connection() as raw:
            return await PgConn(raw).fetch_val(query, values)

    async def chunks(
        self, query: sa.Select[Any], values: Values = None, size: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """A server-side cursor (in a read-only transaction), ``size`` rows at a time."""
        sql, args = _compiled(query, values)
        async with self._connection() as raw, raw.transaction(readonly=True):
            cursor = await raw.cursor(sql, *args)
            while rows := await cursor.fetch(size):
                yield list(rows)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        yield  # each migration runs in its own transaction; PostgreSQL locks the rest

    async def ping(self) -> None:
        await self.fetch_val("SELECT 1")
