"""The settle command line, run as a real subprocess against a real database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from server.cli import DEMO_PASSWORD
from server.settings import Settings
from tests.conftest import Stack, account_events, execute, free_port, settings_env
from tests.test_live import recv, ws_url


def settle(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=settings_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_user_create_funds_through_the_ledger_and_audit_passes(stack: Stack) -> None:
    done = settle(
        stack.settings, "user", "create", "dora", "--password", "pw12345", "--deposit", "42.50"
    )
    assert done.returncode == 0, done.stderr
    account_id = done.stdout.split()[-1]
    r = await stack.client.post("/api/tokens", json={"username": "dora", "password": "pw12345"})
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    account = (await stack.client.get(f"/api/accounts/{account_id}", headers=headers)).json()
    assert account["balance"]["posted"] == "42.50" and account["owner"] == "dora"
    audit = settle(stack.settings, "audit")
    assert audit.returncode == 0 and "all invariants hold" in audit.stdout
    again = settle(stack.settings, "user", "create", "dora", "--password", "x")
    assert again.returncode == 1 and "already exists" in again.stderr


async def test_audit_reports_each_broken_invariant_and_exits_1(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    await stack.transfer(alice, bob.account, "1.00")
    await stack.settle_all()
    tamper: list[Any] = [
        f"UPDATE accounts SET posted = posted + 1 WHERE id = '{alice.account}'",
        f"UPDATE accounts SET pending_credits = 5 WHERE id = '{bob.account}'",
        f"DELETE FROM account_events WHERE account_id = '{bob.account}' AND seq = 1",
    ]
    await execute(stack.store, *tamper)
    audit = settle(stack.settings, "audit")
    assert audit.returncode == 1
    for line in ("FAIL 1.", "FAIL 3.", "FAIL 6.", "ok   2.", "ok   4.", "ok   5."):
        assert line in audit.stdout, audit.stdout
    assert "LEDGER INVARIANTS VIOLATED" in audit.stdout
    await execute(  # restore, so the fixture's audit passes
        stack.store,
        f"UPDATE accounts SET posted = posted - 1 WHERE id = '{alice.account}'",
        f"UPDATE accounts SET pending_credits = 0 WHERE id = '{bob.account}'",
        "INSERT INTO account_events (account_id, seq, type, payload, created_at) "
        f"VALUES ('{bob.account}', 1, 'transfer.completed', '{{}}', 0)",
    )


async def test_freeze_and_unfreeze_by_account_or_username_tell_every_subscriber(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    async with account_events(stack.settings, bob.account) as published:
        frozen = settle(stack.settings, "account", "freeze", bob.username)
        assert frozen.returncode == 0 and f"account {bob.account} is now frozen" in frozen.stdout
        message = None
        async with asyncio.timeout(10):
            while message is None:  # the subscription's confirmation comes first
                message = await published.get_message(ignore_subscribe_messages=True, timeout=1)
        assert b'"type":"account.frozen"' in message["data"]
    again = settle(stack.settings, "account", "freeze", bob.account)
    assert again.returncode == 0 and "was already frozen" in again.stdout
    r = await stack.transfer(alice, bob.account, "1.00")
    assert r.json()["error"]["code"] == "recipient_unavailable"
    assert settle(stack.settings, "account", "unfreeze", bob.account).returncode == 0
    assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
    missing = settle(stack.settings, "account", "freeze", "acc_nope")
    assert missing.returncode == 1 and "no user account or user called" in missing.stderr
    await stack.settle_all()


async def test_demo_is_idempotent(stack: Stack) -> None:
    first = settle(stack.settings, "demo")
    assert first.returncode == 0 and first.stdout.count("created demo user") == 3
    second = settle(stack.settings, "demo")
    assert second.returncode == 0 and "already exist" in second.stdout


def test_production_refuses_to_start_without_a_secret_key(settings: Settings) -> None:
    env = settings_env(settings, SETTLE_ENV="production")
    del env["SECRET_KEY"]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "web"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "SECRET_KEY must be set" in done.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


async def _gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@contextlib.asynccontextmanager
async def settle_run(settings: Settings, var: Path) -> AsyncIterator[tuple[Any, int, str]]:
    """``settle run`` with its bundled Redis (no REDIS_URL) under ``var``, and its own
    default SETTLE_PARTITIONS (one process: its web and worker agree): the process, the
    pid of the redis-server it started, and its URL."""
    port = free_port()
    env = settings_env(settings, SETTLE_VAR_DIR=str(var), PORT=str(port), HOST="127.0.0.1")
    del env["REDIS_URL"], env["SETTLE_PARTITIONS"]
    with (var / "run.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (var / "run.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "settle run did not start"
                await asyncio.sleep(0.05)
        yield proc, int((var / "redis.pid").read_text()), f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_sigterm_stops_settle_run_and_the_redis_it_started(
    settings: Settings, tmp_path: Path
) -> None:
    async with settle_run(settings, tmp_path) as (proc, redis_pid, _):
        assert _alive(redis_pid)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await _gone(redis_pid), "the bundled redis-server outlived settle run"


async def test_after_a_kill_9_the_next_start_finds_nothing_in_its_way(
    settings: Settings, tmp_path: Path
) -> None:
    async with settle_run(settings, tmp_path) as (proc, redis_pid, _):
        proc.kill()
        proc.wait()
        assert await _gone(redis_pid), "the bundled redis-server outlived a kill -9 of settle"
    async with settle_run(settings, tmp_path) as (proc, redis_pid, _):
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await _gone(redis_pid)


async def test_settle_run_settles_with_its_own_defaults(settings: Settings, tmp_path: Path) -> None:
    """The embedded deployment as ``make run`` starts it, SETTLE_PARTITIONS left to its
    default (one partition on SQLite, 8 on PostgreSQL): transfers between demo users,
    both ways, settle, and each completion reaches both parties' streams."""
    assert settle(settings, "demo", SETTLE_VAR_DIR=str(tmp_path)).returncode == 0
    async with (
        settle_run(settings, tmp_path) as (_, _, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        auth: dict[str, dict[str, str]] = {}
        account: dict[str, str] = {}
        for name in ("alice", "bob"):
            made = await client.post(
                "/api/tokens", json={"username": name, "password": DEMO_PASSWORD}
            )
            assert made.status_code == 201, made.text
            auth[name] = {"Authorization": f"Bearer {made.json()['token']}"}
            mine = await client.get("/api/accounts", headers=auth[name])
            account[name] = mine.json()["accounts"][0]["id"]
        async with (
            connect(ws_url(url, account["alice"]), additional_headers=auth["alice"]) as to_alice,
            connect(ws_url(url, account["bob"]), additional_headers=auth["bob"]) as to_bob,
        ):
            sent: set[str] = set()
            for src, dst in [("alice", "bob"), ("bob", "alice"), ("alice", "bob")]:
                order = {"from_account": account[src], "to_account": account[dst], "amount": "1.00"}
                answer = await client.post("/api/transfers", json=order, headers=auth[src])
                assert answer.status_code == 202, answer.text
                sent.add(answer.json()["id"])
            for ws in (to_alice, to_bob):
                completed: set[str] = set()
                while completed != sent:
                    message = await recv(ws)
                    if message["type"] == "transfer.completed":
                        completed.add(message["transfer"]["id"])
        balances = [
            (await client.get(f"/api/accounts/{account[n]}", headers=auth[n])).json()["balance"]
            for n in ("alice", "bob")
        ]
        assert [b["posted"] for b in balances] == ["999.00", "501.00"]


async def test_accounts_lists_ids_owners_currencies_and_balances(stack: Stack) -> None:
    alice, bob = await stack.customer("12.50"), await stack.customer("0")
    listed = settle(stack.settings, "accounts")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "OWNER", "CURRENCY", "AVAILABLE", "POSTED", "STATUS"]
    assert [alice.account, alice.username, "USD", "12.50", "12.50", "active"] in [
        line.split() for line in lines
    ]
    one = settle(stack.settings, "accounts", bob.username)
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 2
    assert bob.account in one.stdout and alice.account not in one.stdout
    nobody = settle(stack.settings, "accounts", "nobody-by-that-name")
    assert nobody.returncode == 1 and "no accounts of nobody-by-that-name" in nobody.stdout


def test_help_is_plain_text(settings: Settings) -> None:
    for args in (["--help"], ["accounts", "--help"], ["audit", "--help"]):
        done = settle(settings, *args)
        assert done.returncode == 0, done.stderr
        assert "``" not in done.stdout and "%" not in done.stdout
    assert "accounts" in settle(settings, "--help").stdout


async def test_settle_run_is_quiet_and_ctrl_c_prints_no_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    async with settle_run(settings, tmp_path) as (proc, _, _):
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        assert await asyncio.to_thread(proc.wait, 30) == 0
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log
    # Migrations ran and the worker started, silently: their libraries speak from WARNING.
    assert " INFO alembic" not in log and " INFO arq" not in log, log


def test_a_taken_port_is_one_clear_line_naming_port(settings: Settings, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        for command in ("run", "web"):
            env = {"SETTLE_VAR_DIR": str(tmp_path), "PORT": port, "HOST": "127.0.0.1"}
            done = settle(settings, command, **env)
            assert done.returncode == 1, (command, done.stderr)
            assert "settle is running" not in done.stdout
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "PORT" in lines[0] and port in lines[0], done.stderr
            assert "Errno" not in done.stderr and "Traceback" not in done.stderr


def test_the_banner_lists_only_the_demo_users(settings: Settings, tmp_path: Path) -> None:
    var = str(tmp_path)
    made = settle(settings, "user", "create", "dora", "--password", "pw12345", SETTLE_VAR_DIR=var)
    assert made.returncode == 0, made.stderr
    assert settle(settings, "demo", SETTLE_VAR_DIR=var).returncode == 0
    port = free_port()
    env = settings_env(settings, SETTLE_VAR_DIR=var, PORT=str(port), HOST="127.0.0.1")
    banner = []
    with subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # written and flushed before it serves
                banner.append(line)
                if "press Ctrl+C" in line:
                    break
        finally:
            proc.terminate()
            proc.wait(30)
    text = "".join(banner)
    assert f"settle is running at http://127.0.0.1:{port}/" in text
    assert "demo users: alice, bob, carol  (password: settle-demo)" in text
    assert "dora" not in text
