"""Who may read /metrics (server/web/ops.py), on the web server and on the worker's
SETTLE_METRICS_PORT: with SETTLE_METRICS_TOKEN set, its bearer; without, a loopback
peer whose request carries no forwarding header. Over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import httpx
import pytest
from starlette.requests import Request

from server.domain import errors
from server.settings import Settings
from server.store import Store
from server.web import ops
from server.web.app import create_app
from tests.conftest import free_port, serve
from tests.fleet import Fleet

TOKEN = "metrics-secret-1234"  # noqa: S105
FORWARDING = [
    {"X-Forwarded-For": "203.0.113.7"},
    {"X-Forwarded-For": "127.0.0.1"},
    {"Forwarded": "for=203.0.113.7"},
    {"X-Real-IP": "203.0.113.7"},
    {"X-Forwarded-Proto": "https"},
]


def assert_refused(r: httpx.Response, status: int) -> None:
    code = {401: "unauthorized", 404: "not_found"}[status]
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert "settle_" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


async def test_web_metrics_answer_loopback_without_forwarding_headers_or_the_token(
    settings: Settings, store: Store
) -> None:
    """Before: /metrics answered anyone, behind a proxy included."""
    async with (
        serve(create_app(settings, store=store), settings) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        r = await client.get("/metrics")
        assert r.status_code == 200 and "settle_rejections" in r.text
        for extra in FORWARDING:
            assert_refused(await client.get("/metrics", headers=extra), 404)
    tokened = dataclasses.replace(settings, metrics_token=TOKEN)
    async with (
        serve(create_app(tokened, store=store), tokened) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert_refused(await client.get("/metrics"), 401)
        for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
            assert_refused(await client.get("/metrics", headers={"Authorization": wrong}), 401)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        r = await client.get("/metrics", headers=bearer)
        assert r.status_code == 200 and "settle_rejections" in r.text
        # Behind a proxy, the token is what counts.
        r = await client.get("/metrics", headers={**bearer, "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("203.0.113.7", False),
        ("10.0.0.2", False),
        ("::ffff:192.0.2.1", False),
    ],
)
def test_only_a_loopback_peer_may_read_metrics_without_a_token(peer: str, allowed: bool) -> None:
    """The peer a real connection cannot be here (this machine only talks to loopback):
    the rule applied to the request uvicorn would hand the app from that peer."""
    request = Request({"type": "http", "headers": [], "client": (peer, 5000)})
    settings = Settings(database_url="", redis_url=None, secret_key="", var_dir=None)  # type: ignore[arg-type]
    if allowed:
        ops.check_scraper(request, settings)
    else:
        with pytest.raises(errors.NotFound):
            ops.check_scraper(request, settings)


async def worker_metrics(port: int, fleet: Fleet, **headers: str) -> httpx.Response:
    """GET the worker's /metrics once it listens (it starts with the worker)."""
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            fleet.check_alive()
            with contextlib.suppress(httpx.TransportError):
                return await client.get(f"http://127.0.0.1:{port}/metrics", headers=headers)
            assert time.monotonic() < deadline, "the worker's metrics port never answered"
            await asyncio.sleep(0.05)


async def test_the_worker_s_metrics_port_follows_the_same_rule(fleet: Fleet, store: Store) -> None:
    """Before: prometheus_client's own server answered anyone, whatever they sent."""
    open_port, token_port = free_port(), free_port()
    fleet.start("worker", "worker", SETTLE_METRICS_PORT=str(open_port), HOST="127.0.0.1")
    r = await worker_metrics(open_port, fleet)
    assert r.status_code == 200 and "settle_transfers_settled" in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    for extra in FORWARDING:
        assert_refused(await worker_metrics(open_port, fleet, **extra), 404)
    fleet.start(
        "tokened",
        "worker",
        SETTLE_METRICS_PORT=str(token_port),
        SETTLE_METRICS_TOKEN=TOKEN,
        HOST="127.0.0.1",
    )
    assert_refused(await worker_metrics(token_port, fleet), 401)
    assert_refused(await worker_metrics(token_port, fleet, Authorization="Bearer no"), 401)
    r = await worker_metrics(token_port, fleet, Authorization=f"Bearer {TOKEN}")
    assert r.status_code == 200 and "settle_transfers_settled" in r.text
    fleet.stop_all()
    log = (fleet.logs / "worker.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log
