"""Settlement is exactly once: a job run twice, a worker killed mid-transaction, a job
lost between commit and enqueue. Real arq workers, real Redis, real SQLite."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from jobs.worker import settle_transfer
from server import settlement
from server.dispatch import Dispatcher
from server.schema import now_us
from tests.conftest import Stack, accept, account_events, next_event, settings_env


async def entries_of(stack: Stack, transfer_id: str) -> list[Any]:
    return await stack.store.fetch_all(
        f"SELECT account_id, amount FROM ledger_entries WHERE transfer_id = '{transfer_id}'"
    )


async def test_running_the_settle_job_twice_posts_once(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "4.00")).json()["id"]
    ctx: dict[str, Any] = {
        "settings": stack.settings,
        "store": stack.store,
        "dispatch": Dispatcher(await _redis(stack), stack.settings),
    }
    try:
        assert await settle_transfer(ctx, tid) == 1
        assert await settle_transfer(ctx, tid) == 0
        await stack.settle_all()  # and the job the API enqueued finds nothing left
    finally:
        await ctx["dispatch"].redis.aclose()
    assert sorted(e["amount"] for e in await entries_of(stack, tid)) == [-400, 400]
    assert (await stack.account(bob))["balance"]["posted"] == "4.00"


async def _redis(stack: Stack) -> Any:
    from arq import create_pool

    from server.redisbox import redis_settings

    assert stack.settings.redis_url is not None
    return await create_pool(redis_settings(stack.settings, stack.settings.redis_url))


async def test_group_commit_settles_a_queue_in_acceptance_order(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    ids = [(await stack.transfer(alice, bob.account, "1.00")).json()["id"] for _ in range(5)]
    # One job settles all five due transfers in one transaction.
    events = await stack.store.transaction(
        lambda conn: settlement.settle(conn, ids[-1], 100, 2**62, now_us())
    )
    settled = [e.transfer_id for e in events if e.account_id == alice.account]
    assert settled == ids
    seqs = [e.seq for e in events if e.account_id == alice.account]
    assert seqs == sorted(seqs)
    # Each event carries the balance right after its own transfer, not the batch's end.
    posted = [e.balance["posted"] for e in events if e.account_id == alice.account]
    assert posted == ["9.00", "8.00", "7.00", "6.00", "5.00"]
    received = [e.balance["posted"] for e in events if e.account_id == bob.account]
    assert received == ["1.00", "2.00", "3.00", "4.00", "5.00"]
    for who in (alice, bob):
        last = [e for e in events if e.account_id == who.account][-1]
        now = await stack.account(who)
        assert (last.seq, last.balance) == (now["seq"], now["balance"])
    await stack.settle_all()


async def test_worker_killed_mid_settlement_posts_nothing_then_settles_once(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "3.00")).json()["id"]
    worker = [sys.executable, "-m", "server.cli", "worker"]
    crashing = subprocess.Popen(
        worker,
        env=settings_env(stack.settings, SETTLE_CRASH_POINT="settle-before-commit"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert await asyncio.to_thread(crashing.wait, 60) == -9, "the worker SIGKILLed itself"
    assert await stack.status_of(alice, tid) == "pending"
    assert await entries_of(stack, tid) == [], "the killed transaction was rolled back"

    async with account_events(stack.settings, alice.account) as events:
        healthy = subprocess.Popen(
            worker,
            env=settings_env(stack.settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            done = await next_event(events, "transfer.completed", tid, within=60)
        finally:
            healthy.terminate()
            await asyncio.to_thread(healthy.wait, 30)
    assert done["balance"]["posted"] == "7.00"
    assert sorted(e["amount"] for e in await entries_of(stack, tid)) == [-300, 300]


async def test_sweeper_settles_a_transfer_whose_job_was_never_enqueued(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    # Accepted and committed, but the process "crashed" before enqueueing its job.
    accepted = await accept(stack.store, alice.user_id, alice.account, bob.account, 250)
    tid = accepted.transfer_id
    async with account_events(stack.settings, bob.account) as events:
        worker = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "worker"],
            env=settings_env(stack.settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            done = await next_event(events, "transfer.completed", tid, within=30)
        finally:
            worker.terminate()
            await asyncio.to_thread(worker.wait, 30)
    assert done["balance"]["posted"] == "2.50"
    assert await stack.status_of(alice, tid) == "completed"


async def test_idle_workers_are_woken_by_the_enqueue_not_by_polling(stack: Stack) -> None:
    """Two workers whose fallback poll is ten minutes and with no sweeper: only the wake
    published with each enqueue (``Dispatcher``) can start the jobs in time."""
    import dataclasses

    from jobs.worker import WakingWorker, create_worker, stop_worker
    from server.redisbox import redis_settings

    assert stack.settings.redis_url is not None
    slow = dataclasses.replace(stack.settings, worker_poll_ms=600_000)
    workers: list[WakingWorker] = []
    mains = []
    for _ in range(2):
        worker = create_worker(
            slow, redis_settings(slow, stack.settings.redis_url), handle_signals=False
        )
        assert isinstance(worker, WakingWorker)
        worker.cron_jobs = []  # no sweeper, which would re-enqueue and wake
        workers.append(worker)
        mains.append(asyncio.create_task(worker.main()))
    try:
        for worker in workers:
            await asyncio.wait_for(worker.listening.wait(), 30)
        alice, bob = await stack.customer("10.00"), await stack.customer("0")
        async with account_events(stack.settings, bob.account) as events:
            for n in range(1, 4):
                tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
                # Far within the ten-minute fallback: a bound, not a speed assertion.
                done = await next_event(events, "transfer.completed", tid, within=60)
                assert done["balance"]["posted"] == f"{n}.00"
    finally:
        for worker, main in zip(workers, mains, strict=True):
            await stop_worker(worker, main, 5)
    assert sum(w.jobs_complete for w in workers) >= 1


async def test_settlements_taking_turns_wait_for_the_lock_instead_of_finding_it_busy(
    stack: Stack,
) -> None:
    """PostgreSQL: two workers' settlements (a turn each) queue on the database's
    settlement lock; none raises Busy, and every transfer settles once, in order."""
    from server import transfers

    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    ids = [(await stack.transfer(alice, bob.account, "1.00")).json()["id"] for _ in range(6)]
    dispatch = Dispatcher(await _redis(stack), stack.settings)
    turns = [asyncio.Lock(), asyncio.Lock()]
    try:
        runs = await asyncio.gather(
            *(
                transfers.settle(stack.store, dispatch, stack.settings, tid, 2, turn=turns[i % 2])
                for i, tid in enumerate(ids)
            )
        )
    finally:
        await dispatch.redis.aclose()
    settled = [e.transfer_id for run in runs for e in run if e.account_id == alice.account]
    assert sorted(settled) == sorted(ids) and len(settled) == 6
    assert (await stack.account(bob))["balance"]["posted"] == "6.00"
    await stack.settle_all()


async def test_two_workers_claiming_the_same_jobs_start_each_once(stack: Stack) -> None:
    """The claim (one script instead of arq's WATCH/MULTI) lets exactly one worker start
    a job; the other finds it running, and no job that is not yet due is started."""
    from arq.constants import in_progress_key_prefix
    from arq.utils import timestamp_ms

    from jobs.worker import WakingWorker, create_worker
    from server.dispatch import job_id
    from server.redisbox import redis_settings

    assert stack.settings.redis_url is not None
    redis = await _redis(stack)
    workers = [
        create_worker(
            stack.settings, redis_settings(stack.settings, stack.settings.redis_url), burst=True
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert isinstance(worker, WakingWorker)
            worker._pool = redis
        queue = stack.settings.queue_name
        now = timestamp_ms()
        due = [job_id(stack.settings, f"tr_claim{i}") for i in range(20)]
        later = job_id(stack.settings, "tr_later")
        await redis.zadd(queue, {**{j: now for j in due}, later: now + 60_000})
        started: list[list[str]] = [[], []]
        for worker, mine in zip(workers, started, strict=True):
            # Record, do not run: what is claimed is what would run.
            async def record(job: str, score: int, mine: list[str] = mine) -> None:
                mine.append(job)

            worker.run_job = record  # type: ignore[method-assign, assignment]
        ids = [j.encode() for j in [*due, later]]
        await asyncio.gather(*(w.start_jobs(ids) for w in workers))
        await asyncio.gather(*(asyncio.gather(*w.tasks.values()) for w in workers))
        claimed = started[0] + started[1]
        assert sorted(claimed) == sorted(due), "each due job once, the later one not at all"
        assert await redis.exists(*(in_progress_key_prefix + j for j in due)) == len(due)
    finally:
        await redis.zrem(stack.settings.queue_name, *due, later)
        await redis.delete(*(in_progress_key_prefix + j for j in due))
        await redis.aclose()
