"""Bad input gets a clear 4xx with a machine-readable code and changes nothing; no one
sees or moves what is not theirs."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.settings import Settings
from server.store import Store
from server.store import accounts as admin
from server.web import throttle
from tests.conftest import Customer, Stack, execute
from tests.test_live import recv, seq_of, server_stack, subscribe
from tests.test_sessions import browser, login


async def snapshot(stack: Stack) -> list[Any]:
    counts = []
    for table in ("transfers", "ledger_entries", "account_events", "idempotency_keys"):
        counts.append(await stack.store.fetch_val(f"SELECT COUNT(*) FROM {table}"))
    rows = await stack.store.fetch_all(
        "SELECT id, posted, pending_debits, pending_credits, seq FROM accounts ORDER BY id"
    )
    return counts + [tuple(r.values()) for r in rows]


def body_for(alice: Customer, bob: Customer, case: str) -> Any:
    base: dict[str, Any] = {
        "from_account": alice.account,
        "to_account": bob.account,
        "amount": "1.00",
    }
    match case:
        case "missing from":
            del base["from_account"]
        case "missing to":
            del base["to_account"]
        case "number account":
            base["to_account"] = 12
        case "list memo":
            base["memo"] = ["x"]
        case "number memo":
            base["memo"] = 1.5
        case "long memo":
            base["memo"] = "x" * 501
        case "unknown to":
            base["to_account"] = "acc_doesnotexist"
        case "same account":
            base["to_account"] = alice.account
        case "foreign from":
            base["from_account"], base["to_account"] = bob.account, alice.account
    return base


AMOUNTS = {
    "negative": "-1.00",
    "zero": "0",
    "zero number": 0,
    "three decimals": "1.234",
    "NaN string": "NaN",
    "too large": "1000000000.01",
    "boolean": True,
    "null": None,
    "object": {"value": 1},
    "empty": "",
}


@pytest.mark.parametrize("label", list(AMOUNTS))
async def test_invalid_amounts_are_422_invalid_amount(stack: Stack, label: str) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    before = await snapshot(stack)
    r = await stack.transfer(alice, bob.account, AMOUNTS[label])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_amount"
    assert r.json()["error"]["field"] == "amount"
    assert await snapshot(stack) == before


@pytest.mark.parametrize("raw", [b"1e309", b"NaN", b"Infinity", b"-5", b"1.234", b"12.3456"])
async def test_raw_json_number_amounts_are_parsed_exactly_or_refused(
    stack: Stack, raw: bytes
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    before = await snapshot(stack)
    body = b'{"from_account": "%s", "to_account": "%s", "amount": %s}' % (
        alice.account.encode(),
        bob.account.encode(),
        raw,
    )
    r = await stack.client.post("/api/transfers", content=body, headers=alice.headers)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in ("invalid_amount", "invalid_json")
    assert await snapshot(stack) == before


HOSTILE_AMOUNTS = {
    "5,001 digits as a string": b'"' + b"5" * 5001 + b'"',
    "4,400 digits as a JSON number": b"9" * 4400,
    "4,400 digits with a fraction": b"9" * 4400 + b".5",
    "spaces around": b'" 5.00 "',
    "a non-breaking space": '"\u00a05.00"'.encode(),
    "a newline after": b'"5.00\\n"',
}


@pytest.mark.parametrize("label", list(HOSTILE_AMOUNTS))
async def test_hostile_amounts_are_422_invalid_amount_never_500(stack: Stack, label: str) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    before = await snapshot(stack)
    body = b'{"from_account": "%s", "to_account": "%s", "amount": %s}' % (
        alice.account.encode(),
        bob.account.encode(),
        HOSTILE_AMOUNTS[label],
    )
    r = await stack.client.post("/api/transfers", content=body, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_amount", r.text
    assert await snapshot(stack) == before


@pytest.mark.parametrize("field", ["from_account", "to_account", "memo"])
async def test_lone_surrogates_in_transfer_fields_are_422(stack: Stack, field: str) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    before = await snapshot(stack)
    body = {"from_account": alice.account, "to_account": bob.account, "amount": "1.00"}
    # JSON can spell a lone surrogate (\ud800), which no database or encoder takes.
    raw = orjson.dumps(body).replace(b"}", b', "%s": "x\\ud800y"}' % field.encode())
    r = await stack.client.post("/api/transfers", content=raw, headers=alice.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "invalid_field",
        "message": f"{field} must be valid Unicode text",
        "field": field,
    }
    assert await snapshot(stack) == before


@pytest.mark.parametrize("field", ["username", "password"])
async def test_lone_surrogates_in_token_requests_are_422(stack: Stack, field: str) -> None:
    body = {"username": "alice", "password": "pw"}
    del body[field]
    raw = orjson.dumps(body)[:-1] + b', "%s": "x\\udc00y"}' % field.encode()
    r = await stack.client.post("/api/tokens", content=raw)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


async def test_a_json_number_amount_with_two_decimals_is_exact(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    body = f'{{"from_account": "{alice.account}", "to_account": "{bob.account}", "amount": 0.29}}'
    r = await stack.client.post("/api/transfers", content=body, headers=alice.headers)
    assert r.status_code == 202 and r.json()["amount"] == "0.29"
    await stack.settle_all()


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("missing from", 422, "invalid_field"),
        ("missing to", 422, "invalid_field"),
        ("number account", 422, "invalid_field"),
        ("list memo", 422, "invalid_field"),
        ("number memo", 422, "invalid_field"),
        ("long memo", 422, "invalid_field"),
        ("unknown to", 404, "account_not_found"),
        ("same account", 422, "same_account"),
        ("foreign from", 404, "account_not_found"),
    ],
)
async def test_invalid_transfer_fields(stack: Stack, case: str, status: int, code: str) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("10.00")
    before = await snapshot(stack)
    r = await stack.client.post(
        "/api/transfers", json=body_for(alice, bob, case), headers=alice.headers
    )
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert r.json()["error"]["message"]
    assert await snapshot(stack) == before


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"a string"', "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[" * 100_000, "payload_too_large"),
        (b'{"memo": "' + b"x" * 70_000 + b'"}', "payload_too_large"),
    ],
)
async def test_malformed_bodies(stack: Stack, content: bytes, code: str) -> None:
    alice = await stack.customer("10.00")
    before = await snapshot(stack)
    r = await stack.client.post("/api/transfers", content=content, headers=alice.headers)
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
    assert await snapshot(stack) == before


async def test_frozen_accounts_refuse_transfers_and_only_their_owner_is_told_why(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("10.00")
    _, euros = await admin.create_user(stack.store, f"eu{uuid.uuid4().hex[:8]}", "-", "EUR")
    await stack.freeze(bob.account)
    before = await snapshot(stack)
    out_of = await stack.transfer(bob, alice.account, "1.00")
    assert out_of.status_code == 422 and out_of.json()["error"] == {
        "code": "account_frozen",
        "message": "the account is frozen",
        "field": "from_account",
    }
    into = await stack.transfer(alice, bob.account, "1.00")
    elsewhere = await stack.transfer(alice, euros, "1.00")
    for r in (into, elsewhere):
        assert r.status_code == 422 and r.json()["error"] == {
            "code": "recipient_unavailable",
            "message": "this recipient cannot receive money right now",
            "field": "to_account",
        }, "frozen and another currency look the same to a sender"
    assert await snapshot(stack) == before


async def test_insufficient_funds(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    before = await snapshot(stack)
    r = await stack.transfer(alice, bob.account, "10.01")
    assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_funds"
    assert await snapshot(stack) == before


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_invalid_idempotency_keys(stack: Stack, key: str) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    headers = {**alice.headers, "Idempotency-Key": key}
    body = {"from_account": alice.account, "to_account": bob.account, "amount": "1.00"}
    try:
        r = await stack.client.post("/api/transfers", json=body, headers=headers)
    except UnicodeEncodeError:
        return  # httpx refuses to send a non-latin-1 header at all
    assert r.status_code == 422 and r.json()["error"]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/accounts"),
        ("GET", "/api/accounts/{a}"),
        ("GET", "/api/accounts/{a}/transfers"),
        ("POST", "/api/transfers"),
        ("GET", "/api/transfers/{t}"),
        ("POST", "/api/transfers/{t}/cancel"),
    ],
)
@pytest.mark.parametrize("auth", ["none", "garbage", "revoked", "basic"])
async def test_every_route_needs_a_valid_token(
    stack: Stack, method: str, path: str, auth: str
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer stl_not-a-real-token"},
        "revoked": alice.headers,
        "basic": {"Authorization": "Basic YWxpY2U6cHc="},
    }[auth]
    if auth == "revoked":
        assert (await stack.client.delete("/api/tokens", headers=alice.headers)).status_code == 204
    url = path.format(a=alice.account, t=tid)
    r = await stack.client.request(method, url, headers=headers, json={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert alice.account not in r.text
    await stack.settle_all()


async def test_others_accounts_and_transfers_are_404(stack: Stack) -> None:
    alice, bob, eve = [await stack.customer("10.00") for _ in range(3)]
    tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
    for url in (
        f"/api/accounts/{alice.account}",
        f"/api/accounts/{alice.account}/transfers",
        f"/api/transfers/{tid}",
    ):
        r = await stack.client.get(url, headers=eve.headers)
        assert r.status_code == 404, url
        assert alice.account not in r.text
    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=eve.headers)
    assert r.status_code == 404
    listed = (await stack.client.get("/api/accounts", headers=eve.headers)).json()["accounts"]
    assert [a["id"] for a in listed] == [eve.account]
    # The recipient sees the transfer, the sender too.
    for who in (alice, bob):
        assert (await stack.client.get(f"/api/transfers/{tid}", headers=who.headers)).is_success
    await stack.settle_all()


async def test_tokens_are_issued_for_the_right_password_only(stack: Stack) -> None:
    alice = await stack.customer("0", name="alice-tokens")
    good = {"username": "alice-tokens", "password": "pw-alice-tokens"}
    r = await stack.client.post("/api/tokens", json=good)
    assert r.status_code == 201 and r.json()["token"].startswith("stl_")
    token = r.json()["token"]
    assert (
        await stack.client.get("/api/accounts", headers={"Authorization": f"Bearer {token}"})
    ).json()["accounts"][0]["id"] == alice.account
    for bad in ({**good, "password": "nope"}, {**good, "username": "nobody"}):
        r = await stack.client.post("/api/tokens", json=bad)
        assert r.status_code == 401
        assert r.json()["error"]["message"] == "wrong username or password"
    stored = await stack.store.fetch_all("SELECT token_hash FROM api_tokens")
    assert all(token not in r["token_hash"] for r in stored), "tokens are stored hashed"


async def test_token_requests_share_the_login_lockout(stack: Stack) -> None:
    """Guessing a password through the API is limited like the login form, and failures
    on either count together."""
    alice = await stack.customer("0")
    wrong = {"username": alice.username, "password": "guess"}
    for _ in range(throttle.FREE_PER_ACCOUNT):
        assert (await stack.client.post("/api/tokens", json=wrong)).status_code == 401
    right = {**wrong, "password": "pw-" + alice.username}
    r = await stack.client.post("/api/tokens", json=right)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) > 0
    assert await stack.store.fetch_val("SELECT count(*) FROM api_tokens") == 1, "only alice's own"


async def test_pagination_limits_are_validated(stack: Stack) -> None:
    alice = await stack.customer("10.00")
    url = f"/api/accounts/{alice.account}/transfers"
    for params in ({"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"before": "tr_nope"}):
        r = await stack.client.get(url, params=params, headers=alice.headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"


async def test_history_pages_through_sent_and_received_in_exact_order(stack: Stack) -> None:
    alice, bob, carol = [await stack.customer() for _ in range(3)]
    plan = [(alice, bob), (bob, alice), (carol, alice), (alice, carol), (bob, carol)] * 4
    for sender, receiver in plan:
        r = await stack.transfer(sender, receiver.account, "0.01")
        assert r.status_code == 202, r.text
    # Three transfers to each created_at (in random id order), so that ties are broken by
    # id and some page boundaries fall inside a tie; the deposits keep their earlier times.
    mine = f"('{alice.account}', '{bob.account}', '{carol.account}')"
    sent = await stack.store.fetch_all(f"SELECT id FROM transfers WHERE from_account IN {mine}")
    await execute(
        stack.store,
        *(
            f"UPDATE transfers SET created_at = {2 * 10**15 + (i * 7 % len(sent)) // 3}"
            f" WHERE id = '{row}'"
            for i, row in enumerate(sorted(r["id"] for r in sent))
        ),
    )
    rows = await stack.store.fetch_all(
        "SELECT id, from_account, to_account, created_at FROM transfers"
        f" WHERE from_account = '{alice.account}' OR to_account = '{alice.account}'"
    )
    # Python's order of the ids is the databases' (SQLite BINARY, PostgreSQL C collation).
    expected = [
        r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    ]
    assert {r["from_account"] == alice.account for r in rows} == {True, False}
    assert len({r["created_at"] for r in rows}) < len(rows), "ties were constructed"

    seen: list[str] = []
    pages = 0
    params = {"limit": "4"}
    while True:
        r = await stack.client.get(
            f"/api/accounts/{alice.account}/transfers", params=params, headers=alice.headers
        )
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [t["id"] for t in page["transfers"]]
        pages += 1
        if page["next_before"] is None:
            break
        assert page["next_before"] == seen[-1] and len(page["transfers"]) == 4
        params["before"] = page["next_before"]
    assert seen == expected and pages == -(-len(expected) // 4)

    # The account page shows the same history, newest first.
    async with browser(stack) as client:
        await login(client, alice)
        html = (await client.get(f"/accounts/{alice.account}")).text
    assert re.findall(r'<li id="row-(tr_[^"]+)"', html) == expected[:50]


async def test_unknown_routes_and_methods_answer_json_errors(stack: Stack) -> None:
    r = await stack.client.get("/api/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await stack.client.put("/api/transfers")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"
    r = await stack.client.get("/api/accounts")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_health_readiness_schema_and_metrics(stack: Stack) -> None:
    assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    schema = (await stack.client.get("/openapi.json")).json()
    assert "/api/transfers" in schema["paths"] and schema["openapi"].startswith("3.")
    metrics = await stack.client.get("/metrics")
    assert metrics.status_code == 200 and "settle_rejections" in metrics.text


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a /metrics page (0 when it is not there yet)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_metrics_and_one_log_line_per_request_and_settlement(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    before = (await stack.client.get("/metrics")).text
    caplog.set_level(logging.INFO)
    async with subscribe(stack.base_url, alice, await seq_of(stack, alice)) as ws:
        r = await stack.transfer(alice, bob.account, "1.00", key="metrics-1")
        tid = r.json()["id"]
        assert (await recv(ws))["type"] == "transfer.pending"
        # A replay is no new acceptance.
        await stack.transfer(alice, bob.account, "1.00", key="metrics-1")
        live = (await stack.client.get("/metrics")).text
        assert sample(live, "settle_websocket_connections") == 1
    assert sample(live, "settle_transfers_accepted_total") == 1
    assert sample(live, "settle_accept_seconds_count") == 1
    assert sample(live, "settle_transfers_pending") == 1
    assert sample(live, "settle_queue_depth") == 1
    assert sample(live, "settle_ws_delivery_lag_seconds_count") >= 1
    await stack.settle_all()
    after = (await stack.client.get("/metrics")).text
    for name, labels in [
        ("settle_transfers_settled_total", {"outcome": "completed"}),
        ("settle_consistency_window_seconds_count", {}),
    ]:
        assert sample(after, name, **labels) - sample(before, name, **labels) == 1, name
    assert sample(after, "settle_transfers_pending") == 0

    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "method=POST path=/api/transfers status=202" in line and f"transfer={tid}" in line
        for line in lines
    ), lines
    assert any(f"settled transfer={tid} outcome=completed" in line for line in lines), lines
    assert not any(alice.token in line for line in lines), "tokens are never logged"


async def test_too_many_transfers_per_second_are_429_with_retry_after_and_change_nothing(
    settings: Settings, store: Store
) -> None:
    limit = 3
    async with server_stack(settings, store, transfer_rate=limit) as stack:
        bob = await stack.customer("0")
        # The window is one wall-clock second: a burst that straddles two windows proves
        # nothing, so try again (with a fresh sender) until one burst fits in one.
        for _ in range(5):
            alice = await stack.customer("10.00")
            window = int(time.time())
            accepted = [await stack.transfer(alice, bob.account, "1.00") for _ in range(limit)]
            before = await snapshot(stack)
            refused = await stack.transfer(alice, bob.account, "1.00")
            if int(time.time()) == window:
                break
        assert [r.status_code for r in accepted] == [202] * limit
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.headers["Retry-After"] == "1"
        assert await snapshot(stack) == before
        await stack.settle_all()


async def test_a_burst_sent_at_once_is_limited_exactly(settings: Settings, store: Store) -> None:
    """Checks that arrive together share one Redis round trip; each is still counted."""
    limit = 4
    async with server_stack(settings, store, transfer_rate=limit) as stack:
        bob = await stack.customer("0")
        for _ in range(5):
            alice = await stack.customer("100.00")
            window = int(time.time())
            burst = await asyncio.gather(
                *(stack.transfer(alice, bob.account, "1.00") for _ in range(3 * limit))
            )
            if int(time.time()) == window:
                break
        codes = sorted(r.status_code for r in burst)
        assert codes == [202] * limit + [429] * (2 * limit)
        await stack.settle_all()


async def test_a_page_limit_of_thousands_of_digits_is_422_not_500(stack: Stack) -> None:
    alice = await stack.customer("1.00")
    r = await stack.client.get(
        f"/api/accounts/{alice.account}/transfers",
        params={"limit": "9" * 5000},
        headers=alice.headers,
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "limit"


async def test_a_replay_is_never_refused_by_the_rate_limit(
    settings: Settings, store: Store
) -> None:
    """A client resending after an outage, with the same keys, gets its answers back even
    when it sends them faster than the limit: replays send nothing."""
    limit = 2
    async with server_stack(settings, store, transfer_rate=limit) as stack:
        alice, bob = await stack.customer("10.00"), await stack.customer("0")
        firsts = [await stack.transfer(alice, bob.account, "1.00", key=f"k{i}") for i in range(2)]
        assert [r.status_code for r in firsts] == [202, 202]
        replays = await asyncio.gather(
            *(stack.transfer(alice, bob.account, "1.00", key=f"k{i % 2}") for i in range(8))
        )
        assert {r.status_code for r in replays} == {202}
        assert {r.headers["Idempotent-Replayed"] for r in replays} == {"true"}
        assert {r.json()["id"] for r in replays} == {r.json()["id"] for r in firsts}
        fresh = await asyncio.gather(
            *(stack.transfer(alice, bob.account, "1.00", key=f"n{i}") for i in range(3 * limit))
        )
        assert 429 in {r.status_code for r in fresh}, "new transfers are still limited"
        await stack.settle_all()


async def test_previews_are_limited_per_user_like_sends(settings: Settings, store: Store) -> None:
    limit = 3
    async with server_stack(settings, store, transfer_rate=limit) as stack:
        alice, bob = await stack.customer("10.00"), await stack.customer("0")
        body = {"from_account": alice.account, "to_account": bob.account, "amount": "1.00"}
        burst = await asyncio.gather(
            *(
                stack.client.post("/api/transfers/preview", json=body, headers=alice.headers)
                for _ in range(4 * limit)
            )
        )
        codes = [r.status_code for r in burst]
        assert codes.count(429) >= limit and set(codes) == {200, 429}
        refused = next(r for r in burst if r.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limited" and refused.headers["Retry-After"]
