"""Scale: 3 web processes and 3 workers on one PostgreSQL and one Redis, 2,000 transfers
from 20 concurrent clients, WebSocket subscribers on every web process. Nothing is lost,
duplicated, created or destroyed, and every subscriber ends on the database's balance.

PostgreSQL only ($TEST_DATABASE_URL): SQLite is one file on one machine, so its
multi-process case is the single-writer lock that test_worker.py already covers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
from typing import Any, Literal

import httpx
import orjson
import pytest
import sqlalchemy as sa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from server.domain.money import format_amount
from server.settings import Settings
from server.store import Store
from server.store import accounts as admin
from server.store.audit import audit
from server.store.schema import accounts, transfers
from server.web import auth, passwords
from tests.conftest import balance_json, free_port, fund
from tests.fleet import Fleet, Holder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WEB_PROCESSES = 3
WORKERS = 3
ACCOUNTS = 50
DEPOSIT = 1000_00
CLIENTS = 20
PLAIN = 1550
OVERDRAWN = 150
KEYED = 150  # each sent twice with one Idempotency-Key: 1550 + 150 + 2 * 150 = 2,000
WATCHED = 10
DEADLINE_S = 90.0
MEMO = "scale"


@pytest.fixture(autouse=True)
def _needs_postgres(postgres_url: str | None) -> None:
    if postgres_url is None:
        pytest.skip("needs PostgreSQL: set TEST_DATABASE_URL (SQLite has one writer per file)")


@dataclasses.dataclass(frozen=True)
class Send:
    sender: int
    recipient: int
    amount: int
    kind: Literal["plain", "overdrawn", "keyed"]
    key: str


def plan(rng: random.Random) -> list[Send]:
    """2,000 requests in a random order, each with an Idempotency-Key; a keyed pair shares
    one. Half of the pairs are adjacent, so the two copies go out at once from two
    clients (usually to two web processes) and race."""

    def pair() -> tuple[int, int]:
        a, b = rng.sample(range(ACCOUNTS), 2)
        return a, b

    units: list[list[Send]] = []
    for i in range(PLAIN):
        units.append([Send(*pair(), rng.randint(1, 2_00), "plain", key=f"scale-plain-{i}")])
    for i in range(OVERDRAWN):
        # More than all the money users hold together: refused whatever the timing.
        units.append([Send(*pair(), ACCOUNTS * DEPOSIT + 1, "overdrawn", key=f"scale-over-{i}")])
    for i in range(KEYED):
        send = Send(*pair(), rng.randint(1, 2_00), "keyed", key=f"scale-key-{i}")
        units += [[send, send]] if i % 2 == 0 else [[send], [send]]
    rng.shuffle(units)
    return [send for unit in units for send in unit]


@dataclasses.dataclass
class Watcher:
    """One WebSocket subscriber: every seq it received, and the last balance."""

    account: str
    seqs: list[int] = dataclasses.field(default_factory=list)
    balance: dict[str, str] | None = None
    started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def run(self, port: int, holder: Holder) -> None:
        # Like a real client, reconnect with since=<last seq> if the connection drops
        # (a loaded 2-core box can stall a socket); the seq checks still prove that
        # nothing was lost or repeated across the resume.
        for _ in range(5):
            since = self.seqs[-1] if self.seqs else 0
            url = f"ws://127.0.0.1:{port}/ws?account={self.account}&since={since}"
            with contextlib.suppress(ConnectionClosedError, OSError):
                async with connect(url, additional_headers=holder.headers) as ws:
                    async for raw in ws:
                        self.receive(orjson.loads(raw))
                return

    def receive(self, message: dict[str, Any]) -> None:
        if message["type"] == "ping":
            return
        assert message["type"].startswith("transfer."), message
        self.seqs.append(message["seq"])
        self.balance = message["balance"]
        self.started.set()


async def post(client: httpx.AsyncClient, body: Any, headers: dict[str, str]) -> httpx.Response:
    """POST a transfer; on a lost connection, send it again with the same Idempotency-Key
    (what the product promises is always safe, and what a loaded 2-core box needs: the
    server may close an idle keep-alive connection just as the next request goes out)."""
    for _ in range(4):
        with contextlib.suppress(httpx.TransportError):
            return await client.post("/api/transfers", json=body, headers=headers)
    return await client.post("/api/transfers", json=body, headers=headers)


async def wait_until(what: str, done: Any, fleet: Fleet, deadline: float) -> None:
    while not await done():
        fleet.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def holder(store: Store, name: str) -> Holder:
    user_id, account = await admin.create_user(store, name, passwords.hash_password("pw"))
    await fund(store, account, DEPOSIT)
    return Holder(account, await auth.issue_token(store, user_id, 3600))


async def send_all(
    sends: list[Send], holders: list[Holder], ports: list[int]
) -> list[tuple[Send, httpx.Response]]:
    """Every send, by CLIENTS clients spread over the web processes."""
    todo: asyncio.Queue[Send] = asyncio.Queue()
    for send in sends:
        todo.put_nowait(send)
    results: list[tuple[Send, httpx.Response]] = []

    async def client(port: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            while not todo.empty():
                send = todo.get_nowait()
                src, dst = holders[send.sender], holders[send.recipient]
                headers = {**src.headers, "Idempotency-Key": send.key}
                body = {
                    "from_account": src.account,
                    "to_account": dst.account,
                    "amount": format_amount(send.amount),
                    "memo": MEMO,
                }
                results.append((send, await post(c, body, headers)))

    await asyncio.gather(*(client(ports[i % WEB_PROCESSES]) for i in range(CLIENTS)))
    return results


def accepted_once(results: list[tuple[Send, httpx.Response]]) -> set[str]:
    """The ids accepted: overdrafts refused, everything else accepted, a key's two sends
    one transfer (one of them replayed)."""
    accepted: set[str] = set()
    by_key: dict[str, list[httpx.Response]] = collections.defaultdict(list)
    for send, r in results:
        if send.kind == "overdrawn":
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "insufficient_funds"
            continue
        # Every sender holds 1000.00 and sends at most a few hundred in 2.00 steps.
        assert r.status_code == 202, r.text
        accepted.add(r.json()["id"])
        if send.kind == "keyed":
            by_key[send.key].append(r)
    assert len(by_key) == KEYED
    for key, pair in by_key.items():
        assert len({r.json()["id"] for r in pair}) == 1, key
        replayed = [r.headers.get("Idempotent-Replayed") for r in pair]
        # Both replayed only if the original's response was lost and retried.
        assert replayed.count("true") >= 1 and replayed.count(None) <= 1, key
    assert len(accepted) == PLAIN + KEYED
    return accepted


async def settled_exactly(store: Store, accepted: set[str]) -> dict[str, Any]:
    """Exactly the accepted transfers exist, all completed, and the balances add up;
    the accounts' rows, by id."""
    rows = await store.fetch_all(
        sa.select(transfers.c.id, transfers.c.status).where(transfers.c.memo == MEMO)
    )
    assert {r["id"] for r in rows} == accepted, "exactly the accepted transfers exist"
    assert len(rows) == len(accepted), "no duplicate from a repeated key"
    # No account is ever frozen here, so nothing may fail.
    assert collections.Counter(r["status"] for r in rows) == {"completed": len(accepted)}
    balances = {r["id"]: r for r in await store.fetch_all(sa.select(accounts))}
    users = [r for r in balances.values() if r["kind"] == "user"]
    assert sum(r["posted"] for r in balances.values()) == 0
    assert sum(r["posted"] for r in users) == ACCOUNTS * DEPOSIT
    assert all(r["pending_debits"] == r["pending_credits"] == 0 for r in balances.values())
    return balances


async def test_many_processes_settle_every_transfer_once_and_streams_match_the_ledger(
    settings: Settings, store: Store, fleet: Fleet
) -> None:
    ports = [free_port() for _ in range(WEB_PROCESSES)]
    for i, port in enumerate(ports):
        fleet.start(f"web{i}", "web", "--workers", "1", PORT=str(port), HOST="127.0.0.1")
    for i in range(WORKERS):
        fleet.start(f"worker{i}", "worker")

    holders = [await holder(store, f"scale{i}") for i in range(ACCOUNTS)]
    for port in ports:
        await fleet.ready(port)

    watchers = [Watcher(holders[i].account) for i in range(WATCHED)]
    watching = [
        asyncio.create_task(w.run(ports[i % WEB_PROCESSES], holders[i]))
        for i, w in enumerate(watchers)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.started.wait() for w in watchers)), 30)

        sends = plan(random.Random(5))
        results = await send_all(sends, holders, ports)
        assert len(results) == len(sends) == 2000
        accepted = accepted_once(results)

        deadline = time.monotonic() + DEADLINE_S

        async def nothing_pending() -> bool:
            pending = await store.fetch_val(
                sa.select(sa.func.count()).where(transfers.c.status == "pending")
            )
            return int(pending) == 0

        await wait_until("no transfer is pending", nothing_pending, fleet, deadline)

        balances = await settled_exactly(store, accepted)

        async def streams_caught_up() -> bool:
            for task in watching:
                if task.done():
                    task.result()  # a subscriber that died: its error, not a timeout
                    raise AssertionError("a subscriber's socket closed")
            return all(w.seqs and w.seqs[-1] == balances[w.account]["seq"] for w in watchers)

        await wait_until(
            "every subscriber has its account's last event", streams_caught_up, fleet, deadline
        )
        for w in watchers:
            row = balances[w.account]
            assert w.seqs == list(range(1, row["seq"] + 1)), "each event once, in seq order"
            assert w.balance == balance_json(row)

        report = await audit(store)
        assert report.ok, report.render()
    finally:
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
