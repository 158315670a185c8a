"""An account's page (balance, send form, live history), and the send form's answer:
the page again without JavaScript, or with htmx the form alone plus the fragments of
the transfer it sent. Both the page handlers (``server.web.pages``) and the send form
(``server.web.send_form``) answer through here."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.domain.events import Event
from server.domain.model import Account, Transfer
from server.store import reads
from server.web import fragments
from server.web.services import services
from server.web.sessions import Session

HISTORY_LIMIT = 50


async def account_and_history(request: Request, session: Session) -> reads.History:
    """The account and its latest transfers, on one snapshot: the stream resumes from
    exactly the seq of what the page shows."""
    return await reads.history(
        services(request).store, session.user_id, request.path_params["account_id"], HISTORY_LIMIT
    )


async def render(
    request: Request, session: Session, form: dict[str, Any], status_code: int = 200
) -> Response:
    page = await account_and_history(request, session)
    return fragments.render(
        request,
        "account.html",
        status_code,
        session=session,
        account=page.account,
        history=page.transfers,
        form=form,
        csrf_token=session.csrf_token,
        focus_frozen=bool(form.get("frozen")),
    )


async def form_response(
    request: Request,
    session: Session,
    form: dict[str, Any],
    status_code: int,
    sent: Transfer | None = None,
) -> Response:
    """htmx: the form alone, plus the row, balance and announcement of the transfer it
    sent. Without JavaScript: the whole account page with the form's errors."""
    if not fragments.is_htmx(request):
        return await render(request, session, form, status_code)
    store = services(request).store
    account = await reads.owned_account(store, session.user_id, request.path_params["account_id"])
    env = fragments.templates(request)
    html = env.get_template("_transfer_form.html").render(
        account=account, form=form, csrf_token=session.csrf_token
    )
    if form.get("frozen"):
        html += env.get_template("_frozen.html").render(account=account, oob=True)
    if sent is not None:
        html += event_html(request, session, account, sent)
    return fragments.html(html, status_code)


def event_html(request: Request, session: Session, account: Account, transfer: Transfer) -> str:
    """The row, balance and status line of a transfer as it is now (it may have settled
    already), seen from ``account``; a newer stream render wins. Its announcement is
    silent: the status line, focused, says it (and the stream's, for the same event, is
    not said again)."""
    now = Event.of_transfer(transfer, account.id, account.seq, account.balance, 0)
    env = fragments.templates(request)
    return fragments.event_fragments(env, now, session.csrf_token, silent=True)
