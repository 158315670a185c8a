"""The HTML pages: dashboard, account (balance, transfer form, live history) and transfer
detail. Login and logout are in ``server.login``, the send form in ``server.send_form``,
the statement page in ``server.statement_page``; errors render in ``server.responses``.

Handlers stay thin like the API's: they parse the form, call the same use cases
(``server.transfers``) and reads (``server.reads``), and render. Every form works
without JavaScript (post, then redirect); with htmx the same endpoints answer with
fragments instead. Every page is live from the same stream and the same fragments
(``server.fragments.event_fragments``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server import (
    errors,
    fragments,
    login,
    metrics,
    reads,
    send_form,
    sessions,
    statement_page,
    transfers,
    views,
)
from server.events import Event
from server.services import services
from server.sessions import Session

HISTORY_LIMIT = 50


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
    form = send_form.new_form(idempotency_key=send_form.form_key(request))
    sent = request.query_params.get("sent")
    if sent:
        replayed = request.query_params.get("replayed") == "1"
        await send_form.sent_state(request, session, form, sent, replayed)
    response = await _account_page(request, session, form)
    send_form.keep_key(
        request, response, request.path_params["account_id"], form["idempotency_key"]
    )
    return response


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


async def form_response(
    request: Request,
    session: Session,
    form: dict[str, Any],
    status_code: int,
    sent: dict[str, Any] | None = None,
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
        html += send_form.event_html(request, session, row, sent)
    return fragments.html(html, status_code)


async def _transfer_context(request: Request, session: Session) -> dict[str, Any]:
    store = services(request).store
    transfer_id = request.path_params["transfer_id"]
    row = await reads.visible_transfer(store, session.user_id, transfer_id)
    outgoing = await reads.is_sender(store, session.user_id, row)
    # The viewer's side, read before the transfer: the stream resumes from its seq, and
    # a replayed older state never replaces a newer one (data-version).
    side = await reads.owned_account(
        store, session.user_id, row["from_account"] if outgoing else row["to_account"]
    )
    row = await reads.visible_transfer(store, session.user_id, transfer_id)
    return {
        "session": session,
        "t": views.transfer_of(row),
        "account": views.account_of(side, session.username),
        "outgoing": outgoing,
        "csrf_token": session.csrf_token,
        "notice": None,
    }


async def transfer_page(request: Request) -> Response:
    session = await sessions.require(request)
    context = await _transfer_context(request, session)
    return fragments.render(request, "transfer.html", **context)


def stale_cancel_text(transfer: dict[str, Any]) -> str:
    outcome = {
        "completed": "it has already been delivered",
        "failed": "it has already failed and the money was returned",
        "cancelled": "it was already cancelled",
    }.get(str(transfer["status"]), "it is no longer pending")
    return f"Too late to cancel: this transfer is no longer pending — {outcome}."


async def cancel(request: Request) -> Response:
    session = await sessions.require(request)
    sessions.check_csrf(request, session.csrf_token, await request.form())
    try:
        cancelled = await transfers.cancel(
            services(request), session.user_id, request.path_params["transfer_id"]
        )
    except errors.NotPending:
        return await _stale_cancel(request, session)
    transfer = cancelled.transfer
    metrics.note(request, transfer["id"])
    if not fragments.is_htmx(request):
        return RedirectResponse(f"/transfers/{transfer['id']}", status_code=303)
    own = cancelled.event_of(transfer["from_account"])
    html = fragments.event_fragments(
        fragments.templates(request), own.message(), session.csrf_token
    )
    return fragments.html(html)


async def _stale_cancel(request: Request, session: Session) -> Response:
    """A Cancel clicked on a page that had not caught up: say what happened instead, and
    repaint the transfer as it is now."""
    context = await _transfer_context(request, session)
    notice = stale_cancel_text(context["t"])
    if not fragments.is_htmx(request):
        context["notice"] = notice
        return fragments.render(request, "transfer.html", 409, **context)
    account = context["account"]
    now = Event(
        f"transfer.{context['t']['status']}",
        account["id"],
        account["seq"],
        context["t"],
        account["balance"],
        0,
    )
    env = fragments.templates(request)
    html = fragments.event_fragments(env, now.message(), session.csrf_token, announce=notice)
    return fragments.html(html, 409)


routes = [
    *login.routes,
    Route("/accounts", dashboard, methods=["GET"]),
    Route("/accounts/{account_id}", account_page, methods=["GET"]),
    Route("/accounts/{account_id}/history", history_partial, methods=["GET"]),
    *send_form.routes,
    *statement_page.routes,
    Route("/transfers/{transfer_id}", transfer_page, methods=["GET"]),
    Route("/transfers/{transfer_id}/cancel", cancel, methods=["POST"]),
]
