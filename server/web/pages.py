"""The HTML pages: dashboard, account (balance, transfer form, live history: rendered
by ``server.web.account_page``) and transfer detail. Login and logout are in
``server.web.login``, the send form in ``server.web.send_form``, the statement page in
``server.web.statement_page``; errors render in ``server.web.responses``.

Handlers stay thin like the API's: they parse the form, call the same use cases
(``server.usecases``) and reads (``server.store.reads``), and render. Every form works
without JavaScript (post, then redirect); with htmx the same endpoints answer with
fragments instead. Every page is live from the same stream and the same fragments
(``server.web.fragments.event_fragments``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.domain import errors
from server.domain.events import Event
from server.domain.model import Account, Status, Transfer
from server.store import findable, reads
from server.usecases import transfers
from server.web import account_page as account_page_view
from server.web import (
    forms,
    fragments,
    login,
    middleware,
    profile,
    security_page,
    send_form,
    sessions,
    statement_page,
    webhooks_page,
)
from server.web.services import services
from server.web.sessions import Session


async def dashboard(request: Request) -> Response:
    session = await sessions.require(request)
    owned = await reads.accounts_of(services(request).store, session.user_id)
    return fragments.render(request, "dashboard.html", session=session, accounts=owned)


async def account_page(request: Request) -> Response:
    session = await sessions.require(request)
    form = send_form.new_form(idempotency_key=send_form.form_key(request))
    sent = request.query_params.get("sent")
    if sent:
        replayed = request.query_params.get("replayed") == "1"
        await send_form.sent_state(request, session, form, sent, replayed)
    response = await account_page_view.render(request, session, form)
    send_form.keep_key(
        request, response, request.path_params["account_id"], form["idempotency_key"]
    )
    return response


async def support(request: Request) -> Response:
    """Where "Contact support" leads unless ``SETTLE_SUPPORT_URL`` names another page:
    what a frozen account means and whom to ask. No login needed."""
    session = await sessions.current(request)
    return fragments.render(request, "support.html", session=session)


async def history_partial(request: Request) -> Response:
    """The history list and balance card alone: htmx reloads them after a stream
    snapshot (the page fell too far behind to replay events)."""
    session = await sessions.require(request)
    page = await account_page_view.account_and_history(request, session)
    account = page.account
    env = fragments.templates(request)
    html = env.get_template("_history.html").render(
        account=account, history=page.transfers, csrf_token=session.csrf_token
    ) + env.get_template("_balance.html").render(
        account_id=account.id,
        currency=account.currency,
        balance=account.balance,
        seq=account.seq,
        note=None,
        oob=True,
    )
    return fragments.html(html)


async def _transfer_context(request: Request, session: Session) -> dict[str, Any]:
    store = services(request).store
    transfer_id = request.path_params["transfer_id"]
    transfer = await reads.visible_transfer(store, session.user_id, transfer_id)
    outgoing = await reads.is_sender(store, session.user_id, transfer)
    # The viewer's side, read before the transfer: the stream resumes from its seq, and
    # a replayed older state never replaces a newer one (data-version).
    side = await reads.owned_account(
        store, session.user_id, transfer.from_account if outgoing else transfer.to_account
    )
    transfer = await reads.visible_transfer(store, session.user_id, transfer_id)
    return {
        "session": session,
        "t": transfer,
        "account": side,
        "outgoing": outgoing,
        "csrf_token": session.csrf_token,
        "notice": None,
    }


async def transfer_page(request: Request) -> Response:
    session = await sessions.require(request)
    context = await _transfer_context(request, session)
    if request.query_params.get("cancel") == "too-late":
        # Where a stale Cancel without JavaScript lands: what happened instead.
        context["notice"] = stale_cancel_text(context["t"])
    return fragments.render(request, "transfer.html", **context)


_TOO_LATE = {
    Status.COMPLETED: "it has already been delivered",
    Status.FAILED: "it has already failed and the money was returned",
    Status.CANCELLED: "it was already cancelled",
}


def stale_cancel_text(transfer: Transfer) -> str:
    outcome = _TOO_LATE.get(transfer.status, "it is no longer pending")
    return f"Too late to cancel: this transfer is no longer pending — {outcome}."


async def cancel(request: Request) -> Response:
    session = await sessions.require(request)
    sessions.check_csrf(request, session.csrf_token, await forms.read(request))
    try:
        transfer, events = await transfers.cancel(
            services(request).usecases, session.user_id, request.path_params["transfer_id"]
        )
    except errors.NotPending:
        return await _stale_cancel(request, session)
    middleware.note(request, transfer.id)
    if not fragments.is_htmx(request):
        return RedirectResponse(f"/transfers/{transfer.id}", status_code=303)
    own = next(e for e in events if e.account_id == transfer.from_account)
    html = fragments.event_fragments(fragments.templates(request), own, session.csrf_token)
    return fragments.html(html)


async def _stale_cancel(request: Request, session: Session) -> Response:
    """A Cancel clicked on a page that had not caught up: say what happened instead, and
    repaint the transfer as it is now."""
    if not fragments.is_htmx(request):
        # Post, then redirect: the page that says so is not left on the POST's URL (a
        # reload would not post the Cancel again, nor ask to).
        transfer_id = findable(request.path_params["transfer_id"])
        return RedirectResponse(f"/transfers/{quote(transfer_id)}?cancel=too-late", 303)
    context = await _transfer_context(request, session)
    transfer: Transfer = context["t"]
    notice = stale_cancel_text(transfer)
    account: Account = context["account"]
    now = Event.of_transfer(transfer, account.id, account.seq, account.balance, 0)
    env = fragments.templates(request)
    html = fragments.event_fragments(env, now, session.csrf_token, announce=notice)
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
    Route("/support", support, methods=["GET"]),
    *profile.routes,
    *webhooks_page.routes,
    *security_page.routes,
]
