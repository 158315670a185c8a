"""Webhook deliveries end to end: a real receiver on loopback verifying every signature
with the standardwebhooks package, real arq workers (settlement's and the webhooks'
own queue), real Redis, a real database. Each account's events arrive once and in seq
order; a failing receiver gets the same webhook-id again; one that was down gets
everything once it is back; redirects are not followed; addresses are checked again at
delivery."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from arq import Worker
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobs.webhooks import LINGER_S, create_webhook_worker
from jobs.worker import stop_worker
from server.metrics import WEBHOOKS
from server.redisbox import redis_settings
from server.settings import Settings
from tests.conftest import Customer, Stack, execute, free_socket


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        webhook_allow_http=True,
        webhook_allow_private=True,
        webhook_retry_schedule=(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        webhook_timeout_s=5,
        transfer_rate=0,
        worker_poll_ms=20,
    )


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A receiver: answers each POST with the next of ``answers`` (then 200), records
    what it got, and wakes whoever waits for a count."""

    def __init__(self, answers: list[Response] | None = None) -> None:
        self.got: list[Received] = []
        self.answers = list(answers or [])
        self._changed = asyncio.Condition()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.got.append(Received(dict(request.headers), await request.body()))
        async with self._changed:
            self._changed.notify_all()
        return self.answers.pop(0) if self.answers else Response(status_code=200)

    async def wait_for(self, test: Callable[[], bool], within: float = 60) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(test)

        await asyncio.wait_for(wait(), within)


@contextlib.asynccontextmanager
async def listening(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def workers(stack: Stack, settings: Settings | None = None) -> AsyncIterator[None]:
    """The settlement worker and the webhooks worker, running (not burst)."""
    s = settings or stack.settings
    assert s.redis_url is not None
    started: list[tuple[Worker, asyncio.Task[Any]]] = []
    for worker in (
        stack.worker(burst=False),
        create_webhook_worker(
            s, redis_settings(s, s.redis_url), handle_signals=False, store=stack.store
        ),
    ):
        started.append((worker, asyncio.create_task(worker.main())))
    try:
        yield
    finally:
        for worker, task in started:
            # Longer than a delivery job lingers on its bell: no job outlives its pool.
            await stop_worker(worker, task, LINGER_S + 3)


async def endpoint(stack: Stack, who: Customer, url: str, **extra: Any) -> dict[str, Any]:
    r = await stack.client.post("/api/webhooks", json={"url": url, **extra}, headers=who.headers)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


def attempts_counted(outcome: str) -> float:
    found = WEBHOOKS.registry.get_sample_value(
        "settle_webhook_attempts_total", {"outcome": outcome}
    )
    return found or 0.0


def verified(secret: str, got: list[Received]) -> list[dict[str, Any]]:
    """Every request's body, each verified as a Standard Webhooks receiver would."""
    return [Webhook(secret).verify(r.body, r.headers) for r in got]


async def test_every_event_arrives_once_signed_and_in_seq_order(stack: Stack) -> None:
    receiver = Receiver()
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    alice, bob = await stack.customer("1000.00"), await stack.customer("0")
    hook = await endpoint(stack, alice, url)
    async with listening(receiver.app, sock), workers(stack):
        for _ in range(100):
            assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
        # 100 pending and 100 completed on alice's account; none of bob's.
        await receiver.wait_for(lambda: len(receiver.got) >= 200)
    events = verified(hook["secret"], receiver.got)
    assert len(events) == 200
    assert len({r.headers["webhook-id"] for r in receiver.got}) == 200
    assert {e["account"] for e in events} == {alice.account}
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 200))
    types = [e["type"] for e in events]
    assert types.count("transfer.pending") == types.count("transfer.completed") == 100
    log = await stack.client.get(
        f"/api/webhooks/{hook['id']}/deliveries?limit=200", headers=alice.headers
    )
    deliveries = log.json()["deliveries"]
    assert {(d["status"], len(d["attempts"])) for d in deliveries} == {("delivered", 1)}
    # Each body is the stream's message for its event, as the event log keeps it.
    logged = await stack.client.get(
        f"/api/accounts/{alice.account}/events?since={seqs[0] - 1}&limit=200",
        headers=alice.headers,
    )
    assert logged.json()["events"] == events


async def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers(
    stack: Stack,
) -> None:
    receiver = Receiver([Response(status_code=500), Response(status_code=500)])
    sock = free_socket()
    alice = await stack.customer()
    hook = await endpoint(stack, alice, f"http://127.0.0.1:{sock.getsockname()[1]}/hook")
    before = {o: attempts_counted(o) for o in ("http_5xx", "delivered")}
    async with listening(receiver.app, sock), workers(stack):
        r = await stack.client.post(f"/api/webhooks/{hook['id']}/test", headers=alice.headers)
        await receiver.wait_for(lambda: len(receiver.got) >= 3)
    assert {o: attempts_counted(o) - n for o, n in before.items()} == {
        "http_5xx": 2,
        "delivered": 1,
    }
    ids = [r.headers["webhook-id"] for r in receiver.got]
    assert ids == [r.json()["id"]] * 3
    (test,) = verified(hook["secret"], receiver.got[2:])
    assert test["type"] == "webhook.test"
    log = await stack.client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=alice.headers)
    (delivery,) = log.json()["deliveries"]
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert delivery["attempts"][0]["next_attempt_at"] is not None


async def test_a_receiver_down_for_10_s_gets_everything_when_back(stack: Stack) -> None:
    receiver = Receiver()
    # Bound but not listening: connections to it are refused until it serves.
    sock = free_socket()
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    hook = await endpoint(stack, alice, f"http://127.0.0.1:{sock.getsockname()[1]}/hook")
    async with workers(stack):
        for _ in range(5):
            assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
        await asyncio.sleep(10)  # the receiver is down this long: the scenario itself
        log = await stack.client.get(
            f"/api/webhooks/{hook['id']}/deliveries", headers=alice.headers
        )
        first = log.json()["deliveries"][-1]
        assert first["status"] == "pending" and len(first["attempts"]) >= 2
        assert first["attempts"][0]["status_code"] is None and first["attempts"][0]["error"]
        async with listening(receiver.app, sock):
            await receiver.wait_for(lambda: len(receiver.got) >= 10)
    events = verified(hook["secret"], receiver.got)
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + 10))


async def test_an_endpoint_enabled_again_gets_what_it_missed_in_order(stack: Stack) -> None:
    """Disabled after failing, its owner sees why and enables it again: what the
    accounts did meanwhile arrives, in order, and nothing is left of the reason. Only the
    owner can: others get 404."""
    receiver = Receiver()
    sock = free_socket()
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    hook = await endpoint(stack, alice, f"http://127.0.0.1:{sock.getsockname()[1]}/hook")
    reason = "disabled after failing every attempt for 120 h; last: HTTP 500"
    await execute(
        stack.store,
        f"UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = '{reason}',"
        f" failing_since = 1 WHERE id = '{hook['id']}'",
    )
    url = f"/api/webhooks/{hook['id']}"
    seen = (await stack.client.get(url, headers=alice.headers)).json()
    assert (seen["status"], seen["disabled_reason"]) == ("disabled", reason)
    for _ in range(3):
        assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
    assert (await stack.client.post(f"{url}/enable", headers=bob.headers)).status_code == 404
    async with listening(receiver.app, sock), workers(stack):
        r = await stack.client.post(f"{url}/enable", headers=alice.headers)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["disabled_reason"]) == ("enabled", "")
        assert "secret" not in r.json()
        # 3 pending, missed while disabled, and their 3 completions.
        await receiver.wait_for(lambda: len(receiver.got) >= 6)
    events = verified(hook["secret"], receiver.got)
    first = events[0]["seq"]  # the account's first event after the endpoint was made
    assert [e["seq"] for e in events] == list(range(first, first + 6))
    assert [e["type"] for e in events[:3]] == ["transfer.pending"] * 3


async def test_a_redirect_is_not_followed_even_to_a_metadata_address(stack: Stack) -> None:
    to = "http://169.254.169.254/latest/meta-data/"
    receiver = Receiver([Response(status_code=302, headers={"location": to})])
    sock = free_socket()
    alice = await stack.customer()
    hook = await endpoint(stack, alice, f"http://127.0.0.1:{sock.getsockname()[1]}/hook")
    async with listening(receiver.app, sock), workers(stack):
        await stack.client.post(f"/api/webhooks/{hook['id']}/test", headers=alice.headers)
        await receiver.wait_for(lambda: len(receiver.got) >= 2)
    log = await stack.client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=alice.headers)
    attempts = log.json()["deliveries"][0]["attempts"]
    assert attempts[0]["status_code"] == 302
    assert "redirect not followed" in attempts[0]["error"] and to in attempts[0]["error"]
    assert attempts[1]["status_code"] == 200
    assert {r.headers["webhook-id"] for r in receiver.got} == {log.json()["deliveries"][0]["id"]}


async def test_the_address_is_checked_again_at_delivery(stack: Stack) -> None:
    """An endpoint accepted while private addresses were allowed (or whose name now
    resolves elsewhere) is refused at delivery, before any connection."""
    receiver = Receiver()
    sock = free_socket()
    alice = await stack.customer()
    hook = await endpoint(stack, alice, f"http://localhost:{sock.getsockname()[1]}/hook")
    strict = dataclasses.replace(stack.settings, webhook_allow_private=False)
    async with listening(receiver.app, sock), workers(stack, strict):
        await stack.client.post(f"/api/webhooks/{hook['id']}/test", headers=alice.headers)

        async def refused() -> None:
            while True:
                log = await stack.client.get(
                    f"/api/webhooks/{hook['id']}/deliveries", headers=alice.headers
                )
                attempts = log.json()["deliveries"][0]["attempts"]
                if attempts:
                    assert attempts[0]["error"].startswith("refused: localhost resolves to")
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(refused(), 30)
    assert receiver.got == []
