"""The send form: its state, its human error messages, the duplicate warning, the
idempotency key that survives back and reload, and the "After sending" preview.

The handlers call the same use cases as the API (``server.usecases.transfers``): the form
always asks for the duplicate guard (``ledger.DUPLICATE_WINDOW_S``) unless the user
confirmed "Send again".
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.domain import errors, ledger, text, wording
from server.domain.clock import now_us
from server.domain.ledger import insufficient
from server.domain.model import Account, Balance, Transfer
from server.domain.money import MAX_AMOUNT, parse_amount
from server.store import reads
from server.usecases import transfers
from server.web import account_page, forms, fragments, middleware, sessions
from server.web.services import services
from server.web.sessions import Session

# The form's idempotency key lives in this cookie (scoped to the account's pages) until
# a transfer is known for it: a reload or the back button renders the same key, so
# sending the same form again never moves money twice, with or without JavaScript.
KEY_COOKIE = "settle_form_key"
# "USD 5", "5 EUR": an amount with its currency code.
_CODE = re.compile(r"([A-Za-z]{3} ?[0-9.,]+|[0-9.,]+ ?[A-Za-z]{3})")
KEY_TTL_S = 24 * 3600
# The longest username or account id (what the API's to_account takes).
MAX_ID = 64
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
        "frozen": False,  # refused: the account was frozen (its notice says so)
        "first_payment": None,  # the question before paying someone for the first time
        "passkey_url": "",  # refused for want of a passkey: where to add one
        **values,
    }


def form_key(request: Request) -> str:
    """The key of this browser's unsent form (the cookie), or a new one."""
    try:
        return ledger.idempotency_key(request.cookies.get(KEY_COOKIE)) or new_key()
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


# Refusals the form words the same whatever was typed.
_PLAIN = {
    errors.SameAccount: "That is this account: send to someone else.",
    errors.IdempotencyKeyReused: (
        "This form was already sent with other details: check them and send again."
    ),
    errors.RateLimited: "Too many transfers at once: wait a moment and send again.",
}


def refusal_message(exc: errors.SettleError, form: dict[str, Any], account: Account) -> str:
    """A refusal from the use case, worded for the form: what happened and the fix (for
    want of a passkey, the form also links to where to add one)."""
    currency = account.currency
    if isinstance(exc, errors.InsufficientFunds):
        available = wording.money(account.balance.available, currency)
        return f"That is more than you have. You have {available} available."
    if isinstance(exc, errors.InvalidAmount):
        return _amount_message(exc, form, currency)
    if isinstance(exc, errors.AccountFrozen):
        return "This account is frozen: it cannot send money."
    if isinstance(exc, errors.RecipientUnavailable):
        # Never why (frozen, another currency): that is the recipient's business.
        who = form.get("to_called") or form["to"]
        return f"{who} cannot receive money right now. Nothing was sent or charged."
    if isinstance(exc, errors.PasskeyRequired):
        form["passkey_url"] = exc.url
        return (
            "A transfer this large is confirmed with a passkey, and you have none yet."
            " Nothing was sent or charged."
        )
    if isinstance(exc, errors.AccountNotFound) and exc.field == "to_account":
        return f"No one here is called “{form['to']}”: check the username or account id."
    plain = _PLAIN.get(type(exc))
    return plain or exc.message[:1].upper() + exc.message[1:]


def _amount_message(exc: errors.InvalidAmount, form: dict[str, Any], currency: str) -> str:
    if exc.problem is errors.AmountProblem.NOT_POSITIVE:
        return "Enter an amount above zero, like 12.34."
    if exc.problem is errors.AmountProblem.TOO_LARGE:
        return "The most you can send at once is " + wording.money(MAX_AMOUNT, currency)
    return amount_error(form["amount"])


def duplicate_warning(exc: errors.PossibleDuplicate) -> dict[str, str]:
    earlier = exc.earlier
    seconds = max(1, (now_us() - earlier.created_at) // 1_000_000)
    amount = wording.money(earlier.amount, earlier.currency)
    who = wording.counterparty(earlier, True)
    return {
        "text": f"You sent {amount} to {who} {wording.ago(seconds)}. Send again?",
        "earlier": earlier.id,
    }


async def _check(request: Request, account: Account, form: dict[str, Any]) -> reads.Payee:
    """The recipient, or every field's error at once."""
    problems: dict[str, str] = {}
    status = 422
    try:
        parse_amount(form["amount"])
    except errors.InvalidAmount as exc:
        problems["amount"] = refusal_message(exc, form, account)
    to = reads.Payee("", "", "")
    if not form["to"]:
        problems["to"] = "Enter who to send to: a username or an account id."
    else:
        try:
            text.check(form["to"], "to", MAX_ID)
            to = await reads.recipient(services(request).store, form["to"], account.currency)
            form["to_called"] = to.called
        except errors.InvalidField:
            # Nobody is called that: it is not shown back either.
            form["to"] = ""
            problems["to"] = f"Enter a username or an account id (at most {MAX_ID} characters)."
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


async def _posted(request: Request) -> tuple[Session, FormData, Account, dict[str, Any]]:
    """A posted send form, checked (session, CSRF, the account is the user's): its data,
    the account, and the form's state with what a person typed, without the spaces
    around it (ASCII only: the amount itself must still be a plain decimal)."""
    session = await sessions.require(request)
    data = await forms.read(request)
    sessions.check_csrf(request, session.csrf_token, data)
    account = await reads.owned_account(
        services(request).store, session.user_id, request.path_params["account_id"]
    )
    form = new_form(**{k: forms.typed(data, k).strip(" \t\r\n") for k in ("to", "amount", "memo")})
    return session, data, account, form


async def send(request: Request) -> Response:
    """Send money from the form, through the same use case as the API."""
    session, data, account, form = await _posted(request)
    app = services(request)
    key = forms.typed(data, "idempotency_key") or None
    if key is not None:
        form["idempotency_key"] = key
    confirmed = forms.typed(data, "confirm_duplicate") == "1"
    try:
        to = await _check(request, account, form)
        order = ledger.order(
            session.user_id,
            account.id,
            to.account_id,
            form["amount"],
            form["memo"],
            key,
            guard_s=0 if confirmed else ledger.DUPLICATE_WINDOW_S,
        )
        if await _asks_first(request, account, to, order, data):
            form["first_payment"] = first_payment_question(to, order, account)
            return await account_page.form_response(request, session, form, 200)
        sent = await transfers.send(app.usecases, order)
    except FormProblems as problems:
        form["errors"] = problems.problems
        return await account_page.form_response(request, session, form, problems.status)
    except errors.PossibleDuplicate as exc:
        form["duplicate"] = duplicate_warning(exc)
        return await account_page.form_response(request, session, form, exc.status)
    except errors.AccountFrozen as exc:
        # Frozen meanwhile: one notice says it (the account's own, repainted and
        # focused, its Send button disabled), not a second error in the form.
        form["frozen"] = True
        return await account_page.form_response(request, session, form, exc.status)
    except errors.SettleError as exc:
        message = refusal_message(exc, form, account)
        if isinstance(exc, errors.IdempotencyKeyReused) and key is not None:
            message = await _already_sent(request, session, key) or message
        if isinstance(exc, (errors.IdempotencyKeyReused, errors.InvalidField)) and (
            exc.field == "Idempotency-Key"
        ):
            form["idempotency_key"] = new_key()
        form["errors"] = {FIELDS.get(exc.field or "", "form"): message}
        refused = await account_page.form_response(request, session, form, exc.status)
        keep_key(request, refused, account.id, form["idempotency_key"])
        return refused
    transfer_id = sent.transfer.id
    middleware.note(request, transfer_id, accepted=not sent.replayed)
    fresh = new_key()
    if not fragments.is_htmx(request):
        query = f"?sent={quote(transfer_id)}" + ("&replayed=1" if sent.replayed else "")
        response: Response = RedirectResponse(f"/accounts/{account.id}{query}", 303)
    else:
        fresh_form = new_form(idempotency_key=fresh)
        now = await sent_state(request, session, fresh_form, transfer_id, sent.replayed)
        response = await account_page.form_response(request, session, fresh_form, 202, now)
    # The transfer is known: the next form gets a new key.
    keep_key(request, response, account.id, fresh)
    return response


async def _asks_first(
    request: Request, account: Account, to: reads.Payee, order: ledger.Order, data: FormData
) -> bool:
    """Whether to ask before sending: the first payment from this account to someone
    (nothing ever sent them that did not fail or get cancelled) asks "Send $12.34 to Bob
    Martin (@bob)?" once, unless that is what "Yes, send" answered. A send the rules
    would refuse anyway (this account, frozen, too much, a form key already used) is not
    asked about: its refusal, or its replay, says what happened."""
    if data.get("confirm_recipient") == to.account_id or to.account_id == account.id:
        return False
    if not account.active or not ledger.can_spend(account, order.amount):
        return False
    if await reads.paid_before(services(request).store, account.id, to.account_id):
        return False
    try:
        return await transfers.replayed(services(request).usecases, order) is None
    except errors.IdempotencyKeyReused:
        return False


def first_payment_question(
    to: reads.Payee, order: ledger.Order, account: Account
) -> dict[str, str]:
    amount = wording.money(order.amount, account.currency)
    return {
        "question": f"Send {amount} to {to.called}?",
        "why": f"You have not paid {to.called} before: check this is who you mean.",
        "yes": f"Yes, send {amount}",
        "account": to.account_id,
    }


async def _already_sent(request: Request, session: Session, key: str) -> str | None:
    """This form's key went with another transfer: without JavaScript every tab of the
    account shares the kept key, so it was most likely sent from another tab (or this
    one before its details changed). Say which, so nothing is sent twice unknowingly."""
    earlier = await reads.sent_with_key(services(request).store, session.user_id, key)
    if earlier is None:
        return None
    amount = wording.money(earlier.amount, earlier.currency)
    who = wording.counterparty(earlier, True)
    return (
        f"You already sent {amount} to {who} from another tab ({earlier.status}). "
        "Check your history; to send this one too, press Send again."
    )


NOT_SENT = "Not sent: nothing was charged. Press Send to send it."


async def fate(request: Request) -> Response:
    """What became of the form sent with this key, when its answer never arrived
    (settle.js asks, and asks again once the connection is back): the form in its sent
    state, with the transfer's status line, if a transfer went with the key; else the
    form as typed, same key, "Not sent", which only the server can say."""
    session, data, account, form = await _posted(request)
    key = ledger.idempotency_key(str(data.get("idempotency_key", "")) or None)
    earlier = None
    if key is not None:
        form["idempotency_key"] = key
        earlier = await reads.sent_with_key(services(request).store, session.user_id, key)
    if earlier is None:
        if data.get("quiet") == "1":
            return Response(status_code=204)  # asked again in the background: no news
        form["message"] = {"tone": "not-sent", "text": NOT_SENT}
        return await account_page.form_response(request, session, form, 200)
    fresh = new_form(idempotency_key=new_key())
    now = await sent_state(request, session, fresh, earlier.id, replayed=False)
    response = await account_page.form_response(request, session, fresh, 200, now)
    keep_key(request, response, account.id, fresh["idempotency_key"])
    return response


async def sent_state(
    request: Request, session: Session, form: dict[str, Any], transfer_id: str, replayed: bool
) -> Transfer | None:
    """The form's status line for a transfer it sent: that transfer, as it is now (also
    returned, for the fragments that go with it)."""
    if replayed:
        form["message"] = {"tone": "replayed", "text": "Already sent — not charged twice."}
    try:
        transfer = await reads.visible_transfer(
            services(request).store, session.user_id, transfer_id
        )
    except errors.TransferNotFound:
        return None
    if not replayed and transfer.sent_from(request.path_params["account_id"]):
        form["sent"] = transfer
    return transfer


async def preview(request: Request) -> Response:
    """ "After sending: $X available", or why it would fail: the API's preview use case,
    for the form as it is typed (session and CSRF; htmx, debounced)."""
    session, data, account, form = await _posted(request)
    try:
        key = ledger.idempotency_key(str(data.get("idempotency_key", "")) or None)
    except errors.InvalidField:
        key = None
    text, tone = await _preview_text(request, session, account, form, key)
    return fragments.html(
        fragments.templates(request)
        .get_template("_preview.html")
        .render(text=text, tone=tone, account_id=account.id)
    )


async def _preview_text(
    request: Request, session: Session, account: Account, form: dict[str, Any], key: str | None
) -> tuple[str, str]:
    if not form["amount"]:
        return "", "info"
    try:
        cents = parse_amount(form["amount"])
    except errors.InvalidAmount as exc:
        return refusal_message(exc, form, account), "bad"
    if not form["to"]:
        # No recipient yet: what the amount alone would leave.
        left = account.balance.holding(cents)
        if left.available < 0:
            return refusal_message(insufficient(account.balance), form, account), "bad"
        return _after(account, left), "info"
    try:
        to = await _check(request, account, form)
    except FormProblems as problems:
        return next(iter(problems.problems.values())), "bad"
    try:
        order = ledger.order(
            session.user_id, account.id, to.account_id, form["amount"], form["memo"], key
        )
    except errors.InvalidField:  # the memo: the send itself will say what is wrong
        order = ledger.order(session.user_id, account.id, to.account_id, form["amount"])
    said = await _sent_already(request, session, account, order)
    if said is not None:
        return said, "info"
    result = await transfers.preview(services(request).usecases, order)
    return _preview_words(result, form, account)


def _preview_words(
    result: ledger.Preview, form: dict[str, Any], account: Account
) -> tuple[str, str]:
    """What the preview says of the use case's answer, and its tone."""
    if isinstance(result.error, errors.AccountFrozen):
        return "", "info"  # the account's frozen notice already says it
    if isinstance(result.error, errors.PasskeyRequired):
        return (
            "A transfer this large is confirmed with a passkey, and you have none yet:"
            " add one on the Security page first."
        ), "bad"
    if result.error is not None:
        return refusal_message(result.error, form, account), "bad"
    assert result.balance_after is not None
    after = _after(account, result.balance_after)
    if result.requires_passkey:
        return f"{after}. You will confirm it with your passkey.", "info"
    return after, "info"


async def _sent_already(
    request: Request, session: Session, account: Account, order: ledger.Order
) -> str | None:
    """If this form was sent already (its answer lost on the way), what sending it again
    would do: nothing, since its amount is already held (never counted twice), or, when
    the key went with other details, a second transfer."""
    available = wording.money(account.balance.available, account.currency)
    try:
        earlier = await transfers.replayed(services(request).usecases, order)
    except errors.IdempotencyKeyReused:
        assert order.idempotency_key is not None
        said = await _already_sent(request, session, order.idempotency_key)
        return None if said is None else f"{said} {available} available."
    if earlier is None:
        return None
    return f"Already sent with this form: sending it again moves no money. {available} available."


def _after(account: Account, balance: Balance) -> str:
    return f"After sending: {wording.money(balance.available, account.currency)} available"


routes = [
    Route("/accounts/{account_id}/transfers", send, methods=["POST"]),
    Route("/accounts/{account_id}/sent", fate, methods=["POST"]),
    Route("/accounts/{account_id}/preview", preview, methods=["POST"]),
]
