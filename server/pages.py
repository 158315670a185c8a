"""The HTML pages: dashboard, account (balance, transfer form, live history) and transfer
detail. Login and logout are in ``server.login``; errors render in ``server.responses``.

Handlers stay thin like the API's: they parse the form, call the same use cases
(``server.transfers``) and reads (``server.reads``), and render. Every form works
without JavaScript (post, then redirect); with htmx the same endpoints answer with
fragments instead.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server import errors, fragments, login, metrics, reads, sessions, transfers, views
from server.events import Event
from server.services import services
from server.sessions import Session

HISTORY_LIMIT = 50
# Which form field an error of each request field belongs to; others show on the form.
FORM_FIELDS = {"to_account": "to", "amount": "amount", "memo": "memo"}
# What the form says instead of the API's wording, where the form's user needs another.
FORM_MESSAGES: dict[type[errors.SettleError], str] = {
    errors.IdempotencyKeyReused: (
        "this form was already sent with other details; check and send again"
    ),
}


async def dashboard(request: Request) -> Response:
    session = await sessions.require(request)
    rows = await reads.accounts_of(services(request).store, session.user_id)
    owned = [views.account_of(r, session.username) for r in rows]
    return fragments.render(request, "dashboard.html", session=session, accounts=owned)


async def _account_and_history(
    request: Request, session: Session
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # One snapshot: the stream resumes from exactly the seq of what the page shows.
    page = await reads.history(
        services(request).store, session.user_id, request.path_params["account_id"], HISTORY_LIMIT
    )
    account = views.account_of(page.account, session.username)
    return account, [views.transfer_of(r) for r in page.transfers]


def new_form(**values: Any) -> dict[str, Any]:
    """A transfer form's state; a fresh idempotency key for each rendered form."""
    return {
        "to": "",
        "amount": "",
        "memo": "",
        "idempotency_key": secrets.token_urlsafe(24),
        "errors": {},
        "message": None,
        **values,
    }


async def _account_page(
    request: Request, session: Session, form: dict[str, Any], status_code: int = 200
) -> Response:
    account, history = await _account_and_history(request, session)
    return fragments.render(
        request,
        "account.html",
        status_code,
        session=session,
        account=account,
        history=history,
        form=form,
        csrf_token=session.csrf_token,
    )


async def account_page(request: Request) -> Response:
    session = await sessions.require(request)
    form = new_form()
    if "sent" in request.query_params:
        replayed = request.query_params.get("replayed") == "1"
        form["message"] = _sent_message(replayed)
    return await _account_page(request, session, form)


async def history_partial(request: Request) -> Response:
    """The history list and balance card alone: htmx reloads them after a stream
    snapshot (the page fell too far behind to replay events)."""
    session = await sessions.require(request)
    account, history = await _account_and_history(request, session)
    env = fragments.templates(request)
    html = env.get_template("_history.html").render(
        account=account, history=history, csrf_token=session.csrf_token
    ) + env.get_template("_balance.html").render(
        account_id=account["id"],
        currency=account["currency"],
        balance=account["balance"],
        seq=account["seq"],
        note=None,
        oob=True,
    )
    return fragments.html(html)


def _sent_message(replayed: bool) -> dict[str, str]:
    if replayed:
        return {"tone": "replayed", "text": "Already sent — not charged twice."}
    return {"tone": "sent", "text": "Transfer accepted: pending until it settles."}


async def send(request: Request) -> Response:
    """Send money from the form, through the same use case as the API."""
    session = await sessions.require(request)
    data = await request.form()
    sessions.check_csrf(request, session.csrf_token, data)
    app = services(request)
    account = await reads.owned_account(
        app.store, session.user_id, request.path_params["account_id"]
    )
    # What a person typed, without the spaces around it (ASCII only: the amount itself
    # must still be a plain decimal).
    form = new_form(**{k: str(data.get(k, "")).strip(" \t\r\n") for k in ("to", "amount", "memo")})
    key = str(data.get("idempotency_key", "")) or None
    if key is not None:
        form["idempotency_key"] = key
    try:
        order = transfers.order(
            session.user_id,
            account["id"],
            await reads.recipient(app.store, form["to"], account["currency"]),
            form["amount"],
            form["memo"],
            key,
        )
        sent = await transfers.send(app, order)
    except errors.SettleError as exc:
        if isinstance(exc, (errors.IdempotencyKeyReused, errors.InvalidField)) and (
            exc.field == "Idempotency-Key"
        ):
            form["idempotency_key"] = new_form()["idempotency_key"]
        message = FORM_MESSAGES.get(type(exc), exc.message)
        form["errors"] = {FORM_FIELDS.get(exc.field or "", "form"): message}
        return await _form_response(request, session, form, exc.status)
    metrics.note(request, sent.transfer_id, accepted=not sent.replayed)
    if not fragments.is_htmx(request):
        query = f"?sent={quote(sent.transfer_id)}" + ("&replayed=1" if sent.replayed else "")
        return RedirectResponse(f"/accounts/{account['id']}{query}", status_code=303)
    fresh = new_form(message=_sent_message(sent.replayed))
    return await _form_response(request, session, fresh, 202, sent)


async def _form_response(
    request: Request,
    session: Session,
    form: dict[str, Any],
    status_code: int,
    sent: transfers.Sent | None = None,
) -> Response:
    """htmx: the form alone, plus the row, balance and announcement of the new transfer.
    Without JavaScript: the whole account page with the form's errors."""
    if not fragments.is_htmx(request):
        return await _account_page(request, session, form, status_code)
    store = services(request).store
    row = await reads.owned_account(store, session.user_id, request.path_params["account_id"])
    account = views.account_of(row, session.username)
    env = fragments.templates(request)
    html = env.get_template("_transfer_form.html").render(
        account=account, form=form, csrf_token=session.csrf_token
    )
    if sent is not None:
        # The transfer as it is now (it may have settled already) beside the balance as
        # it is now; a newer render (a stream event) wins whichever arrives first.
        transfer = views.transfer_of(
            await reads.visible_transfer(store, session.user_id, sent.transfer_id)
        )
        now = Event(
            f"transfer.{transfer['status']}", row["id"], row["seq"], transfer, account["balance"], 0
        )
        html += fragments.event_fragments(env, now.message(), session.csrf_token)
    return fragments.html(html, status_code)


async def transfer_page(request: Request) -> Response:
    session = await sessions.require(request)
    store = services(request).store
    row = await reads.visible_transfer(store, session.user_id, request.path_params["transfer_id"])
    return fragments.render(
        request,
        "transfer.html",
        session=session,
        t=views.transfer_of(row),
        outgoing=await reads.is_sender(store, session.user_id, row),
        csrf_token=session.csrf_token,
    )


async def cancel(request: Request) -> Response:
    session = await sessions.require(request)
    sessions.check_csrf(request, session.csrf_token, await request.form())
    cancelled = await transfers.cancel(
        services(request), session.user_id, request.path_params["transfer_id"]
    )
    transfer = cancelled.transfer
    metrics.note(request, transfer["id"])
    if not fragments.is_htmx(request):
        return RedirectResponse(f"/transfers/{transfer['id']}", status_code=303)
    own = cancelled.event_of(transfer["from_account"])
    html = fragments.event_fragments(
        fragments.templates(request), own.message(), session.csrf_token
    )
    return fragments.html(html)


routes = [
    *login.routes,
    Route("/accounts", dashboard, methods=["GET"]),
    Route("/accounts/{account_id}", account_page, methods=["GET"]),
    Route("/accounts/{account_id}/history", history_partial, methods=["GET"]),
    Route("/accounts/{account_id}/transfers", send, methods=["POST"]),
    Route("/transfers/{transfer_id}", transfer_page, methods=["GET"]),
    Route("/transfers/{transfer_id}/cancel", cancel, methods=["POST"]),
]
