"""The scale-out store: PostgreSQL through ``databases`` and asyncpg (a pool).

Under READ COMMITTED, correctness comes from atomic conditional updates, row locks taken
in a fixed order (the ledger), ``FOR NO KEY UPDATE SKIP LOCKED`` for settlement batches and a
transaction-scoped advisory lock for "settling now".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql import visitors

from server.store.base import Body, Query, Row, Values

T = TypeVar("T")

log = logging.getLogger("settle.store")

CLOSE_WAIT_S = 5.0
POOL_MIN, POOL_MAX = 2, 20

_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
# (id(statement), value names) -> (statement, SQL, positional names, defaults).
_PREPARED: dict[tuple[int, tuple[str, ...]], tuple[Any, str, list[str], dict[str, Any]]] = {}
# Statements derived once from a module-level one: (id, variant) -> (original, derived).
_DERIVED: dict[tuple[int, str], tuple[Any, Any]] = {}
_TRY_LOCK = sa.select(sa.func.pg_try_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))
_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))


def _prepared(stmt: Any, names: tuple[str, ...]) -> tuple[str, list[str], dict[str, Any]]:
    key = (id(stmt), names)
    hit = _PREPARED.get(key)
    if hit is None or hit[0] is not stmt:
        built = stmt.compile(dialect=_ASYNCPG, column_keys=list(names))
        defaults = {name: bp.value for name, bp in built.binds.items() if not bp.required}
        order = list(built.positiontup or [])
        hit = _PREPARED[key] = (stmt, built.string, order, defaults)
    return hit[1], hit[2], hit[3]


def _derived(stmt: Any, variant: str, make: Any) -> Any:
    key = (id(stmt), variant)
    hit = _DERIVED.get(key)
    if hit is None or hit[0] is not stmt:
        hit = _DERIVED[key] = (stmt, make(stmt))
    return hit[1]


class PgConn:
    """``Conn`` over a ``databases`` connection (or the pool).

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

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        return list(await self.conn.fetch_all(self._bind(query, values)))

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        return await self.conn.fetch_one(self._bind(query, values))

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        return await self.conn.fetch_val(self._bind(query, values))

    async def execute(self, query: Query, values: Values = None) -> None:
        await self.conn.execute(self._bind(query, values))

    async def execute_many(self, query: Query, values: Sequence[Mapping[str, Any]]) -> None:
        if not values:
            return
        sql, order, defaults = _prepared(query, tuple(values[0]))
        rows = [tuple({**defaults, **v}[name] for name in order) for v in values]
        await self.conn.raw_connection.executemany(sql, rows)

    async def insert_new(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        first_key = next(iter(table.primary_key.columns))
        stmt = _derived(
            table,
            "insert_new",
            lambda t: postgresql.insert(t).on_conflict_do_nothing().returning(first_key),
        )
        return await self.fetch_one(stmt, values) is not None

    async def try_lock(self, key: int, wait: bool = False) -> bool:
        if wait:
            await self.fetch_val(_LOCK, {"key": key})
            return True
        return bool(await self.fetch_val(_TRY_LOCK, {"key": key}))

    def locking(self, query: sa.Select[Any], skip_locked: bool = False) -> sa.Select[Any]:
        # FOR NO KEY UPDATE: no key is ever changed, and it does not wait for (or deadlock
        # with) the key-share locks that inserts referencing these rows take.
        # Not cached by identity: SQLAlchemy's compiled cache keys on the structure.
        return query.with_for_update(skip_locked=skip_locked, key_share=True)


class PostgresStore:
    """``Store`` on PostgreSQL: a pool of up to 20 connections per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = Database(url, min_size=POOL_MIN, max_size=POOL_MAX)

    @property
    def is_sqlite(self) -> bool:
        return False

    async def connect(self) -> None:
        await self.db.connect()

    async def disconnect(self) -> None:
        try:
            await asyncio.wait_for(self.db.disconnect(), CLOSE_WAIT_S)
        except TimeoutError:
            # asyncpg's close waits for every connection to come back to the pool; one
            # the server dropped mid-operation can stay checked out for good (seen after
            # pg_terminate_backend). Do not hang the shutdown on it.
            log.warning("database pool did not close within %s s: terminated", CLOSE_WAIT_S)
            pool = self.db._backend._pool
            if pool is not None:
                pool.terminate()

    async def transaction(self, body: Body[T]) -> T:
        async with self.db.connection() as conn, conn.transaction():
            return await body(PgConn(conn))

    async def read(self, body: Body[T]) -> T:
        async with (
            self.db.connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await body(PgConn(conn))

    async def fetch_all(self, query: Query, values: Values = None) -> list[Row]:
        return await PgConn(self.db).fetch_all(query, values)

    async def fetch_one(self, query: Query, values: Values = None) -> Row | None:
        return await PgConn(self.db).fetch_one(query, values)

    async def fetch_val(self, query: Query, values: Values = None) -> Any:
        return await PgConn(self.db).fetch_val(query, values)

    async def chunks(
        self, query: sa.Select[Any], values: Values = None, size: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """A server-side cursor (in a read-only transaction), ``size`` rows at a time."""
        async with self.db.connection() as conn, conn.transaction(readonly=True):
            batch: list[Row] = []
            async for row in conn.iterate(PgConn._bind(query, values)):
                batch.append(row)
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        yield  # each migration runs in its own transaction; PostgreSQL locks the rest

    async def ping(self) -> None:
        await self.fetch_val("SELECT 1")
