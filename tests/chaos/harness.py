"""The chaos driver: a settle deployment in subprocesses (its own redis-server, one web
process, one worker), a steady stream of transfers from careful clients, WebSocket
subscribers, and the checks that must hold once a fault has healed.

A careful client, here as in the README: every transfer carries an Idempotency-Key, and
on a network error, a timeout, a 429 or a 5xx it sends the very same request again with
the same key until it gets an answer it can act on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from server.domain.money import format_amount
from server.redisbox import start_redis_server, stop_redis_server
from server.settings import Settings
from server.store import Store
from server.store import accounts as admin
from server.store.schema import account_events, accounts, ledger_entries, transfers
from server.web import auth, passwords
from tests.conftest import balance_json, fund, settings_env
from tests.fleet import Fleet, Holder

TERMINAL = {"completed", "failed", "cancelled"}
RETRY_STATUSES = {429, 500, 502, 503, 504}
MEMO = "chaos:"


class Redis:
    """A redis-server this run owns, so that it may kill and restart it."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.sock = var / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.appendonly = True

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self, appendonly: bool | None = None) -> None:
        if appendonly is not None:
            self.appendonly = appendonly
        self.proc = start_redis_server(self.var, self.sock, self.appendonly)

    def kill(self, keep_data: bool) -> None:
        """SIGKILL: what was not yet in the append-only file is gone; without
        ``keep_data``, the file too (as if it had never been kept)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if not keep_data:
            for stale in self.var.glob("appendonly*"):
                stale.unlink()

    def stop(self) -> None:
        if self.proc is not None:
            stop_redis_server(self.proc)


class Deployment(Fleet):
    """One ``settle web`` (named "web") on ``port`` and one ``settle worker``."""

    def __init__(self, settings: Settings, logs: Path, port: int) -> None:
        super().__init__(settings, logs)
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self, name: str, **env: str) -> None:
        """Start "web" or "worker", with ``env`` (a SETTLE_CRASH_POINT, say)."""
        args = ["web", "--workers", "1"] if name == "web" else ["worker"]
        env = {"PORT": str(self.port), "HOST": "127.0.0.1", "SETTLE_CRASH_POINT": "", **env}
        self.start(name, *args, **env)

    def audit(self) -> subprocess.CompletedProcess[str]:
        """``settle audit``, exactly as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "server.cli", "audit"],
            env=settings_env(self.settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


async def holders(store: Store, n: int, deposit: int) -> list[Holder]:
    made = []
    for _ in range(n):
        name = f"chaos{os.urandom(4).hex()}"
        user_id, account = await admin.create_user(store, name, passwords.hash_password("pw"))
        await fund(store, account, deposit)
        made.append(Holder(account, await auth.issue_token(store, user_id, 3600)))
    return made


@dataclasses.dataclass
class Load:
    """Careful clients sending transfers (and cancelling some) until told to stop."""

    base_url: str
    holders: list[Holder]
    rng: random.Random
    clients: int = 6
    pause_s: float = 0.01
    cancel_every: int = 5
    # Filled in as the run goes.
    acked: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> transfer id
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    transport_errors: int = 0
    next_key: int = 0
    run_id: str = dataclasses.field(default_factory=lambda: os.urandom(4).hex())
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    running: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self.running = asyncio.gather(*(self._client(self.stopping) for _ in range(self.clients)))

    async def finish(self) -> None:
        """Stop sending new transfers; wait until every one sent has its answer."""
        assert self.running is not None
        self.stopping.set()
        await asyncio.wait_for(asyncio.shield(self.running), 90)

    async def abandon(self) -> None:
        if self.running is not None:
            self.running.cancel()
            await asyncio.gather(self.running, return_exceptions=True)

    def new_transfer(self) -> tuple[int, str, Holder, dict[str, str], dict[str, str]]:
        """The next transfer to send: (number, Idempotency-Key, sender, body, headers)."""
        self.next_key += 1
        src, dst = self.rng.sample(self.holders, 2)
        key = f"chaos-{self.run_id}-{self.next_key}"
        body = {
            "from_account": src.account,
            "to_account": dst.account,
            "amount": format_amount(self.rng.randint(1, 500)),
            "memo": MEMO + key,
        }
        return self.next_key, key, src, body, {**src.headers, "Idempotency-Key": key}

    async def _client(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            while not stop.is_set():
                n, key, src, body, headers = self.new_transfer()
                r = await self.carefully(client, "POST", "/api/transfers", body, headers)
                assert r.status_code == 202, r.text
                self.acked[key] = r.json()["id"]
                if n % self.cancel_every == 0:
                    path = f"/api/transfers/{self.acked[key]}/cancel"
                    r = await self.carefully(client, "POST", path, None, src.headers)
                    # 409: settlement won the race; either way the transfer ends once.
                    assert r.status_code in (200, 409), r.text
                await asyncio.sleep(self.pause_s)

    async def carefully(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        give_up_after: float = 60,
    ) -> httpx.Response:
        deadline = time.monotonic() + give_up_after
        while True:
            try:
                r = await client.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                self.transport_errors += 1
            else:
                self.statuses[r.status_code] += 1
                if r.status_code not in RETRY_STATUSES:
                    return r
                assert r.status_code != 500, f"a 500 under faults: {r.text}"
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "service_unavailable", r.text
            assert time.monotonic() < deadline, f"{method} {path}: no answer in {give_up_after} s"
            await asyncio.sleep(0.05)


@dataclasses.dataclass
class Watcher:
    """A WebSocket subscriber that reconnects with ``since`` whenever its socket drops."""

    base_url: str
    holder: Holder
    seqs: list[int] = dataclasses.field(default_factory=list)
    balance: dict[str, str] | None = None
    # How each of its sockets ended ("1011 server error: ..."), for a failure's message.
    ends: list[str] = dataclasses.field(default_factory=list)

    async def run(self) -> None:
        ws_url = self.base_url.replace("http://", "ws://")
        while True:
            since = self.seqs[-1] if self.seqs else 0
            url = f"{ws_url}/ws?account={self.holder.account}&since={since}"
            try:
                async with connect(url, additional_headers=self.holder.headers) as ws:
                    try:
                        async for raw in ws:
                            self.receive(orjson.loads(raw))
                    finally:
                        self.ends.append(f"{ws.close_code} {ws.close_reason}")
            except (OSError, WebSocketException, InvalidHandshake) as exc:
                self.ends.append(repr(exc))
            await asyncio.sleep(0.05)

    def receive(self, message: dict[str, Any]) -> None:
        if "seq" not in message or "balance" not in message:
            return  # a ping
        self.seqs.append(message["seq"])
        self.balance = message["balance"]


@dataclasses.dataclass
class Round:
    fault: str
    injected: int
    acked: int
    duplicates: int
    lost: int
    heal_s: float
    unavailable: int
    retries: int


async def wait_for(
    what: str,
    done: Callable[[], Awaitable[bool]],
    fleet: Deployment,
    within: float,
    detail: Callable[[], str] = str,
) -> float:
    """Poll ``done`` until it holds; return how long that took. Past ``within`` it
    fails with ``detail()`` and the end of each process's log."""
    start = time.monotonic()
    while not await done():
        fleet.check_alive()
        if time.monotonic() - start >= within:
            raise AssertionError(
                f"not healed within {within} s: {what}\n{detail()}\n{fleet.tails()}"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def healed(
    store: Store, fleet: Deployment, watchers: list[Watcher], within: float = 45
) -> float:
    """Wait until nothing is pending and every subscriber has its account's last event."""

    async def settled_and_seen() -> bool:
        pending = await store.fetch_val(
            sa.select(sa.func.count()).where(
                transfers.c.status == "pending", transfers.c.memo.startswith(MEMO)
            )
        )
        last["pending"] = pending
        if pending:
            return False
        seqs = dict(
            (r["id"], r["seq"])
            for r in await store.fetch_all(sa.select(accounts.c.id, accounts.c.seq))
        )
        last.update(seqs)
        return all(w.seqs and w.seqs[-1] == seqs[w.holder.account] for w in watchers)

    # What the last check read: the transfers still pending, and (once none was) each
    # account's seq.
    last: dict[str, int] = {}

    def subscribers() -> str:
        return f"{last.get('pending')} transfers pending\n" + "\n".join(
            f"subscriber of {w.holder.account}: seq {w.seqs[-1] if w.seqs else None} of"
            f" {last.get(w.holder.account)}, {len(w.ends)} sockets ended, the last"
            f" {w.ends[-3:]}"
            for w in watchers
        )

    return await wait_for(
        "every transfer final, every subscriber current",
        settled_and_seen,
        fleet,
        within,
        subscribers,
    )


async def per_transfer(
    store: Store, table: sa.Table, *where: sa.ColumnElement[bool]
) -> collections.Counter[str]:
    """How many rows of ``table`` each chaos transfer has (that match ``where``)."""
    rows = await store.fetch_all(
        sa.select(table.c.transfer_id)
        .join(transfers, transfers.c.id == table.c.transfer_id)
        .where(transfers.c.memo.startswith(MEMO), *where)
    )
    return collections.Counter(r["transfer_id"] for r in rows)


async def verify(
    store: Store, fleet: Deployment, load: Load, watchers: list[Watcher]
) -> tuple[int, int]:
    """Every check the issue lists; returns (duplicates, lost) for the summary (both 0,
    or an assertion has already failed)."""
    result = fleet.audit()
    assert result.returncode == 0, "settle audit failed:\n" + result.stdout + result.stderr

    rows = await store.fetch_all(
        sa.select(transfers.c.id, transfers.c.memo, transfers.c.status).where(
            transfers.c.memo.startswith(MEMO)
        )
    )
    by_key: dict[str, list[Any]] = collections.defaultdict(list)
    for row in rows:
        by_key[row["memo"].removeprefix(MEMO)].append(row)
    duplicates = sum(len(v) - 1 for v in by_key.values())
    lost = [k for k, tid in load.acked.items() if [r["id"] for r in by_key.get(k, [])] != [tid]]
    assert duplicates == 0, f"{duplicates} duplicate transfers from retried keys"
    assert not lost, f"acknowledged transfers missing or replaced: {lost[:5]}"
    not_final = [r["id"] for r in rows if r["status"] not in TERMINAL]
    assert not not_final, f"transfers not final after healing: {not_final[:5]}"

    # Exactly once: one final event on the sender's log, and two ledger entries for a
    # completed transfer (none otherwise).
    finals = await per_transfer(
        store,
        account_events,
        account_events.c.account_id == transfers.c.from_account,
        account_events.c.type.in_([f"transfer.{s}" for s in TERMINAL]),
    )
    entries = await per_transfer(store, ledger_entries)
    status = {r["id"]: r["status"] for r in rows}
    for tid in status:
        assert finals[tid] == 1, f"{tid} ended {finals[tid]} times"
        assert entries[tid] == (2 if status[tid] == "completed" else 0), tid

    await settled_in_acceptance_order(store)
    balances = {r["id"]: r for r in await store.fetch_all(sa.select(accounts))}
    for w in watchers:
        row = balances[w.holder.account]
        assert w.seqs == list(range(w.seqs[0], row["seq"] + 1)), "each event once, in order"
        assert w.balance == balance_json(row), "the subscriber's balance is the ledger's"
    return duplicates, len(lost)


async def settled_in_acceptance_order(store: Store) -> None:
    """Each sender's transfers left its account in the order they were accepted: its
    chain's debits, in chain order, are its completed transfers in acceptance order."""
    rows = await store.fetch_all(
        sa.select(ledger_entries.c.account_id, transfers.c.created_at, transfers.c.id)
        .join(transfers, transfers.c.id == ledger_entries.c.transfer_id)
        .where(ledger_entries.c.amount < 0, transfers.c.kind == "transfer")
        .order_by(ledger_entries.c.account_id, ledger_entries.c.seq)
    )
    last: dict[str, tuple[int, str]] = {}
    for row in rows:
        accepted = (row["created_at"], row["id"])
        before = last.get(row["account_id"])
        assert before is None or before < accepted, (
            f"{row['account_id']}: {row['id']} settled before an earlier transfer {before[1]}"
        )
        last[row["account_id"]] = accepted


def render(rounds: list[Round]) -> str:
    """The summary table, one line per fault (rounds added up, heal time the worst)."""
    by_fault: dict[str, list[Round]] = {}
    for r in rounds:
        by_fault.setdefault(r.fault, []).append(r)
    lines = [
        "| fault | rounds | faults injected | transfers acked | duplicates | lost "
        "| client retries | 503s answered | worst time to heal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fault, rs in by_fault.items():
        lines.append(
            f"| {fault} | {len(rs)} | {sum(r.injected for r in rs)} "
            f"| {sum(r.acked for r in rs)} | {sum(r.duplicates for r in rs)} "
            f"| {sum(r.lost for r in rs)} | {sum(r.retries for r in rs)} "
            f"| {sum(r.unavailable for r in rs)} "
            f"| {max(r.heal_s for r in rs):.1f} s |"
        )
    return "\n".join(lines)


@dataclasses.dataclass
class Chaos:
    """One deployment under test and the rounds run against it."""

    store: Store
    fleet: Deployment
    redis: Redis
    holders: list[Holder]
    watchers: list[Watcher]
    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(6))
    rounds: list[Round] = dataclasses.field(default_factory=list)

    async def round(
        self,
        fault: str,
        inject: Callable[[Load], Awaitable[int]],
    ) -> Round:
        """Run the load, ``inject`` the fault (it returns once the fault is repaired,
        with how many it injected; it may ``finish`` the load first, so that only the
        system's own recovery can heal it), let the clients finish, wait until healed,
        verify."""
        load = Load(self.fleet.base_url, self.holders, self.rng)
        load.start()
        try:
            await asyncio.sleep(self.rng.uniform(0.2, 0.5))  # steady state first
            injected = await inject(load)
            repaired = time.monotonic()
            await load.finish()
        finally:
            await load.abandon()
        await healed(self.store, self.fleet, self.watchers)
        heal_s = time.monotonic() - repaired
        duplicates, lost = await verify(self.store, self.fleet, load, self.watchers)
        retries = load.transport_errors + sum(load.statuses[c] for c in RETRY_STATUSES)
        done = Round(
            fault, injected, len(load.acked), duplicates, lost, heal_s, load.statuses[503], retries
        )
        self.rounds.append(done)
        return done
