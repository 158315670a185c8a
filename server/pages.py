"""The HTML pages: dashboard, account (balance, transfer form, live history), transfer
detail, and the HTML rendering of errors. Login and logout are in ``server.login``.

Handlers stay thin like the API's: they call the same ledger operations and dispatch
the same events after the commit. Every form works without JavaScript (post, then
redirect); with htmx the same endpoints answer with fragments instead.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server import api, auth, errors, fragments, ledger, limits, login, metrics, sessions
from server.db import findable
from server.dispatch import Dispatcher
from server.money import parse_amount
from server.schema import accounts, users
from server.sessions import Session

HISTORY_LIMIT = 50
FORM_FIELDS = {"to_account": "to", "amount": "amount", "memo": "memo"}


async def dashboard(request: Request) -> Response:
    session = await sessions.require(request)
    rows = await request.state.store.fetch_all(
        sa.select(accounts)
        .where(accounts.c.user_id == session.user_id)
        .order_by(accounts.c.created_at)
    )
    owned = [ledger.account_of(r, session.username) for r in rows]
    return fragments.render(request, "dashboard.html", session=session, accounts=owned)


async def _account(request: Request, session: Session) -> dict[str, Any]:
    user = auth.User(session.user_id, session.username, via="session")
    row = await api.owned_account(request.state.store, user, request.path_params["account_id"])
    return ledger.account_of(row, session.username)


async def _history(request: Request, account_id: str) -> list[dict[str, Any]]:
    rows = await request.state.store.fetch_all(ledger.history_query(account_id, HISTORY_LIMIT))
    return [ledger.transfer_of(r) for r in rows]


def new_form(**values: str) -> dict[str, Any]:
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
    # Balance (and its seq) first, then history: the stream replays from that seq, so
    # anything that happens in between arrives as an event rather than being missed.
    account = await _account(request, session)
    history = await _history(request, account["id"])
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
    account = await _account(request, session)
    history = await _history(request, account["id"])
    env = request.state.templates
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


async def _recipient(request: Request, to: str, currency: str) -> str:
    """An account id from what the sender typed: an account id, or a username."""
    store = request.state.store
    to = findable(to)
    found = await store.fetch_val(
        sa.select(accounts.c.id).where(accounts.c.id == to, accounts.c.kind == "user")
    )
    if found is None:
        found = await store.fetch_val(
            sa.select(accounts.c.id)
            .join(users, users.c.id == accounts.c.user_id)
            .where(users.c.username == to, accounts.c.kind == "user")
            .order_by((accounts.c.currency != currency), accounts.c.created_at)
            .limit(1)
        )
    if found is None:
        raise errors.AccountNotFound("no user or account by that name", "to_account")
    return str(found)


async def send(request: Request) -> Response:
    """Accept a transfer from the form, through the same ledger function as the API."""
    session = await sessions.require(request)
    data = await request.form()
    sessions.check_csrf(request, session.csrf_token, data)
    account = await _account(request, session)
    form = new_form(**{k: str(data.get(k, "")).strip() for k in ("to", "amount", "memo")})
    key = str(data.get("idempotency_key", ""))
    if 1 <= len(key) <= 255 and key.isascii() and key.isprintable():
        form["idempotency_key"] = key
    store = request.state.store
    dispatch: Dispatcher = request.state.dispatch
    try:
        if len(form["memo"]) > api.MAX_MEMO:
            raise errors.InvalidField(f"at most {api.MAX_MEMO} characters", "memo")
        amount = parse_amount(form["amount"])
        to_account = await _recipient(request, form["to"], account["currency"])
        await limits.check_transfer_rate(dispatch.redis, request.state.settings, session.user_id)
        result = await ledger.accept_transfer(
            store, session.user_id, account["id"], to_account, amount, form["memo"], key or None
        )
    except errors.SettleError as exc:
        if isinstance(exc, errors.IdempotencyKeyReused):
            form["idempotency_key"] = new_form()["idempotency_key"]
            exc.message = "this form was already sent with other details; check and send again"
        form["errors"] = {FORM_FIELDS.get(exc.field or "", "form"): exc.message}
        return await _form_response(request, session, form, exc.status)
    if result.replayed:
        transfer_id = orjson.loads(result.response)["id"]
        metrics.note(request, transfer_id)
    else:
        transfer_id = result.transfer["id"]
        metrics.note(request, transfer_id, "accepted")
        await dispatch.after_commit(result.events, settle=[transfer_id])
    if not fragments.is_htmx(request):
        query = f"?sent={quote(transfer_id)}" + ("&replayed=1" if result.replayed else "")
        return RedirectResponse(f"/accounts/{account['id']}{query}", status_code=303)
    fresh = new_form()
    fresh["message"] = _sent_message(result.replayed)
    return await _form_response(request, session, fresh, 202, transfer_id)


async def _form_response(
    request: Request,
    session: Session,
    form: dict[str, Any],
    status_code: int,
    transfer_id: str | None = None,
) -> Response:
    """htmx: the form alone, plus the row, balance and announcement of the new transfer.
    Without JavaScript: the whole account page with the form's errors."""
    if not fragments.is_htmx(request):
        return await _account_page(request, session, form, status_code)
    account = await _account(request, session)
    env = request.state.templates
    html = env.get_template("_transfer_form.html").render(
        account=account, form=form, csrf_token=session.csrf_token
    )
    if transfer_id is not None:
        html += await _transfer_fragments(request, session, account, transfer_id)
    return fragments.html(html, status_code)


async def _transfer_fragments(
    request: Request, session: Session, account: dict[str, Any], transfer_id: str
) -> str:
    user = auth.User(session.user_id, session.username, via="session")
    row = await api.visible_transfer(request.state.store, user, transfer_id)
    transfer = ledger.transfer_of(row)
    message = {
        "type": f"transfer.{transfer['status']}",
        "account": account["id"],
        "seq": account["seq"],
        "transfer": transfer,
        "balance": account["balance"],
    }
    return fragments.event_fragments(request.state.templates, message, session.csrf_token)


async def transfer_page(request: Request) -> Response:
    session = await sessions.require(request)
    user = auth.User(session.user_id, session.username, via="session")
    row = await api.visible_transfer(request.state.store, user, request.path_params["transfer_id"])
    transfer = ledger.transfer_of(row)
    mine = await request.state.store.fetch_val(
        sa.select(accounts.c.id).where(
            accounts.c.id == transfer["from_account"], accounts.c.user_id == session.user_id
        )
    )
    return fragments.render(
        request,
        "transfer.html",
        session=session,
        t=transfer,
        outgoing=mine is not None,
        csrf_token=session.csrf_token,
    )


async def cancel(request: Request) -> Response:
    session = await sessions.require(request)
    sessions.check_csrf(request, session.csrf_token, await request.form())
    transfer, events = await ledger.cancel_transfer(
        request.state.store, session.user_id, findable(request.path_params["transfer_id"])
    )
    metrics.note(request, transfer["id"], "cancelled")
    dispatch: Dispatcher = request.state.dispatch
    await dispatch.after_commit(events)
    if not fragments.is_htmx(request):
        return RedirectResponse(f"/transfers/{transfer['id']}", status_code=303)
    own = [e for e in events if e.account_id == transfer["from_account"]]
    html = fragments.event_fragments(request.state.templates, own[0].message, session.csrf_token)
    return fragments.html(html)


def wants_html(request: Request) -> bool:
    """Errors on page paths render as HTML; the API (and JSON clients) get JSON."""
    path = request.url.path
    if path.startswith("/api") or path in ("/openapi.json", "/metrics", "/healthz", "/readyz"):
        return False
    return "application/json" not in request.headers.get("accept", "")


def error_page(request: Request, status: int, code: str, message: str) -> Response:
    """The HTML form of an error: a login redirect, an htmx announcement, or a page."""
    if status == 401:
        target = "/login?next=" + quote(request.url.path)
        if fragments.is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    env = request.state.templates
    if fragments.is_htmx(request):
        html = env.get_template("_announce.html").render(text=message, oob=True, tone="error")
        return fragments.html(html, status)
    return fragments.page(
        env,
        "error.html",
        {"status": status, "code": code, "message": message, "session": None, "note": None},
        status,
    )


routes = [
    *login.routes,
    Route("/accounts", dashboard, methods=["GET"]),
    Route("/accounts/{account_id}", account_page, methods=["GET"]),
    Route("/accounts/{account_id}/history", history_partial, methods=["GET"]),
    Route("/accounts/{account_id}/transfers", send, methods=["POST"]),
    Route("/transfers/{transfer_id}", transfer_page, methods=["GET"]),
    Route("/transfers/{transfer_id}/cancel", cancel, methods=["POST"]),
]
