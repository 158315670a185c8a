"""Calls that share a round trip (server/batching.py): what arrives while one batch is in
flight goes in the next, each caller gets its own result, and a failure reaches all."""

from __future__ import annotations

import asyncio

import pytest

from server.batching import Batched


@pytest.mark.parametrize(
    ("limit", "runs_expected"),
    [(None, [[1], [2, 3, 4, 5, 6]]), (2, [[1], [2, 3], [4, 5], [6]])],
    ids=["all that wait", "at most the limit"],
)
async def test_callers_waiting_together_share_one_run_and_get_their_own_results(
    limit: int | None, runs_expected: list[list[int]]
) -> None:
    """What waits while a run is in flight goes in the next run (at most ``limit``
    items each; the rest in the runs after it), and each caller gets its own result."""
    runs: list[list[int]] = []
    gate = asyncio.Event()

    async def double(items: list[int]) -> list[int]:
        runs.append(items)
        await gate.wait()
        return [2 * i for i in items]

    batched = Batched(double, limit=limit)
    first = asyncio.create_task(batched(1))
    await asyncio.sleep(0)  # the first run is in flight
    rest = [asyncio.create_task(batched(i)) for i in (2, 3, 4, 5, 6)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *rest) == [2, 4, 6, 8, 10, 12]
    assert runs == runs_expected


async def test_a_failed_run_fails_every_caller_in_it() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise ConnectionError("down")

    batched = Batched(broken)
    results = await asyncio.gather(*(batched(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        await batched(9)  # and the next call runs again
