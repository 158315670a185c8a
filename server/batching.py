"""Calls that share a round trip: what arrives while one batch is in flight goes
together in the next (as the SQLite store's transactions do, ``server.store.sqlite``).
Under load, a web process then pays one Redis round trip, or one PostgreSQL commit
(``server.store.postgres``), for many transfers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batched(Generic[T, R]):
    """``await batched(item)``: ``run`` is called with every item waiting at the time
    (at most ``limit`` of them; the rest go in the next call) and returns one result
    for each, in order. An exception of ``run`` is every waiting caller's."""

    def __init__(
        self, run: Callable[[list[T]], Awaitable[list[R]]], limit: int | None = None
    ) -> None:
        self._run = run
        self._limit = limit
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        result: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, result))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._run_waiting())
        return await result

    async def close(self) -> None:
        """Wait for what is in flight."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)

    async def _run_waiting(self) -> None:
        while self._waiting:
            cut = len(self._waiting) if self._limit is None else self._limit
            batch, self._waiting = self._waiting[:cut], self._waiting[cut:]
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as exc:
                failed = isinstance(exc, Exception)
                for _, result in batch:
                    if not result.done():
                        result.set_exception(exc) if failed else result.cancel()
                if not failed:
                    raise  # cancelled (shutting down): so are the callers
                continue  # each caller has the exception; the next batch runs afresh
            for (_, result), value in zip(batch, results, strict=True):
                if not result.done():
                    result.set_result(value)
