"""Property-based fuzzing (hypothesis) of what the JSON-API fuzzer (schemathesis, in
test_openapi_fuzz.py) does not reach: the HTML forms, the login form, page paths, and the
WebSocket's query string and frames. Values are hostile: lone surrogates, invalid UTF-8,
NUL and other control characters, numbers of thousands of digits, huge and empty fields.

Whatever comes in, the server answers (no dropped connection) with less than 500, and a
WebSocket it refuses or stops is closed with a code, never 1011 (internal error)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from server.domain import errors, statements
from tests.conftest import Customer, Stack
from tests.test_sessions import csrf_of

EXAMPLES = 80
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Around Python's 4,300-digit limit on int(), where amounts used to break.
huge_numbers = st.sampled_from([20, 4300, 4301, 5001]).map(lambda n: "9" * n)
# Text of every kind, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
hostile = st.one_of(
    any_text,
    st.sampled_from(["", " ", "\x00", "\ud800", "\udfff", "5\x00", "\u202e", "\r\n", "%00"]),
    huge_numbers,
    st.integers(1, 6000).map(lambda n: "1." + "0" * n),
    st.sampled_from(["12.34", " 5.00 ", "1,000.00", "$5", "-5", "1e309", "0.001", "NaN"]),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.integers(300, 70_000).map(lambda n: "k" * n),
)


def encode(value: str) -> bytes:
    """As a browser or a careless client would put it on the wire: UTF-8, surrogates and
    all (which makes invalid UTF-8)."""
    return value.encode("utf-8", "surrogatepass")


def form_body(fields: dict[str, str]) -> bytes:
    return b"&".join(
        quote_from_bytes(encode(k)).encode() + b"=" + quote_from_bytes(encode(v)).encode()
        for k, v in fields.items()
    )


def query_string(fields: dict[str, str]) -> str:
    return form_body(fields).decode()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])


async def session(stack: Stack, who: Customer) -> tuple[dict[str, str], str]:
    """A logged-in browser's cookies and CSRF token."""
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        page = await client.get("/login")
        form = {"username": who.username, "password": "pw-" + who.username}
        r = await client.post("/login", data={**form, "csrf_token": csrf_of(page.text)})
        assert r.status_code == 303
        page = await client.get("/accounts")
        return dict(client.cookies), csrf_of(page.text)


async def test_the_send_form_never_fails_on_hostile_input(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    cookies, csrf = await session(stack, alice)

    @FUZZ
    @given(
        to=st.one_of(hostile, st.just(bob.username), st.just(bob.account)),
        amount=st.one_of(hostile, huge_numbers),
        memo=hostile,
        key=hostile,
        htmx=st.booleans(),
    )
    def send(to: str, amount: str, memo: str, key: str, htmx: bool) -> None:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if htmx:
            headers.update({"HX-Request": "true", "X-CSRF-Token": csrf})
        fields = {"csrf_token": csrf, "to": to, "amount": amount, "memo": memo}
        body = form_body({**fields, "idempotency_key": key})
        with httpx.Client(base_url=stack.base_url, cookies=cookies) as client:
            check(
                client.post(f"/accounts/{alice.account}/transfers", content=body, headers=headers)
            )

    await asyncio.to_thread(send)
    await stack.settle_all()


async def test_the_login_form_never_fails_on_hostile_input(stack: Stack) -> None:
    alice = await stack.customer("0")

    @FUZZ
    @given(username=st.one_of(hostile, st.just(alice.username)), password=hostile)
    def log_in(username: str, password: str) -> None:
        with httpx.Client(base_url=stack.base_url) as client:
            token = csrf_of(client.get("/login").text)
            fields = {"csrf_token": token, "username": username, "password": password}
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            check(client.post("/login", content=form_body(fields), headers=headers))

    await asyncio.to_thread(log_in)


async def test_page_paths_never_fail_on_hostile_ids(stack: Stack) -> None:
    alice = await stack.customer("10.00")
    cookies, csrf = await session(stack, alice)

    @FUZZ
    @given(
        # Cut to what fits a URL (httpx's limit); longer ones are the 431 of test_protocol.
        value=hostile.map(lambda v: v[:2000]),
        path=st.sampled_from(
            ["/accounts/{}", "/accounts/{}/history", "/transfers/{}", "/transfers/{}/cancel"]
        ),
    )
    def visit(value: str, path: str) -> None:
        url = path.format(quote_from_bytes(encode(value)) or "x")
        with httpx.Client(base_url=stack.base_url, cookies=cookies) as client:
            if url.endswith("/cancel"):
                check(client.post(url, data={"csrf_token": csrf}))
            else:
                check(client.get(url))

    await asyncio.to_thread(visit)


# A frame's payload: text, bytes (a binary frame), or bytes sent as a text frame (most
# of them invalid UTF-8).
frames = st.lists(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.tuples(st.just("text"), st.binary(max_size=50)),
        st.integers(4000, 9000).map(lambda n: "x" * n),
    ),
    max_size=4,
)


async def test_the_stream_never_fails_on_hostile_queries_or_frames(stack: Stack) -> None:
    alice = await stack.customer("10.00")
    ws_base = "ws" + stack.base_url.removeprefix("http")

    @FUZZ
    @given(
        account=st.one_of(hostile, st.just(alice.account)),
        since=st.one_of(hostile, st.integers(-5, 10**30).map(str)),
        extra=st.dictionaries(hostile, hostile, max_size=3),
        sent=frames,
    )
    def subscribe(account: str, since: str, extra: dict[str, str], sent: list[Any]) -> None:
        params = {"account": account, "since": since, "fragments": "1", **extra}
        query = form_body(params).decode()
        try:
            ws = connect(f"{ws_base}/ws?{query}", additional_headers=alice.headers, open_timeout=10)
        except InvalidStatus as exc:
            assert exc.response.status_code < 500, exc.response.status_code
            return
        with ws, contextlib.suppress(ConnectionClosed):
            for frame in sent:
                if isinstance(frame, tuple):
                    ws.send(frame[1], text=True)
                else:
                    ws.send(frame)
            # The server closes, or stays quiet (or sends events) until we do.
            with contextlib.suppress(TimeoutError):
                while True:
                    ws.recv(timeout=0.05)
        code, received = ws.close_code, ws.protocol.close_rcvd
        assert code != 1011, f"the server failed on this input: {received}"
        if received is None:
            assert code in (1000, 1005, None), f"dropped without a close frame ({code})"

    await asyncio.to_thread(subscribe)


def test_the_hostile_strategy_reaches_what_broke_before() -> None:
    """The classes of input this suite must keep trying (issue 12): each is drawn."""
    found: dict[str, bool] = dict.fromkeys(["surrogate", "nul", "control", "digits"], False)

    @settings(max_examples=300, derandomize=True, database=None)
    @given(hostile)
    def draw(value: str) -> None:
        found["surrogate"] |= bool(re.search("[\ud800-\udfff]", value))
        found["nul"] |= "\x00" in value
        found["control"] |= bool(re.search("[\x01-\x1f]", value))
        found["digits"] |= len(value) > 4300 and value.strip("9") == ""

    draw()
    assert all(found.values()), found


# Instants at the edges of what datetime holds, with every offset a client may write.
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda m: "Z" if m == 0 else f"{'+' if m > 0 else '-'}{abs(m) // 60:02d}:{abs(m) % 60:02d}"
)
moments = st.one_of(
    st.datetimes(max_value=datetime(1, 1, 3)),
    st.datetimes(min_value=datetime(9999, 12, 29)),
    st.datetimes(),
)
EARLY, LATE = "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"
instants = st.one_of(
    st.builds(lambda d, o: d.isoformat() + o, moments, offsets),
    hostile.map(lambda v: v[:200]),
)


async def test_instants_and_ranges_never_fail_and_statements_are_whole(stack: Stack) -> None:
    """Balances at a time and statements (JSON and CSV) over instants at the ends of the
    calendar, in every offset: each answer is 200 with a whole body, or 422 naming the
    field; never a 500, never a body cut short."""
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
    await stack.settle_all()
    base = f"/api/accounts/{alice.account}"

    @FUZZ
    @given(at=instants, start=instants, end=instants, csv=st.booleans())
    # The two that answered 500 (and a JSON statement cut short) before they were bounded.
    @example(at=EARLY, start=EARLY, end="2026-01-01T00:00:00Z", csv=False)
    @example(at=LATE, start="2026-01-01T00:00:00Z", end=LATE, csv=True)
    def ask(at: str, start: str, end: str, csv: bool) -> None:
        with httpx.Client(base_url=stack.base_url, headers=alice.headers) as client:
            balance = client.get(f"{base}/balance?{query_string({'at': at})}")
            assert balance.status_code in (200, 422), balance.text
            if balance.status_code == 422:
                assert balance.json()["error"]["field"] == "at"
            query = {"from": start, "to": end, **({"format": "csv"} if csv else {})}
            sheet = client.get(f"{base}/statement?{query_string(query)}")
            assert sheet.status_code in (200, 422), sheet.text
            if sheet.status_code == 422:
                assert sheet.json()["error"]["field"] in ("from", "to")
            elif not csv:
                assert sheet.json()["closing_balance"]  # the whole object, parsed

    await asyncio.to_thread(ask)


def test_the_edges_of_the_calendar_are_refused_by_name() -> None:
    """Valid ISO 8601 instants that fall outside years 1 to 9999 once in UTC."""
    for value in (EARLY, LATE):
        try:
            statements.instant(value, "at")
        except errors.InvalidField as exc:
            assert exc.field == "at" and "9999" in exc.message
        else:
            raise AssertionError(value)
