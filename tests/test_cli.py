"""The settle command line, run as a real subprocess against a real database."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from server.settings import Settings
from tests.conftest import Stack, execute, settings_env


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


async def test_freeze_and_unfreeze(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    assert settle(stack.settings, "account", "freeze", bob.account).returncode == 0
    r = await stack.transfer(alice, bob.account, "1.00")
    assert r.json()["error"]["code"] == "account_frozen"
    assert settle(stack.settings, "account", "unfreeze", bob.account).returncode == 0
    assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
    missing = settle(stack.settings, "account", "freeze", "acc_nope")
    assert missing.returncode == 1 and "no user account" in missing.stderr
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
