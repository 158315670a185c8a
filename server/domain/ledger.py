"""The rules of money entering the ledger, with no database in sight: what a transfer
request is (``Order``), who may send what to whom (``check_parties``), what the
reservation leaves (``preview``), and what an idempotency key is bound to.

The transactions that apply them are ``server.store.ledger``; the use cases that run
those are ``server.usecases.transfers``.
"""

from __future__ import annotations

import hashlib

import msgspec

from server.domain import errors, text
from server.domain.model import Account, AccountKind, Balance, Transfer
from server.domain.money import format_amount, parse_amount

MAX_MEMO = 500
MAX_KEY = 255
# The duplicate guard's window: the pages always ask for it (unless the user confirmed);
# API clients may, for up to an hour.
DUPLICATE_WINDOW_S = 120
MAX_GUARD_S = 3600


class Order(msgspec.Struct, frozen=True):
    """A transfer as its sender asked for it, already validated
    (``server.usecases.transfers.order``)."""

    user_id: str
    from_account: str
    to_account: str
    amount: int  # cents, > 0
    memo: str = ""
    idempotency_key: str | None = None
    # The duplicate guard: refuse if the same amount went from and to the same accounts
    # within this many seconds (0: no guard). Not part of what the key is bound to.
    guard_s: int = 0

    @property
    def digest(self) -> str:
        """What an idempotency key is bound to: the same key with another digest is a
        different request."""
        body = msgspec.json.encode([self.from_account, self.to_account, self.amount, self.memo])
        return hashlib.sha256(body).hexdigest()


def idempotency_key(value: str | None) -> str | None:
    """The one rule for an idempotency key, from a header or a form's hidden field."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY or not value.isascii() or not value.isprintable():
        raise errors.InvalidField(
            f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters",
            "Idempotency-Key",
        )
    return value


def memo_text(value: str | None) -> str:
    """The one rule for a memo: optional, at most MAX_MEMO characters of text
    (``server.domain.text``)."""
    return "" if value is None else text.check(value, "memo", MAX_MEMO)


def order(
    user_id: str,
    from_account: str,
    to_account: str,
    amount: object,
    memo: str | None = None,
    key: str | None = None,
    guard_s: int = 0,
) -> Order:
    """A transfer request checked against every rule that needs no database.
    ``guard_s``: refuse it (``possible_duplicate``) if the same amount went to the same
    account within that many seconds."""
    if not 0 <= guard_s <= MAX_GUARD_S:
        raise errors.InvalidField(
            f"guard_duplicates_s must be from 1 to {MAX_GUARD_S}", "guard_duplicates_s"
        )
    return Order(
        user_id,
        from_account,
        to_account,
        parse_amount(amount),
        memo_text(memo),
        idempotency_key(key),
        guard_s,
    )


def check_parties(order: Order, src: Account | None, dst: Account | None) -> None:
    """Refuse ``order`` unless money may go from ``src`` (the sender's own account, as
    read) to ``dst`` (the recipient's): a user account, another one, the same currency,
    neither frozen. What keeps the recipient's account from taking it is never said
    (``RecipientUnavailable``): that is its owner's business."""
    if src is None:
        raise errors.AccountNotFound("no such account of yours", "from_account")
    if dst is None or dst.kind is not AccountKind.USER:
        raise errors.AccountNotFound("no such recipient account", "to_account")
    if src.id == dst.id:
        raise errors.SameAccount("cannot transfer to the same account", "to_account")
    if not src.active:
        raise errors.AccountFrozen("the account is frozen", "from_account")
    if src.currency != dst.currency or not dst.active:
        raise errors.RecipientUnavailable()


def can_spend(account: Account, amount: int) -> bool:
    """Whether ``account`` can hold ``amount`` now (the bank's funding accounts always)."""
    return account.kind is AccountKind.FUNDING or account.balance.available >= amount


def insufficient(balance: Balance) -> errors.InsufficientFunds:
    return errors.InsufficientFunds(
        f"the available balance ({format_amount(balance.available)}) is lower than the amount",
        "amount",
    )


class Preview(msgspec.Struct, frozen=True):
    """What sending would do: the sender's balance after it, or why it would be refused
    (both, when the amount is more than is available); ``requires_passkey``: it would be
    accepted awaiting its sender's passkey (``SETTLE_CONFIRM_ABOVE``)."""

    balance_after: Balance | None
    error: errors.SettleError | None
    requires_passkey: bool = False


def preview(order: Order, src: Account | None, dst: Account | None) -> Preview:
    """The sender's balance as accepting ``order`` would leave it, or the rule that
    would refuse it."""
    try:
        check_parties(order, src, dst)
    except errors.SettleError as exc:
        return Preview(None, exc)
    assert src is not None
    after = src.balance.holding(order.amount)
    return Preview(after, None if can_spend(src, order.amount) else insufficient(src.balance))


def possible_duplicate(earlier: Transfer, at: int) -> errors.PossibleDuplicate:
    """The duplicate guard's refusal: ``earlier`` went the same way a moment ago."""
    ago = max(1, (at - earlier.created_at) // 1_000_000)
    return errors.PossibleDuplicate(
        f"the same amount went to {earlier.to_name} {ago} s ago; send again"
        " without the guard to send it twice",
        earlier,
    )
