"""The send form: its state, its human error messages, the duplicate warning, the
idempotency key that survives back and reload, and the "After sending" preview.

The handlers call the same use cases as the API (``server.transfers``): the form
always asks for the duplicate guard (``transfers.DUPLICATE_WINDOW_S``) unless the user
confirmed "Send again".
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server import errors, fragments, metrics, present, reads, sessions, transfers, views
from server.events import Event
from server.money import format_amount, parse_amount
from server.services import services
from server.sessions import Session
from server.store import Row

# The form's idempotency key lives in this cookie (scoped to the account's pages) until
# a transfer is known for it: a reload or the back button renders the same key, so
# sending the same form again never moves money twice, with or without JavaScript.
KEY_COOKIE = "settle_form_key"
# "USD 5", "5 EUR": an amount with its currency code.
_CODE = re.compile(r"([A-Za-z]{3} ?[0-9.,]+|[0-9.,]+ ?[A-Za-z]{3})")
KEY_TTL_S = 24 * 3600
FIELDS = {"to_account": "to", "amount": "amount", "memo": "memo"}


def new_key() -> str:
    return secrets.token_urlsafe(24)


def new_form(**values: Any) -> dict[str, Any]:
    """A transfer form's state."""
    return {
        "to": "",
        "amount": "",
        "memo": "",
        "idempotency_key": new_key(),
        "errors": {},
        "message": None,
        "sent": None,
        "duplicate": None,
        **values,
    }


def form_key(request: Request) -> str:
    """The key of this browser's unsent form (the cookie), or a new one."""
    try:
        return transfers.idempotency_key(request.cookies.get(KEY_COOKIE)) or new_key()
    except errors.InvalidField:  # not a key this app would have set
        return new_key()


def keep_key(request: Request, response: Response, account_id: str, key: str) -> None:
    """Remember ``key`` as the account form's key in this browser."""
    response.set_cookie(
        KEY_COOKIE,
        key,
        max_age=KEY_TTL_S,
        path=f"/accounts/{account_id}",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def amount_error(typed: str) -> str:
    """What to fix in an amount the rules refused, in the form's words."""
    text = typed.strip()
    if not text:
        return "Enter an amount, like 12.34."
    if text.startswith("-"):
        return "Enter an amount above zero, like 12.34."
    if any(c in text for c in "$€£") or _CODE.fullmatch(text):
        return "Leave out the currency sign: enter an amount like 12.34."
    if "," in text:
        return "Leave out the commas: enter an amount like 1000.00."
    return "Enter an amount like 12.34: digits, a dot and at most 2 decimals."


def refusal_message(exc: errors.SettleError, form: dict[str, Any], account: Row) -> str:
    """A refusal from the use case, worded for the form: what happened and the fix."""
    currency = account["currency"]
    if isinstance(exc, errors.InsufficientFunds):
        available = present.money(views.balance_of(account)["available"], currency)
        return f"That is more than you have. You have {available} available."
    if isinstance(exc, errors.InvalidAmount):
        if "greater than zero" in exc.message:
            return "Enter an amount above zero, like 12.34."
        if "at most" in exc.message and "decimal" not in exc.message:
            return "The most you can send at once is " + present.money("1000000000.00", currency)
        return amount_error(form["amount"])
    if isinstance(exc, errors.AccountFrozen):
        if exc.field == "from_account":
            return "This account is frozen: it cannot send money."
        return f"{form['to']}'s account is frozen: it cannot receive money right now."
    if isinstance(exc, errors.SameAccount):
        return "That is this account: send to someone else."
    if isinstance(exc, errors.AccountNotFound) and exc.field == "to_account":
        return f"No one here is called “{form['to']}”: check the username or account id."
    if isinstance(exc, errors.IdempotencyKeyReused):
        return "This form was already sent with other details: check them and send again."
    if isinstance(exc, errors.RateLimited):
        return "Too many transfers at once: wait a moment and send again."
    return exc.message[:1].upper() + exc.message[1:]


def duplicate_warning(exc: errors.PossibleDuplicate) -> dict[str, str]:
    earlier = exc.earlier
    created = earlier.get("created_at")
    seconds = 1
    if isinstance(created, str):
        seconds = max(1, int(time.time() - datetime.fromisoformat(created).timestamp()))
    amount = present.money(str(earlier["amount"]), str(earlier["currency"]))
    who = present.counterparty(earlier, True)
    return {
        "text": f"You sent {amount} to {who} {present.ago(seconds)}. Send again?",
        "earlier": str(earlier["id"]),
    }


async def _check(request: Request, session: Session, account: Row, form: dict[str, Any]) -> str:
    """The recipient's account, or every field's error at once."""
    problems: dict[str, str] = {}
    status = 422
    try:
        parse_amount(form["amount"])
    except errors.InvalidAmount as exc:
        problems["amount"] = refusal_message(exc, form, account)
    to = ""
    if not form["to"]:
        problems["to"] = "Enter who to send to: a username or an account id."
    else:
        try:
            to = await reads.recipient(services(request).store, form["to"], account["currency"])
        except errors.AccountNotFound as exc:
            problems["to"] = refusal_message(exc, form, account)
            status = 404 if not problems.get("amount") else 422
    if problems:
        raise FormProblems(problems, status)
    return to


class FormProblems(Exception):
    def __init__(self, problems: dict[str, str], status: int) -> None:
        super().__init__(problems)
        self.problems, self.status = problems, status


async def _posted(request: Request) -> tuple[Session, FormData, Row, dict[str, Any]]:
    """A posted send form, checked (session, CSRF, the account is the user's): its data,
    the account, and the form's state with what a person typed, without the spaces
    around it (ASCII only: the amount itself must still be a plain decimal)."""
    session = await sessions.require(request)
    data = await request.form()
    sessions.check_csrf(request, session.csrf_token, data)
    account = await reads.owned_account(
        services(request).store, session.user_id, request.path_params["account_id"]
    )
    form = new_form(**{k: str(data.get(k, "")).strip(" \t\r\n") for k in ("to", "amount", "memo")})
    return session, data, account, form


async def send(request: Request) -> Response:
    """Send money from the form, through the same use case as the API."""
    from server import pages

    session, data, account, form = await _posted(request)
    app = services(request)
    key = str(data.get("idempotency_key", "")) or None
    if key is not None:
        form["idempotency_key"] = key
    confirmed = data.get("confirm_duplicate") == "1"
    try:
        to = await _check(request, session, account, form)
        order = transfers.order(
            session.user_id,
            account["id"],
            to,
            form["amount"],
            form["memo"],
            key,
            guard_s=0 if confirmed else transfers.DUPLICATE_WINDOW_S,
        )
        sent = await transfers.send(app, order)
    except FormProblems as problems:
        form["errors"] = problems.problems
        return await pages.form_response(request, session, form, problems.status)
    except errors.PossibleDuplicate as exc:
        form["duplicate"] = duplicate_warning(exc)
        return await pages.form_response(request, session, form, exc.status)
    except errors.SettleError as exc:
        message = refusal_message(exc, form, account)
        if isinstance(exc, errors.IdempotencyKeyReused) and key is not None:
            message = await _already_sent(request, session, key) or message
        if isinstance(exc, (errors.IdempotencyKeyReused, errors.InvalidField)) and (
            exc.field == "Idempotency-Key"
        ):
            form["idempotency_key"] = new_key()
        form["errors"] = {FIELDS.get(exc.field or "", "form"): message}
        refused = await pages.form_response(request, session, form, exc.status)
        keep_key(request, refused, account["id"], form["idempotency_key"])
        return refused
    metrics.note(request, sent.transfer_id, accepted=not sent.replayed)
    fresh = new_key()
    if not fragments.is_htmx(request):
        query = f"?sent={quote(sent.transfer_id)}" + ("&replayed=1" if sent.replayed else "")
        response: Response = RedirectResponse(f"/accounts/{account['id']}{query}", 303)
    else:
        fresh_form = new_form(idempotency_key=fresh)
        now = await sent_state(request, session, fresh_form, sent.transfer_id, sent.replayed)
        response = await pages.form_response(request, session, fresh_form, 202, now)
    # The transfer is known: the next form gets a new key.
    keep_key(request, response, account["id"], fresh)
    return response


async def _already_sent(request: Request, session: Session, key: str) -> str | None:
    """This form's key went with another transfer (a second tab, or an answer lost before
    the details were changed): say which, so nothing is sent twice unknowingly."""
    row = await reads.sent_with_key(services(request).store, session.user_id, key)
    if row is None:
        return None
    earlier = views.transfer_of(row)
    amount = present.money(earlier["amount"], earlier["currency"])
    who = present.counterparty(earlier, True)
    return (
        f"This form already sent {amount} to {who} ({earlier['status']}). "
        "Check your history; to send this one too, press Send again."
    )


async def sent_state(
    request: Request, session: Session, form: dict[str, Any], transfer_id: str, replayed: bool
) -> dict[str, Any] | None:
    """The form's status line for a transfer it sent: that transfer, as it is now (also
    returned, for the fragments that go with it)."""
    if replayed:
        form["message"] = {"tone": "replayed", "text": "Already sent — not charged twice."}
    try:
        row = await reads.visible_transfer(services(request).store, session.user_id, transfer_id)
    except errors.TransferNotFound:
        return None
    transfer = views.transfer_of(row)
    if not replayed and row["from_account"] == request.path_params["account_id"]:
        form["sent"] = transfer
    return transfer


async def preview(request: Request) -> Response:
    """ "After sending: $X available", or why it would fail: the API's preview use case,
    for the form as it is typed (session and CSRF; htmx, debounced)."""
    session, _, account, form = await _posted(request)
    text, tone = await _preview_text(request, session, account, form)
    return fragments.html(
        fragments.templates(request)
        .get_template("_preview.html")
        .render(text=text, tone=tone, account_id=account["id"])
    )


async def _preview_text(
    request: Request, session: Session, account: Row, form: dict[str, Any]
) -> tuple[str, str]:
    if not form["amount"]:
        return "", "info"
    try:
        cents = parse_amount(form["amount"])
    except errors.InvalidAmount as exc:
        return refusal_message(exc, form, account), "bad"
    if not form["to"]:
        # No recipient yet: what the amount alone would leave.
        left = account["posted"] - account["pending_debits"] - cents
        if left < 0:
            return refusal_message(errors.InsufficientFunds("", "amount"), form, account), "bad"
        return _after(account, format_amount(left)), "info"
    try:
        to = await _check(request, session, account, form)
    except FormProblems as problems:
        return next(iter(problems.problems.values())), "bad"
    order = transfers.order(session.user_id, account["id"], to, form["amount"])
    result = await transfers.preview(services(request), order)
    if result.error is not None:
        return refusal_message(result.error, form, account), "bad"
    assert result.balance_after is not None
    return _after(account, result.balance_after["available"]), "info"


def _after(account: Row, available: str) -> str:
    return f"After sending: {present.money(available, account['currency'])} available"


def event_html(request: Request, session: Session, account: Row, transfer: Any) -> str:
    """The row, balance, status line and announcement of a transfer the form just sent,
    as it is now (it may have settled already); a newer stream render wins."""
    now = Event.of(f"transfer.{transfer['status']}", account, transfer, 0)
    return fragments.event_fragments(
        fragments.templates(request), now.message(), session.csrf_token
    )


routes = [
    Route("/accounts/{account_id}/transfers", send, methods=["POST"]),
    Route("/accounts/{account_id}/preview", preview, methods=["POST"]),
]
