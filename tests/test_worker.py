"""Settlement is exactly once and never waits on a lost wake: a partition settled twice,
a worker killed mid-transaction, a ring lost between commit and Redis, drainers woken by
rings without the worker polling, one drainer per partition. Real arq workers, real
Redis, a real database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import msgspec

from jobs.drainer import drain
from jobs.worker import shutdown, startup
from server.domain import wire
from server.domain.clock import now_us
from server.domain.settlement import partition_of_account
from server.live.doorbell import Doorbells
from server.store import settlement
from server.usecases import transfers
from tests.conftest import Customer, Stack, accept, account_events, next_event, settings_env


async def entries_of(stack: Stack, transfer_id: str) -> list[Any]:
    return await stack.store.fetch_all(
        f"SELECT account_id, amount FROM ledger_entries WHERE transfer_id = '{transfer_id}'"
    )


def partition(stack: Stack, who: Customer) -> int:
    return partition_of_account(who.account, stack.settings.settle_partitions)


async def test_settling_a_partition_twice_posts_once(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "4.00")).json()["id"]
    ctx: dict[str, Any] = {
        "settings": stack.settings,
        "store": stack.store,
        "redis": await _redis(stack),
    }
    await startup(ctx)
    try:
        first = await transfers.settle(ctx["usecases"], partition(stack, alice))
        again = await transfers.settle(ctx["usecases"], partition(stack, alice))
        assert ({e.transfer_id for e in first.events}, again.events) == ({tid}, [])
        await stack.settle_all()  # and the drainer the API's ring queued finds nothing left
    finally:
        await shutdown(ctx)
        await ctx["redis"].aclose()
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
    # One transaction settles all five due transfers of the partition.
    parts = stack.settings.settle_partitions
    done = await stack.store.transaction(
        lambda conn: settlement.settle(conn, partition(stack, alice), parts, 100, 2**62, now_us())
    )
    events = done.events
    settled = [e.transfer_id for e in events if e.account_id == alice.account]
    assert settled == ids
    seqs = [e.seq for e in events if e.account_id == alice.account]
    assert seqs == sorted(seqs)
    # Each event carries the balance right after its own transfer, not the batch's end.
    posted = [e.balance.posted for e in events if e.account_id == alice.account]
    assert posted == [900, 800, 700, 600, 500]
    received = [e.balance.posted for e in events if e.account_id == bob.account]
    assert received == [100, 200, 300, 400, 500]
    for who in (alice, bob):
        last = [e for e in events if e.account_id == who.account][-1]
        now = await stack.account(who)
        as_sent = msgspec.structs.asdict(wire.balance(last.balance))
        assert (last.seq, as_sent) == (now["seq"], now["balance"])
    await stack.settle_all()


async def test_a_batch_locks_its_accounts_a_chunk_at_a_time_and_settles_them_all(
    stack: Stack, monkeypatch: Any
) -> None:
    """More accounts than one locking statement takes (``LOCK_CHUNK``, made 4 here):
    eleven accounts are locked in chunks of 4, 4 and 3 (asked as 4, the last id
    repeated), and the batch settles every transfer with each balance right."""
    monkeypatch.setattr(settlement, "LOCK_CHUNK", 4)
    senders = [await stack.customer("5.00") for _ in range(5)]
    recipients = [await stack.customer("0") for _ in range(6)]
    pairs = [*zip(senders, recipients, strict=False), (senders[0], recipients[5])]
    for sender, recipient in pairs:
        await stack.transfer(sender, recipient.account, "1.25")
    done = await stack.store.transaction(
        lambda conn: settlement.settle(conn, 0, 1, 100, 2**62, now_us())
    )
    assert len(done.events) == 12, "a completion for each party of each of six transfers"
    expected = [(senders[0], "2.50")] + [(s, "3.75") for s in senders[1:]]
    expected += [(r, "1.25") for r in recipients]
    for who, posted in expected:
        assert (await stack.account(who))["balance"]["posted"] == posted


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


async def test_the_sweeper_settles_a_transfer_whose_ring_was_lost(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    # Accepted and committed, but the process "crashed" before ringing its partition.
    accepted = await accept(stack.store, alice.user_id, alice.account, bob.account, 250)
    tid = accepted.transfer.id
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


async def test_a_drainer_is_woken_by_each_ring_not_by_polling(stack: Stack) -> None:
    """Two workers whose look at their queue comes every ten minutes, with no sweeper:
    the first ring's drainer is picked up at their first look, and every later transfer
    is settled because its ring wakes that drainer, not because anyone polls."""
    import dataclasses

    from jobs.worker import create_worker, stop_worker
    from server.redisbox import redis_settings

    assert stack.settings.redis_url is not None
    slow = dataclasses.replace(stack.settings, worker_poll_ms=600_000)
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    first = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
    workers = []
    mains = []
    for _ in range(2):
        worker = create_worker(
            slow, redis_settings(slow, stack.settings.redis_url), handle_signals=False
        )
        worker.cron_jobs = []  # no sweeper, which would ring on its own
        workers.append(worker)
        mains.append(asyncio.create_task(worker.main()))
    try:
        async with account_events(stack.settings, bob.account) as events:
            done = await next_event(events, "transfer.completed", first, within=60)
            assert done["balance"]["posted"] == "1.00"
            for n in range(2, 5):
                tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
                # Far within the ten-minute look: a bound, not a speed assertion.
                done = await next_event(events, "transfer.completed", tid, within=60)
                assert done["balance"]["posted"] == f"{n}.00"
    finally:
        for worker, main in zip(workers, mains, strict=True):
            await stop_worker(worker, main, 5)


async def test_a_stopping_worker_lets_its_idle_drainer_go_at_once(stack: Stack) -> None:
    """A drainer waiting for a ring has nothing to finish: stopping its worker ends it
    and lets its partition go at once, not at the end of the worker's grace (here ten
    minutes; the bound below is a tenth of it, not a speed assertion)."""
    from jobs.worker import create_worker, stop_worker
    from server.redisbox import redis_settings

    assert stack.settings.redis_url is not None
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    worker = create_worker(
        stack.settings,
        redis_settings(stack.settings, stack.settings.redis_url),
        handle_signals=False,
    )
    worker.cron_jobs = []
    main = asyncio.create_task(worker.main())
    async with account_events(stack.settings, bob.account) as events:
        tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
        await next_event(events, "transfer.completed", tid, within=60)
    await asyncio.wait_for(stop_worker(worker, main, grace_s=600), 60)
    redis = await _redis(stack)
    try:
        bells = Doorbells(redis, stack.settings)
        assert await redis.get(bells.lease(partition(stack, alice))) is None, "let go"
    finally:
        await redis.aclose()


async def test_one_drainer_per_partition_and_no_wake_is_lost(stack: Stack) -> None:
    """The doorbell's scripts against a real Redis: a ring starts a drainer only where
    none holds the lease; a drainer lets go only when no ring came meanwhile; a lease
    not renewed expires, and the next ring starts another drainer."""
    redis = await _redis(stack)
    bells = Doorbells(redis, stack.settings)
    try:

        async def ring(p: int) -> str | None:
            sha, keys, args = bells.ring_args(p)
            token = await redis.evalsha(sha, len(keys), *keys, *args)
            return None if token is None else token.decode()

        await redis.script_load(bells.ring_script)
        first = await ring(0)
        assert first is not None and await ring(0) is None, "one drainer starting"
        assert await bells.claim(0, first) and not await bells.claim(0, "someone-else")
        assert not await bells.wait(0, 0.01), "the rings before the claim: its first batch's"
        assert await ring(0) is None and await ring(0) is None
        assert not await bells.let_go(0, first), "rung meanwhile: it drains on"
        assert await bells.wait(0, 1.0), "both rings wake the drainer"
        assert not await bells.wait(0, 0.01), "as one: a drainer wakes once for news"
        assert await ring(0) is None
        assert not await bells.let_go(0, first), "rung meanwhile: it drains on"
        assert await bells.wait(0, 1.0)
        assert await bells.let_go(0, first)
        second = await ring(0)
        assert second is not None, "let go: the next ring starts a drainer"
        assert await bells.claim(0, second) and await bells.renew(0, second)
        await redis.delete(bells.lease(0))  # lapsed: a transaction slower than the lease
        assert await bells.renew(0, second), "a lapsed lease nobody took is taken again"
        await redis.delete(bells.lease(0))  # lapsed, and rung meanwhile: another starts
        third = await ring(0)
        assert third is not None and third not in (first, second)
        assert not await bells.renew(0, second), "a lease another drainer has is lost"
        successor = "next"
        assert await bells.claim(0, third) and await bells.hand_over(0, third, successor)
        assert not await bells.claim(0, "late") and await bells.claim(0, successor)
    finally:
        await redis.delete(bells.bell(0), bells.lease(0))
        await redis.aclose()


async def test_a_drainer_without_the_lease_settles_nothing(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
    ctx: dict[str, Any] = {"settings": stack.settings, "store": stack.store}
    ctx["redis"] = await _redis(stack)
    await startup(ctx)
    try:
        assert await drain(ctx, partition(stack, alice), "not-the-lease") == 0
        assert await stack.status_of(alice, tid) == "pending"
    finally:
        await shutdown(ctx)
        await ctx["redis"].aclose()
    await stack.settle_all()
    assert await stack.status_of(alice, tid) == "completed"


async def test_a_busy_worker_hands_a_drain_job_back_and_a_bounced_one_is_drained(
    stack: Stack,
) -> None:
    """A worker that drains more partitions than another live worker hands a new drain
    job back, counting the bounce; a job bounced ``MAX_BOUNCES`` times is drained by
    whichever worker has it, so that no partition waits on which worker looks at the
    queue first."""
    import time

    from jobs.drainer import MAX_BOUNCES

    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
    p = partition(stack, alice)
    ctx: dict[str, Any] = {"settings": stack.settings, "store": stack.store}
    redis = ctx["redis"] = await _redis(stack)
    await startup(ctx)
    bells, crew = ctx["dispatch"].bells, ctx["crew"]
    lease = (await redis.get(bells.lease(p))).decode()
    assert lease.startswith("starting:"), "the ring queued a drainer"
    token = lease.removeprefix("starting:")
    try:
        await redis.hset(crew.key, "an-idle-worker", f"{int(time.time() * 1000)}:0")
        crew.draining.add(p + 1)  # this worker drains one partition already
        assert await drain(ctx, p, token) == 0
        bounced = [j.args for j in await redis.queued_jobs(queue_name=stack.settings.queue_name)]
        assert (p, token, 1) in bounced, "handed back, its bounce counted"
        assert await stack.status_of(alice, tid) == "pending"
        async with account_events(stack.settings, bob.account) as events:
            draining = asyncio.create_task(drain(ctx, p, token, MAX_BOUNCES))
            done = await next_event(events, "transfer.completed", tid)
            assert done["balance"]["posted"] == "1.00"
            draining.cancel()
            await asyncio.gather(draining, return_exceptions=True)
    finally:
        crew.draining.discard(p + 1)
        await redis.hdel(crew.key, "an-idle-worker")
        await shutdown(ctx)
        await redis.aclose()
    assert await stack.status_of(alice, tid) == "completed"
    await stack.settle_all()
