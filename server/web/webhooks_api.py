"""The webhooks API: a user's endpoints, their delivery log, retries and test events.
Handlers parse (``server.web.fields``), authenticate, check a URL as a delivery would
(``server.live.webhook_http``: refused before anything is contacted), and call the
store (``server.store.webhooks``, where ownership is decided: others' are 404)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.domain import errors, webhooks, wire
from server.domain.clock import now_us
from server.domain.webhooks import DeliveryStatus
from server.live import webhook_http, webhook_queue
from server.store import webhooks as hooks
from server.web.api import BEFORE, BODY_REFUSALS, LIMIT, current_user
from server.web.fields import Answer, Body, Endpoint, Operation, Text, read_json
from server.web.responses import JSONResponse
from server.web.services import Services, services


@dataclasses.dataclass(frozen=True)
class Events:
    """An endpoint's event filter: a list of event types or ``*`` patterns."""

    name: str = "events"
    required: bool = False

    def parse(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        return webhooks.patterns(data.get(self.name))

    def schema(self) -> dict[str, Any]:
        return {
            "type": ["array", "null"],
            "description": "Event types or * patterns (transfer.*, account.*); default all",
            "minItems": 1,
            "maxItems": webhooks.MAX_PATTERNS,
            "items": {
                "type": "string",
                "maxLength": webhooks.MAX_PATTERN,
                "pattern": r"^[a-z*][a-z0-9_.*]*$",
            },
        }


NEW_WEBHOOK = Body(
    [
        Text("url", webhooks.MAX_URL, description="https:// (where settle POSTs the events)"),
        Events(),
        Text("description", 200, required=False),
    ],
    name="NewWebhook",
)
NOT_FOUND = (errors.Unauthorized, webhooks.WebhookNotFound)


async def create_endpoint(app: Services, user_id: str, data: Mapping[str, Any]) -> wire.WebhookJSON:
    """An endpoint from a request's fields (the API's and the page's), with its secret."""
    fields = NEW_WEBHOOK.parse(data)
    await webhook_http.check(fields["url"], app.settings)
    secret, at = webhooks.new_secret(), now_us()
    most = app.settings.webhook_max_endpoints
    made = await app.store.transaction(
        lambda conn: hooks.create(
            conn, user_id, fields["url"], fields["description"], fields["events"], secret, at, most
        )
    )
    await webhook_queue.set_enabled(app.redis, app.settings, True)
    return wire.webhook(made, with_secret=True)


async def send_test(app: Services, user_id: str, endpoint_id: str) -> str:
    at = now_us()
    delivery_id = await app.store.transaction(
        lambda conn: hooks.add_test(conn, user_id, endpoint_id, at, wire.iso(at))
    )
    await webhook_queue.poke(app.redis, app.settings, [endpoint_id])
    return delivery_id


async def retry(app: Services, user_id: str, endpoint_id: str, delivery_id: str) -> None:
    at = now_us()
    await app.store.transaction(
        lambda conn: hooks.retry_now(conn, user_id, endpoint_id, delivery_id, at)
    )
    await webhook_queue.poke(app.redis, app.settings, [endpoint_id])


async def rotate(app: Services, user_id: str, endpoint_id: str) -> wire.WebhookJSON:
    secret, at = webhooks.new_secret(), now_us()
    rotated = await app.store.transaction(
        lambda conn: hooks.rotate(conn, user_id, endpoint_id, secret, at)
    )
    return wire.webhook(rotated, with_secret=True)


async def enable(app: Services, user_id: str, endpoint_id: str) -> wire.WebhookJSON:
    enabled = await app.store.transaction(lambda conn: hooks.enable(conn, user_id, endpoint_id))
    await webhook_queue.set_enabled(app.redis, app.settings, True)
    await webhook_queue.poke(app.redis, app.settings, [endpoint_id])
    return wire.webhook(enabled)


async def delete(app: Services, user_id: str, endpoint_id: str) -> None:
    await app.store.transaction(lambda conn: hooks.delete(conn, user_id, endpoint_id))


async def post_webhook(request: Request) -> Response:
    user = await current_user(request)
    made = await create_endpoint(services(request), user.id, await read_json(request))
    return JSONResponse(made, status_code=201)


async def list_webhooks(request: Request) -> Response:
    user = await current_user(request)
    found = await hooks.endpoints_of(services(request).store, user.id)
    return JSONResponse(wire.WebhooksJSON([wire.webhook(e) for e in found]))


async def get_webhook(request: Request) -> Response:
    user = await current_user(request)
    found = await hooks.owned(services(request).store, user.id, request.path_params["webhook_id"])
    return JSONResponse(wire.webhook(found))


async def delete_webhook(request: Request) -> Response:
    user = await current_user(request)
    await delete(services(request), user.id, request.path_params["webhook_id"])
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    user = await current_user(request)
    rotated = await rotate(services(request), user.id, request.path_params["webhook_id"])
    return JSONResponse(rotated)


async def enable_webhook(request: Request) -> Response:
    user = await current_user(request)
    enabled = await enable(services(request), user.id, request.path_params["webhook_id"])
    return JSONResponse(enabled)


async def list_deliveries(request: Request) -> Response:
    user = await current_user(request)
    limit = LIMIT.parse(request)
    found = await hooks.deliveries(
        services(request).store,
        user.id,
        request.path_params["webhook_id"],
        limit,
        BEFORE.parse(request),
    )
    next_before = found[-1].id if len(found) == limit else None
    return JSONResponse(wire.DeliveriesPageJSON([wire.delivery(d) for d in found], next_before))


async def retry_delivery(request: Request) -> Response:
    user = await current_user(request)
    delivery_id = request.path_params["delivery_id"]
    await retry(services(request), user.id, request.path_params["webhook_id"], delivery_id)
    return JSONResponse(wire.DeliveryQueuedJSON(delivery_id, DeliveryStatus.PENDING), 202)


async def test_webhook(request: Request) -> Response:
    user = await current_user(request)
    delivery_id = await send_test(services(request), user.id, request.path_params["webhook_id"])
    return JSONResponse(wire.DeliveryQueuedJSON(delivery_id, DeliveryStatus.PENDING), 202)


ENDPOINTS = [
    Endpoint(
        "/api/webhooks",
        "POST",
        post_webhook,
        Operation(
            "Add a webhook endpoint: settle POSTs it the caller's accounts' events, signed"
            " (Standard Webhooks); the secret is shown only here and on rotation",
            Answer(201, wire.WebhookJSON, "the endpoint, with its secret"),
            body=NEW_WEBHOOK,
            refusals=(
                *BODY_REFUSALS,
                errors.Unauthorized,
                webhooks.WebhookURLRefused,
                webhooks.TooManyWebhooks,
            ),
        ),
    ),
    Endpoint(
        "/api/webhooks",
        "GET",
        list_webhooks,
        Operation(
            "The caller's webhook endpoints (without secrets)",
            Answer(200, wire.WebhooksJSON, "endpoints"),
            refusals=(errors.Unauthorized,),
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}",
        "GET",
        get_webhook,
        Operation(
            "One of the caller's webhook endpoints",
            Answer(200, wire.WebhookJSON, "the endpoint"),
            refusals=NOT_FOUND,
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}",
        "DELETE",
        delete_webhook,
        Operation(
            "Delete a webhook endpoint and its delivery log",
            Answer(204, None, "deleted"),
            refusals=NOT_FOUND,
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}/rotate-secret",
        "POST",
        rotate_secret,
        Operation(
            "A new signing secret; the old one keeps signing beside it for 24 hours",
            Answer(200, wire.WebhookJSON, "the endpoint, with its new secret"),
            refusals=NOT_FOUND,
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}/enable",
        "POST",
        enable_webhook,
        Operation(
            "Enable an endpoint again (one disabled after failing): what its accounts did"
            " while it was disabled is delivered next, in order",
            Answer(200, wire.WebhookJSON, "the endpoint, enabled"),
            refusals=NOT_FOUND,
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}/deliveries",
        "GET",
        list_deliveries,
        Operation(
            "The endpoint's deliveries, newest first, each with its attempts",
            Answer(200, wire.DeliveriesPageJSON, "a page of deliveries"),
            query=(LIMIT, BEFORE),
            refusals=(*NOT_FOUND, errors.InvalidField),
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        "POST",
        retry_delivery,
        Operation(
            "Deliver this again now (also one whose retries were spent)",
            Answer(202, wire.DeliveryQueuedJSON, "queued"),
            refusals=(*NOT_FOUND, webhooks.DeliveryNotFound),
        ),
    ),
    Endpoint(
        "/api/webhooks/{webhook_id}/test",
        "POST",
        test_webhook,
        Operation(
            "Send a webhook.test event (whatever the endpoint's event filter)",
            Answer(202, wire.DeliveryQueuedJSON, "queued"),
            refusals=NOT_FOUND,
        ),
    ),
]
routes = [e.route() for e in ENDPOINTS]
