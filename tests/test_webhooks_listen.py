"""``settle webhooks listen URL`` as a real subprocess: the caller's new events reach a
local receiver as signed webhooks, and each is printed with its outcome."""

from __future__ import annotations

import asyncio
import sys

from standardwebhooks import Webhook

from tests.conftest import Stack, free_socket, settings_env
from tests.test_live import TIMEOUT
from tests.test_webhooks_delivery import Receiver, listening


async def test_listen_forwards_each_event_signed_and_prints_its_outcome(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    receiver = Receiver()
    sock = free_socket()
    forward_to = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    async with listening(receiver.app, sock):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            "webhooks",
            "listen",
            forward_to,
            "--url",
            stack.base_url,
            "--token",
            alice.token,
            stdout=asyncio.subprocess.PIPE,
            env=settings_env(stack.settings),
        )
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
            assert forward_to in ready.decode()
            line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
            secret = line.split("secret is ", 1)[1].split()[0]
            # The accounts were read (with their seq) before this line: nothing is missed.
            tid = (await stack.transfer(alice, bob.account, "3.00")).json()["id"]
            await stack.settle_all()
            printed = [
                (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode() for _ in range(2)
            ]
        finally:
            proc.terminate()
            await proc.wait()
    assert [p.split()[0] for p in printed] == ["transfer.pending", "transfer.completed"]
    assert all("-> 200" in p for p in printed), printed
    events = [Webhook(secret).verify(r.body, r.headers) for r in receiver.got]
    assert [(e["type"], e["transfer"]["id"]) for e in events] == [
        ("transfer.pending", tid),
        ("transfer.completed", tid),
    ]
