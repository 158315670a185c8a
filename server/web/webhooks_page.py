"""The Webhooks page: a person's endpoints, each with its recent deliveries and their
outcome (asked again every 2 s while one is pending, so it shows without a reload);
adding and deleting endpoints, "Enable again", "Send test event", "Retry" and "Rotate
secret". Every form carries the session's CSRF token and works without JavaScript (post, then
redirect; a new secret is shown once, on the answer to the post that made it). The
work is the API's (``server.web.webhooks_api``): one rule for both."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.domain import errors, webhooks, wire
from server.domain.webhooks import DeliveryStatus
from server.store import webhooks as hooks
from server.web import forms, fragments, sessions, webhooks_api
from server.web.services import services
from server.web.sessions import Session

RECENT = 10
FIELDS = ("url", "events", "description")


async def _render(
    request: Request,
    session: Session,
    status_code: int = 200,
    revealed: wire.WebhookJSON | None = None,
    problem: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    store = services(request).store
    listed: list[dict[str, Any]] = []
    for endpoint in await hooks.endpoints_of(store, session.user_id):
        recent = await hooks.deliveries(store, session.user_id, endpoint.id, RECENT, None)
        listed.append({"endpoint": endpoint, "deliveries": [wire.delivery(d) for d in recent]})
    waiting = any(d.status is DeliveryStatus.PENDING for item in listed for d in item["deliveries"])
    return fragments.render(
        request,
        "webhooks.html",
        status_code,
        session=session,
        endpoints=listed,
        waiting=waiting,
        revealed=revealed,
        problem=problem,
        form=form or {"url": "", "events": "", "description": ""},
        most=services(request).settings.webhook_max_endpoints,
    )


async def page(request: Request) -> Response:
    session = await sessions.require(request)
    return await _render(request, session)


async def _posted(request: Request) -> tuple[Session, FormData]:
    session = await sessions.require(request)
    data = await forms.read(request)
    sessions.check_csrf(request, session.csrf_token, data)
    return session, data


async def create(request: Request) -> Response:
    session, data = await _posted(request)
    form = {name: str(data.get(name, ""))[: webhooks.MAX_URL] for name in FIELDS}
    try:
        typed = {name: forms.field(data, name, webhooks.MAX_URL) for name in FIELDS}
        events = typed["events"].replace(",", " ").split()
        fields = {
            "url": typed["url"],
            "events": events or None,
            "description": typed["description"],
        }
        made = await webhooks_api.create_endpoint(services(request), session.user_id, fields)
    except (errors.InvalidField, webhooks.WebhookURLRefused, webhooks.TooManyWebhooks) as exc:
        return await _render(request, session, 422, problem=exc.message, form=form)
    return await _render(request, session, 201, revealed=made)


async def delete(request: Request) -> Response:
    session, _ = await _posted(request)
    await webhooks_api.delete(services(request), session.user_id, request.path_params["webhook_id"])
    return RedirectResponse("/webhooks", status_code=303)


async def rotate(request: Request) -> Response:
    session, _ = await _posted(request)
    rotated = await webhooks_api.rotate(
        services(request), session.user_id, request.path_params["webhook_id"]
    )
    return await _render(request, session, revealed=rotated)


async def enable(request: Request) -> Response:
    session, _ = await _posted(request)
    await webhooks_api.enable(services(request), session.user_id, request.path_params["webhook_id"])
    return RedirectResponse("/webhooks", status_code=303)


async def test(request: Request) -> Response:
    session, _ = await _posted(request)
    await webhooks_api.send_test(
        services(request), session.user_id, request.path_params["webhook_id"]
    )
    return RedirectResponse("/webhooks", status_code=303)


async def retry(request: Request) -> Response:
    session, _ = await _posted(request)
    await webhooks_api.retry(
        services(request),
        session.user_id,
        request.path_params["webhook_id"],
        request.path_params["delivery_id"],
    )
    return RedirectResponse("/webhooks", status_code=303)


routes = [
    Route("/webhooks", page, methods=["GET"]),
    Route("/webhooks", create, methods=["POST"]),
    Route("/webhooks/{webhook_id}/delete", delete, methods=["POST"]),
    Route("/webhooks/{webhook_id}/rotate-secret", rotate, methods=["POST"]),
    Route("/webhooks/{webhook_id}/enable", enable, methods=["POST"]),
    Route("/webhooks/{webhook_id}/test", test, methods=["POST"]),
    Route("/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", retry, methods=["POST"]),
]
