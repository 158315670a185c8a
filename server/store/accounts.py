"""Accounts in the database: users and their accounts, the bank's funding accounts,
deposits through the ledger, freezing and unfreezing (each with its account's event).
The use cases (``server.usecases.accounts``) run these and tell every screen."""

from __future__ import annotations

import msgspec
import sqlalchemy as sa

from server.domain import errors, people
from server.domain.clock import new_id, now_us
from server.domain.events import Event
from server.domain.model import Account, AccountStatus, EventType, Status, Transfer, TransferKind
from server.store import Conn, Store, findable, settlement
from server.store.ledger import INSERT_EVENT, transfer_row
from server.store.schema import accounts, transfers, users

BANK_USERNAME = "bank"

# By the lower-cased username: "BOB" is bob (``people.username_key``).
_USER_BY_NAME = sa.select(users.c.id).where(users.c.username_lower == sa.bindparam("name"))
_FUNDING = sa.select(accounts.c.id).where(
    accounts.c.kind == "funding", accounts.c.currency == sa.bindparam("currency")
)
_USER_ACCOUNT = (
    sa.select(accounts, users.c.username, users.c.display_name)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.id == sa.bindparam("acct"), accounts.c.kind == "user")
)
_ACCOUNT_OWNER = (
    sa.select(accounts, users.c.username, users.c.display_name)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.id == sa.bindparam("acct"))
)
_OWNER_NAME = sa.select(users.c.username).where(users.c.id == sa.bindparam("uid"))
_FIRST_ACCOUNT_OF = (
    sa.select(accounts.c.id)
    .join(users, users.c.id == accounts.c.user_id)
    .where(users.c.username_lower == sa.bindparam("name"), accounts.c.kind == "user")
    .order_by(accounts.c.created_at)
    .limit(1)
)
_LIST = (
    sa.select(accounts, users.c.username, users.c.display_name)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.kind == "user")
    .order_by(users.c.username, accounts.c.created_at)
)


async def list_accounts(store: Store, username: str | None = None) -> list[Account]:
    """Every user account (or one user's), with its owner: what ``settle accounts``
    prints."""
    if username is None:
        query = _LIST
    else:
        query = _LIST.where(users.c.username_lower == people.username_key(username))
    return [Account.of(r) for r in await store.fetch_all(query)]


async def create_user(
    store: Store,
    username: str,
    password_hash: str,
    currency: str = "USD",
    display_name: str | None = None,
) -> tuple[str, str]:
    """Create a user (who goes by ``display_name``, else their username) and their
    first account; returns (user id, account id)."""
    user_id, account_id, at = new_id("usr"), new_id("acc"), now_us()
    name = people.display_name(display_name, username)

    async def body(conn: Conn) -> None:
        key = people.username_key(username)
        if await conn.fetch_val(_USER_BY_NAME, {"name": key}) is not None:
            raise errors.InvalidField(f"user {username!r} already exists", "username")
        await conn.execute(
            users.insert().values(
                id=user_id,
                username=username,
                username_lower=key,
                display_name=name,
                password_hash=password_hash,
                created_at=at,
            )
        )
        await conn.execute(
            accounts.insert().values(
                id=account_id,
                user_id=user_id,
                name="Main",
                currency=currency,
                kind="user",
                status=AccountStatus.ACTIVE.value,
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
    bank = await conn.fetch_val(_USER_BY_NAME, {"name": people.username_key(BANK_USERNAME)})
    at = now_us()
    if bank is None:
        bank = new_id("usr")
        # "!" is never a valid scrypt hash: nobody can log in as the bank.
        await conn.execute(
            users.insert().values(
                id=bank,
                username=BANK_USERNAME,
                username_lower=people.username_key(BANK_USERNAME),
                display_name=BANK_USERNAME,
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
            status=AccountStatus.ACTIVE.value,
            created_at=at,
        )
    )
    return account_id


async def deposit(conn: Conn, account_id: str, amount: int, memo: str = "Deposit") -> list[Event]:
    """Fund a user account from the bank's funding account, through the ledger: a
    transfer completed at once, with its two entries and both accounts' events (a
    transaction body)."""
    dst = await conn.fetch_one(_USER_ACCOUNT, {"acct": findable(account_id)})
    if dst is None:
        raise errors.AccountNotFound(f"no user account {account_id!r}")
    src_id = await _funding_account(conn, dst["currency"])
    src = await conn.fetch_one(_ACCOUNT_OWNER, {"acct": src_id})
    assert src is not None
    # Posted like any settlement: both accounts locked first (in id order, as every
    # transaction locks them), entries appended to their chains, balances and events
    # written (server.store.settlement), all at the plan's time.
    pending = Transfer(
        id=new_id("tr"),
        kind=TransferKind.DEPOSIT,
        from_account=src_id,
        from_name=Account.of(src).party_name,
        to_account=dst["id"],
        to_name=Account.of(dst).party_name,
        from_display_name=Account.of(src).party_display_name,
        to_display_name=Account.of(dst).party_display_name,
        amount=amount,
        currency=dst["currency"],
        memo=memo,
        status=Status.PENDING,
        failure_reason=None,
        created_at=0,
        settled_at=None,
        expires_at=None,
    )
    plan = await settlement.locked_plan(conn, [pending], now_us())
    done = Transfer.ended(
        msgspec.structs.replace(pending, created_at=plan.at), Status.COMPLETED, plan.at
    )
    row = {**transfer_row(done), "created_by": src["user_id"]}
    await conn.execute(transfers.insert().values(**row))
    plan.deposit(done)
    await settlement.write(conn, plan)
    return plan.events


async def set_status(conn: Conn, account_id: str, status: AccountStatus, at: int) -> Event | None:
    """Freeze or unfreeze a user account, appending its ``account.frozen`` or
    ``account.unfrozen`` event (a transaction body); None if it already was. Pending
    transfers into a frozen account fail at settlement (``recipient_unavailable``)."""
    row = await conn.fetch_one(
        accounts.update()
        .where(
            accounts.c.id == findable(account_id),
            accounts.c.kind == "user",
            accounts.c.status != status.value,
        )
        .values(status=status.value, seq=accounts.c.seq + 1)
        .returning(*accounts.c)
    )
    if row is None:
        if await conn.fetch_one(_USER_ACCOUNT, {"acct": findable(account_id)}) is None:
            raise errors.AccountNotFound(f"no user account {account_id!r}")
        return None
    owner = await conn.fetch_val(_OWNER_NAME, {"uid": row["user_id"]})
    kind = EventType.FROZEN if status is AccountStatus.FROZEN else EventType.UNFROZEN
    event = Event.of_account(kind, Account.of(row, str(owner)), at)
    await conn.execute_many(INSERT_EVENT, [event.log_row()])
    return event


async def account_of_user(store: Store, username: str) -> str | None:
    """The id of a user's oldest account (``settle account freeze USERNAME``)."""
    key = people.username_key(findable(username))
    found = await store.fetch_val(_FIRST_ACCOUNT_OF, {"name": key})
    return None if found is None else str(found)


async def name_user(store: Store, username: str, display_name: str, only_unnamed: bool) -> bool:
    """Set the name a user goes by; with ``only_unnamed``, only if they still go by their
    username (``settle demo`` names its users without renaming anyone). Whether it
    changed."""
    where = [users.c.username_lower == people.username_key(username)]
    if only_unnamed:
        where.append(users.c.display_name == users.c.username)
    name = people.display_name(display_name, username)
    change = users.update().where(*where).values(display_name=name).returning(users.c.id)

    async def body(conn: Conn) -> bool:
        return await conn.fetch_one(change) is not None

    return await store.transaction(body)


async def is_user_account(store: Store, account_id: str) -> bool:
    return await store.fetch_one(_USER_ACCOUNT, {"acct": findable(account_id)}) is not None


async def set_time_zone(store: Store, user_id: str, zone: str, replace: bool = False) -> bool:
    """Keep a user's time zone (an IANA name, checked by ``people.time_zone``); by
    default only while they have none: the browser of their first visit says it, and
    later visits from elsewhere do not move their months. Whether it changed."""
    where = [users.c.id == user_id, users.c.time_zone != zone]
    if not replace:
        where.append(users.c.time_zone == "")
    change = users.update().where(*where).values(time_zone=zone).returning(users.c.id)

    async def body(conn: Conn) -> bool:
        return await conn.fetch_one(change) is not None

    return await store.transaction(body)
