"""/openapi.json describes the API exactly. From the served schema schemathesis makes each
operation's coverage cases (every boundary value and kind of invalid input) and generated
requests, valid and invalid, and sends them over real HTTP to a running server as a real
user pointed at real data, with made-up credentials or with none. Every answer must be a
status the schema declares for the operation (never a 5xx), with the declared content
type, headers and body; invalid requests must be refused with a 4xx."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.settings import Settings
from server.store import accounts as admin
from server.web import api, passkeys_api, webhooks_api
from server.web.openapi import SCHEMA
from tests.conftest import Customer, Stack, fund

# Generated requests per operation (derandomized: CI sends the same ones every run), after
# the coverage cases; the whole module takes about 20 s on two cores.
EXAMPLES = 100

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

OPERATIONS = sorted(
    (path, method.upper()) for path, item in SCHEMA["paths"].items() for method in item
)


def test_the_schema_is_valid_openapi_and_documents_every_api_route() -> None:
    schemathesis.openapi.from_dict(SCHEMA).validate()
    every = [*api.routes, *webhooks_api.routes, *passkeys_api.routes]
    routes = {(r.path, m) for r in every for m in (r.methods or ()) if m != "HEAD"}
    assert routes == {(p, m) for p, m in OPERATIONS if p.startswith("/api/")}


@pytest.fixture(name="settings")
def low_rate_settings(settings: Settings) -> Settings:
    # Low enough that the generated requests to POST /api/transfers usually also meet 429
    # and its Retry-After (the lockout of POST /api/tokens always does), and high enough
    # that the coverage cases, split between two users, never do.
    return dataclasses.replace(settings, transfer_rate=30)


@dataclasses.dataclass
class World:
    """A user's real data, others' data they must not reach, and what to send it with.

    The id pools also hold an id no row can have, with a NUL (which PostgreSQL text cannot
    even be compared with); each pool ends with None: keep the generated value."""

    user: Customer
    password: str
    accounts: list[str | None]
    senders: list[str | None]
    recipients: list[str | None]
    transfers: list[str | None]
    keys: list[str | None]


async def world(stack: Stack) -> World:
    user = await stack.customer("1000.00")
    # Enough that most generated amounts (up to 1,000,000,000.00) can be accepted.
    await fund(stack.store, user.account, 10**14)
    other = await stack.customer("1000.00")
    third = await stack.customer("0")
    _, euro = await admin.create_user(stack.store, f"euro{uuid.uuid4().hex[:8]}", "-", "EUR")
    frozen = await stack.customer("0")
    await stack.freeze(frozen.account)

    async def send(who: Customer, to: str) -> str:
        r = await stack.transfer(who, to, "1.00")
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    completed = await send(user, other.account)
    await stack.settle_all()
    cancelled = await send(user, other.account)
    r = await stack.client.post(f"/api/transfers/{cancelled}/cancel", headers=user.headers)
    assert r.status_code == 200, r.text
    pending = [await send(user, other.account) for _ in range(3)]
    received = await send(other, user.account)  # visible, but not the user's to cancel
    foreign = await send(other, third.account)
    return World(
        user=user,
        password="pw-" + user.username,
        accounts=[user.account, other.account, euro, frozen.account, "acc_\x00", None],
        senders=[user.account, other.account, None],
        recipients=[other.account, user.account, euro, frozen.account, "acc_\x00", None],
        transfers=[*pending, completed, cancelled, received, foreign, "tr_\x00", None],
        keys=[None, None, "key-1", "key-2"],
    )


def strategy(
    operation: APIOperation[Any, Any, Any, Any], raw: dict[str, Any], bearer: dict[str, str]
) -> st.SearchStrategy[Case[Any]]:
    """Requests as the user (valid, and invalid where the operation takes any input), and
    with whatever credentials schemathesis makes up: none, malformed, or never issued."""
    as_user = [operation.as_strategy(GenerationMode.POSITIVE, headers=bearer)] * 3
    if "requestBody" in raw or any(p["in"] != "path" for p in raw.get("parameters", ())):
        as_user += [operation.as_strategy(GenerationMode.NEGATIVE, headers=bearer)] * 2
    anonymous = []
    if "security" in raw:
        anonymous = [operation.as_strategy(mode) for mode in GenerationMode]
    return st.sampled_from(as_user + anonymous).flatmap(lambda s: s)


Choose = Callable[[list[str | None]], str | None]


def use_real_data(case: Case[Any], w: World, choose: Choose, keys: list[str | None]) -> None:
    """Point a generated request at real data, to get past the lookups."""

    def pick(container: Any, name: str, pool: list[str | None], path: bool = False) -> None:
        value = choose(pool)
        if isinstance(container, dict | CaseInsensitiveDict) and name in container and value:
            # Generated path values come percent-encoded; so must these.
            container[name] = quote(value, safe="") if path else value

    pick(case.path_parameters, "account_id", w.accounts, path=True)
    pick(case.path_parameters, "transfer_id", w.transfers, path=True)
    pick(case.query, "before", w.transfers)
    # A key schemathesis made invalid stays, to be refused.
    if case.meta is None or not case.meta.is_negative_at(ParameterLocation.HEADER):
        pick(case.headers, "Idempotency-Key", keys)
    pick(case.body, "from_account", w.senders)
    pick(case.body, "to_account", w.recipients)
    pick(case.body, "username", [w.user.username, None])
    pick(case.body, "password", [w.password, None])
    # Reading meta checks the edited parts against the schema again: an edit can make an
    # invalid request valid, or (the NUL ids) a valid one invalid; the checks go by that.
    assert case.meta is not None


def fuzz(base_url: str, raw: dict[str, Any], path: str, method: str, worlds: list[World]) -> None:
    """Send one operation schemathesis' coverage cases, then EXAMPLES generated ones.

    The coverage cases alternate between two users, so that neither runs into the transfer
    rate limit, whose 429 would hide what a case shows; the generated ones, all from one
    user, do run into it."""
    schema = schemathesis.openapi.from_dict(raw)
    operation = schema[path][method]
    with requests.Session() as session:
        session.trust_env = False  # no proxy between the test and 127.0.0.1

        def login(w: World) -> str:
            body = {"username": w.user.username, "password": w.password}
            r = session.post(base_url + "/api/tokens", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["token"])

        def send(
            case: Case[Any], w: World, as_user: bool, choose: Choose, keys: list[str | None]
        ) -> None:
            headers = None
            if as_user:
                # Revoking spends the token: log in again for each revocation. Passed
                # explicitly too, so that ignored_auth knows it is real and probes without it.
                token = login(w) if method == "DELETE" else w.user.token
                headers = {"Authorization": f"Bearer {token}"}
                case.headers.update(headers)
            use_real_data(case, w, choose, keys)
            case.call_and_validate(
                base_url=base_url, session=session, headers=headers, checks=CHECKS
            )

        # Each boundary value and each kind of invalid input in turn, other methods and media
        # types, no credentials. Each with a key of its own: a reused key is refused before
        # the rest of the request is looked at.
        coverage = schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation),
        )
        for n, case in enumerate(coverage):
            as_user = "Authorization" in case.headers
            send(case, worlds[n % 2], as_user, lambda pool: pool[0], [f"coverage-{n}"])

        generating = worlds[0]
        bearer = {"Authorization": f"Bearer {generating.user.token}"}

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            # Slow because each example is a real request; filtering: a negative case must
            # find something to break, and schemathesis rejects the attempts that do not.
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=strategy(operation, raw["paths"][path][method.lower()], bearer), data=st.data())
        def generated(case: Case[Any], data: st.DataObject) -> None:
            def choose(pool: list[str | None]) -> str | None:
                value: str | None = data.draw(st.sampled_from(pool))
                return value

            as_user = case.headers.get("Authorization") == bearer["Authorization"]
            send(case, generating, as_user, choose, generating.keys)

        generated()


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
async def test_operation_answers_as_documented(stack: Stack, path: str, method: str) -> None:
    worlds = [await world(stack), await world(stack)]
    r = await stack.client.get("/openapi.json")
    assert r.status_code == 200
    # The server runs on this event loop: fuzz from a thread so it keeps answering.
    await asyncio.to_thread(fuzz, stack.base_url, r.json(), path, method, worlds)
