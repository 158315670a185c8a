"""The rules of money entering the ledger (server/domain/ledger.py), on typed values
alone: who may send what to whom, what a preview says, what a key is bound to."""

from __future__ import annotations

import pytest

from server.domain import errors, ledger
from server.domain.ledger import Order, check_parties, order, preview
from server.domain.model import Account, AccountKind, AccountStatus, Balance


def account(
    id_: str = "acc_a",
    currency: str = "USD",
    status: AccountStatus = AccountStatus.ACTIVE,
    kind: AccountKind = AccountKind.USER,
    posted: int = 10_000,
) -> Account:
    return Account(id_, "Main", id_[-1], currency, status, kind, Balance(posted), 0)


SENDER, RECIPIENT = account("acc_a"), account("acc_b", posted=0)
FROZEN_SENDER = account("acc_a", status=AccountStatus.FROZEN)
FROZEN_RECIPIENT = account("acc_b", status=AccountStatus.FROZEN)
ORDER = Order("usr_a", "acc_a", "acc_b", 2_500)


@pytest.mark.parametrize(
    ("src", "dst", "refusal", "field"),
    [
        (None, RECIPIENT, errors.AccountNotFound, "from_account"),
        (SENDER, None, errors.AccountNotFound, "to_account"),
        (SENDER, account("acc_f", kind=AccountKind.FUNDING), errors.AccountNotFound, "to_account"),
        (SENDER, SENDER, errors.SameAccount, "to_account"),
        (SENDER, account("acc_b", currency="EUR"), errors.RecipientUnavailable, "to_account"),
        (FROZEN_SENDER, RECIPIENT, errors.AccountFrozen, "from_account"),
        (SENDER, FROZEN_RECIPIENT, errors.RecipientUnavailable, "to_account"),
    ],
)  # fmt: skip
def test_each_rule_refuses_with_its_code_and_field(
    src: Account | None, dst: Account | None, refusal: type[errors.SettleError], field: str
) -> None:
    with pytest.raises(refusal) as raised:
        check_parties(ORDER, src, dst)
    assert raised.value.field == field


def test_a_preview_holds_the_amount_and_says_when_it_is_more_than_available() -> None:
    fits = preview(ORDER, SENDER, RECIPIENT)
    assert fits.error is None and fits.balance_after == Balance(10_000, 2_500, 0)
    too_much = preview(Order("usr_a", "acc_a", "acc_b", 10_001), SENDER, RECIPIENT)
    assert isinstance(too_much.error, errors.InsufficientFunds)
    assert "100.00" in too_much.error.message and too_much.balance_after is not None
    refused = preview(ORDER, SENDER, SENDER)
    assert isinstance(refused.error, errors.SameAccount) and refused.balance_after is None


def test_the_banks_funding_account_may_always_spend() -> None:
    funding = account("acc_f", kind=AccountKind.FUNDING, posted=-(10**9))
    assert ledger.can_spend(funding, 10**9) and not ledger.can_spend(SENDER, 10_001)


def test_a_key_is_bound_to_the_money_not_to_the_guard_or_the_key_itself() -> None:
    same = Order("usr_a", "acc_a", "acc_b", 2_500, "", "k2", guard_s=120)
    assert same.digest == ORDER.digest
    for other in (
        Order("usr_a", "acc_a", "acc_b", 2_501),
        Order("usr_a", "acc_a", "acc_c", 2_500),
        Order("usr_a", "acc_a", "acc_b", 2_500, "rent"),
    ):
        assert other.digest != ORDER.digest


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("0", errors.AmountProblem.NOT_POSITIVE),
        ("1000000000.01", errors.AmountProblem.TOO_LARGE),
        ("1.234", errors.AmountProblem.MALFORMED),
        ("1e3", errors.AmountProblem.MALFORMED),
        (True, errors.AmountProblem.MALFORMED),
    ],
)
def test_an_order_names_what_is_wrong_with_its_amount(
    amount: object, problem: errors.AmountProblem
) -> None:
    with pytest.raises(errors.InvalidAmount) as raised:
        order("usr_a", "acc_a", "acc_b", amount)
    assert raised.value.problem is problem


@pytest.mark.parametrize(
    ("key", "guard", "memo"),
    [("", 0, ""), ("x" * 256, 0, ""), ("caf\u00e9", 0, ""), ("k", 3601, ""), ("k", 0, "a\x00b")],
)
def test_an_order_refuses_bad_keys_guards_and_memos(key: str, guard: int, memo: str) -> None:
    with pytest.raises(errors.InvalidField):
        order("usr_a", "acc_a", "acc_b", "1.00", memo, key, guard)


def test_an_order_keeps_what_was_asked_exactly() -> None:
    made = order("usr_a", "acc_a", "acc_b", "12.3", "lunch", "key-1", 60)
    assert made == Order("usr_a", "acc_a", "acc_b", 1230, "lunch", "key-1", 60)
