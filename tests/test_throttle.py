"""The login throttle (server/web/throttle.py) against a real server and Redis: concurrent
guesses get at most the free attempts' worth of password checks, across web processes;
the delay grows; strangers do not lock the owner's own device out."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from redis.asyncio import Redis

from server.settings import Settings
from server.store import Store
from server.web import throttle
from server.web.app import create_app
from tests.conftest import Customer, Stack, serve
from tests.test_sessions import attempt, browser, login


async def guesses(client: httpx.AsyncClient, who: Customer, n: int) -> Counter[int]:
    """n wrong passwords for ``who`` at once; statuses by count."""
    wrong = {"username": who.username, "password": "guess"}
    answers = await asyncio.gather(*(client.post("/api/tokens", json=wrong) for _ in range(n)))
    return Counter(r.status_code for r in answers)


async def test_simultaneous_guesses_get_at_most_the_free_checks(stack: Stack) -> None:
    alice = await stack.customer("0")
    statuses = await guesses(stack.client, alice, 20)
    assert statuses[401] == throttle.FREE_PER_ACCOUNT
    assert statuses[401] + statuses[429] == 20


async def test_the_right_password_among_many_wrong_ones_gets_no_extra_chance(
    stack: Stack,
) -> None:
    alice = await stack.customer("0")
    wrong = {"username": alice.username, "password": "guess"}
    right = {"username": alice.username, "password": "pw-" + alice.username}
    bodies = [wrong] * 40 + [right]
    answers = await asyncio.gather(*(stack.client.post("/api/tokens", json=b) for b in bodies))
    statuses = Counter(r.status_code for r in answers)
    assert statuses[401] + statuses[201] == throttle.FREE_PER_ACCOUNT, statuses
    assert statuses[429] == len(bodies) - throttle.FREE_PER_ACCOUNT, statuses
    # And the lock holds: the right password now waits too.
    late = await stack.client.post("/api/tokens", json=right)
    assert late.status_code == 429 and int(late.headers["retry-after"]) >= 1


async def test_two_web_processes_share_one_throttle(
    settings: Settings, store: Store, stack: Stack
) -> None:
    alice = await stack.customer("0")
    other = create_app(settings, store=store)
    async with serve(other, settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as b:
        one, two = await asyncio.gather(guesses(stack.client, alice, 10), guesses(b, alice, 10))
    assert one[401] + two[401] == throttle.FREE_PER_ACCOUNT
    assert one[401] + one[429] + two[401] + two[429] == 20, (one, two)


async def test_each_attempt_past_the_free_ones_waits_twice_as_long(stack: Stack) -> None:
    alice = await stack.customer("0")
    await guesses(stack.client, alice, throttle.FREE_PER_ACCOUNT)
    assert stack.settings.redis_url is not None
    redis = Redis.from_url(stack.settings.redis_url)
    keys = [k async for k in redis.scan_iter(f"{stack.settings.redis_prefix}:login:acct:*")]
    waits = []
    try:
        for _ in range(3):
            await redis.hset(keys[0], "next", 0)  # as if the wait had passed
            assert (await guesses(stack.client, alice, 1))[401] == 1
            refused = await stack.client.post(
                "/api/tokens", json={"username": alice.username, "password": "x"}
            )
            assert refused.status_code == 429
            waits.append(int(refused.headers["retry-after"]))
    finally:
        await redis.aclose()
    assert waits == [2, 4, 8]


async def test_strangers_do_not_lock_the_owner_out_of_a_device_it_used_before(
    stack: Stack,
) -> None:
    alice = await stack.customer("0")
    async with browser(stack) as own:
        await login(own, alice)  # this browser now carries alice's device cookie
        assert own.cookies.get(throttle.DEVICE_COOKIE)
        own.cookies.delete("settle_session")
        async with browser(stack) as stranger:
            for _ in range(throttle.FREE_PER_ACCOUNT + 3):
                await attempt(stranger, alice.username, "guess")
            locked = await attempt(stranger, alice.username, "pw-" + alice.username)
            assert locked.status_code == 429 and "Too many failed attempts" in locked.text
        back = await attempt(own, alice.username, "pw-" + alice.username)
        assert back.status_code == 303, "the owner's own browser still gets in"


async def test_a_device_cookie_counts_only_for_its_own_account(stack: Stack) -> None:
    alice, mallory = await stack.customer("0"), await stack.customer("0")
    async with browser(stack) as client:
        await login(client, mallory)  # a device cookie, but for mallory
        for _ in range(throttle.FREE_PER_ACCOUNT):
            await attempt(client, alice.username, "guess")
        r = await attempt(client, alice.username, "pw-" + alice.username)
        assert r.status_code == 429, "another account's cookie buys no attempts on alice"


async def test_one_address_gets_its_free_checks_across_every_username(stack: Stack) -> None:
    """Spreading guesses over many usernames does not multiply them: one address gets
    FREE_PER_ADDRESS password checks in all, whatever the usernames."""
    people = [await stack.customer("0") for _ in range(7)]
    total: Counter[int] = Counter()
    for who in people:  # 5 each: within every account's own free attempts
        total += await guesses(stack.client, who, throttle.FREE_PER_ACCOUNT)
    assert total[401] == throttle.FREE_PER_ADDRESS, total
    assert total[429] == 7 * throttle.FREE_PER_ACCOUNT - throttle.FREE_PER_ADDRESS, total
