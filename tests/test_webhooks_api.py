"""The webhooks API: endpoints owned and hidden from others (404), secrets shown once,
rotation, the delivery log, and URLs refused before anything is contacted (SSRF)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from server.settings import Settings
from tests.conftest import Stack


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # http:// allowed (nothing here speaks TLS), private addresses not: the SSRF rules.
    return dataclasses.replace(settings, webhook_allow_http=True, webhook_max_endpoints=3)


@dataclasses.dataclass
class Listener:
    """A loopback TCP port that counts the connections it is opened."""

    url: str
    connections: int = 0


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    found = Listener("")

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.connections += 1
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield found
    finally:
        server.close()
        await server.wait_closed()


async def test_an_endpoint_is_created_listed_and_deleted_by_its_owner(stack: Stack) -> None:
    alice = await stack.customer()
    body = {"url": "https://93.184.216.34/in", "events": ["transfer.*"], "description": "shop"}
    r = await stack.client.post("/api/webhooks", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["id"].startswith("wh_") and made["secret"].startswith("whsec_")
    assert (made["status"], made["events"], made["url"]) == ("enabled", ["transfer.*"], body["url"])
    listed = (await stack.client.get("/api/webhooks", headers=alice.headers)).json()
    assert [w["id"] for w in listed["webhooks"]] == [made["id"]]
    assert "secret" not in listed["webhooks"][0]
    one = await stack.client.get(f"/api/webhooks/{made['id']}", headers=alice.headers)
    assert one.status_code == 200 and "secret" not in one.json()
    rotated = await stack.client.post(
        f"/api/webhooks/{made['id']}/rotate-secret", headers=alice.headers
    )
    assert rotated.status_code == 200 and rotated.json()["secret"] not in ("", made["secret"])
    gone = await stack.client.delete(f"/api/webhooks/{made['id']}", headers=alice.headers)
    assert gone.status_code == 204
    again = await stack.client.get(f"/api/webhooks/{made['id']}", headers=alice.headers)
    assert again.status_code == 404 and again.json()["error"]["code"] == "webhook_not_found"


async def test_others_endpoints_and_deliveries_are_not_found(stack: Stack) -> None:
    alice, eve = await stack.customer(), await stack.customer()
    r = await stack.client.post(
        "/api/webhooks", json={"url": "https://93.184.216.34/in"}, headers=alice.headers
    )
    wh = r.json()["id"]
    test = await stack.client.post(f"/api/webhooks/{wh}/test", headers=alice.headers)
    assert test.status_code == 202
    delivery = test.json()["id"]
    for method, path in [
        ("GET", f"/api/webhooks/{wh}"),
        ("DELETE", f"/api/webhooks/{wh}"),
        ("POST", f"/api/webhooks/{wh}/rotate-secret"),
        ("GET", f"/api/webhooks/{wh}/deliveries"),
        ("POST", f"/api/webhooks/{wh}/deliveries/{delivery}/retry"),
        ("POST", f"/api/webhooks/{wh}/test"),
    ]:
        r = await stack.client.request(method, path, headers=eve.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "webhook_not_found"
    log = await stack.client.get(f"/api/webhooks/{wh}/deliveries", headers=alice.headers)
    (only,) = log.json()["deliveries"]
    assert (only["id"], only["type"], only["status"]) == (delivery, "webhook.test", "pending")
    missing = await stack.client.post(
        f"/api/webhooks/{wh}/deliveries/msg_nope/retry", headers=alice.headers
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "delivery_not_found"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254"])
async def test_private_addresses_are_refused_before_any_connection(
    stack: Stack, listener: Listener, host: str
) -> None:
    alice = await stack.customer()
    url = listener.url.replace("127.0.0.1", host)
    r = await stack.client.post("/api/webhooks", json={"url": url}, headers=alice.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "webhook_url_refused"
    assert r.json()["error"]["field"] == "url"
    assert listener.connections == 0
    assert (await stack.client.get("/api/webhooks", headers=alice.headers)).json() == {
        "webhooks": []
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_field"),
        ({"url": "ftp://example.com/"}, "webhook_url_refused"),
        ({"url": "https://u:p@example.com/"}, "webhook_url_refused"),
        ({"url": "https://93.184.216.34/", "events": []}, "invalid_field"),
        ({"url": "https://93.184.216.34/", "events": "transfer.*"}, "invalid_field"),
        ({"url": "https://93.184.216.34/", "events": ["Bad Type"]}, "invalid_field"),
    ],
)
async def test_bad_endpoints_are_refused_with_a_code(
    stack: Stack, body: dict[str, object], code: str
) -> None:
    alice = await stack.customer()
    r = await stack.client.post("/api/webhooks", json=body, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text


async def test_endpoints_per_user_are_limited(stack: Stack) -> None:
    alice = await stack.customer()
    body = {"url": "https://93.184.216.34/in"}
    codes = [
        (await stack.client.post("/api/webhooks", json=body, headers=alice.headers)).status_code
        for _ in range(4)
    ]
    assert codes == [201, 201, 201, 422]


async def test_webhooks_need_a_token(stack: Stack) -> None:
    r = await stack.client.get("/api/webhooks")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
