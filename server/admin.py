"""Account administration: users and their accounts, the bank's funding accounts,
deposits through the ledger, freezing. What ``settle user create``, ``settle demo`` and
``settle account`` do, and what tests use to set the scene."""

from __future__ import annotations

import sqlalchemy as sa

from server import errors, settlement, views
from server.events import Event
from server.schema import accounts, new_id, now_us, transfers, users
from server.store import Conn, Store

BANK_USERNAME = "bank"

_USER_BY_NAME = sa.select(users.c.id).where(users.c.username == sa.bindparam("name"))
_FUNDING = sa.select(accounts.c.id).where(
    accounts.c.kind == "funding", accounts.c.currency == sa.bindparam("currency")
)
_USER_ACCOUNT = (
    sa.select(accounts, users.c.username)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.id == sa.bindparam("acct"), accounts.c.kind == "user")
)
_FUNDING_NAME = sa.select(accounts.c.name).where(accounts.c.id == sa.bindparam("acct"))
_LIST = (
    sa.select(accounts, users.c.username)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.kind == "user")
    .order_by(users.c.username, accounts.c.created_at)
)


async def list_accounts(store: Store, username: str | None = None) -> list[dict[str, str]]:
    """Every user account (or one user's), with its owner, currency, balances and
    status: what ``settle accounts`` prints."""
    query = _LIST if username is None else _LIST.where(users.c.username == username)
    rows = await store.fetch_all(query)
    out = []
    for r in rows:
        balance = views.balance_of(r)
        out.append(
            {
                "id": r["id"],
                "owner": r["username"],
                "currency": r["currency"],
                "available": balance["available"],
                "posted": balance["posted"],
                "status": r["status"],
            }
        )
    return out


async def create_user(
    store: Store, username: str, password_hash: str, currency: str = "USD"
) -> tuple[str, str]:
    """Create a user and their first account; returns (user id, account id)."""
    user_id, account_id, at = new_id("usr"), new_id("acc"), now_us()

    async def body(conn: Conn) -> None:
        if await conn.fetch_val(_USER_BY_NAME, {"name": username}) is not None:
            raise errors.InvalidField(f"user {username!r} already exists", "username")
        await conn.execute(
            users.insert().values(
                id=user_id, username=username, password_hash=password_hash, created_at=at
            )
        )
        await conn.execute(
            accounts.insert().values(
                id=account_id,
                user_id=user_id,
                name="Main",
                currency=currency,
                kind="user",
                status="active",
                created_at=at,
            )
        )

    await store.transaction(body)
    return user_id, account_id


async def _funding_account(conn: Conn, currency: str) -> str:
    """The bank's funding account for a currency, created on first use."""
    found = await conn.fetch_val(_FUNDING, {"currency": currency})
    if found is not None:
        return str(found)
    bank = await conn.fetch_val(_USER_BY_NAME, {"name": BANK_USERNAME})
    at = now_us()
    if bank is None:
        bank = new_id("usr")
        # "!" is never a valid scrypt hash: nobody can log in as the bank.
        await conn.execute(
            users.insert().values(
                id=bank,
                username=BANK_USERNAME,
                password_hash="!",  # noqa: S106
                created_at=at,
            )
        )
    account_id = new_id("acc")
    await conn.execute(
        accounts.insert().values(
            id=account_id,
            user_id=bank,
            name=f"Funding {currency}",
            currency=currency,
            kind="funding",
            status="active",
            created_at=at,
        )
    )
    return account_id


async def deposit(store: Store, account_id: str, amount: int, memo: str = "Deposit") -> list[Event]:
    """Fund a user account from the bank's funding account, through the ledger: a
    transfer completed at once, with its two entries and both accounts' events."""

    async def body(conn: Conn) -> list[Event]:
        dst = await conn.fetch_one(_USER_ACCOUNT, {"acct": account_id})
        if dst is None:
            raise errors.AccountNotFound(f"no user account {account_id!r}")
        src_id = await _funding_account(conn, dst["currency"])
        bank = await conn.fetch_val(sa.select(accounts.c.user_id).where(accounts.c.id == src_id))
        funding_name = await conn.fetch_val(_FUNDING_NAME, {"acct": src_id})
        values = {
            "id": new_id("tr"),
            "from_account": src_id,
            "to_account": account_id,
            "amount": amount,
            "currency": dst["currency"],
            "memo": memo,
            "status": "completed",
            "failure_reason": None,
            "created_by": bank,
            "created_at": 0,  # the plan's time, below
            "settled_at": 0,
            "from_name": funding_name,
            "to_name": views.party_name(dst),
            "kind": "deposit",
            "expires_at": None,
        }
        # Posted like any settlement: both accounts locked first (in id order, as every
        # transaction locks them), entries appended to their chains, balances and events
        # written (server.settlement).
        plan = await settlement.locked_plan(conn, [values], now_us())
        values["created_at"] = values["settled_at"] = plan.at
        await conn.execute(transfers.insert().values(**values))
        plan.deposit(values)
        await settlement.write(conn, plan)
        return plan.events

    return await store.transaction(body)


async def set_status(store: Store, account_id: str, status: str) -> None:
    """Freeze or unfreeze an account. Pending transfers into a frozen account fail at
    settlement (``account_frozen``)."""

    async def body(conn: Conn) -> None:
        changed = await conn.fetch_val(
            accounts.update()
            .where(accounts.c.id == account_id, accounts.c.kind == "user")
            .values(status=status)
            .returning(accounts.c.id)
        )
        if changed is None:
            raise errors.AccountNotFound(f"no user account {account_id!r}")

    await store.transaction(body)
