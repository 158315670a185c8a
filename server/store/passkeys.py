"""Passkeys: each user's WebAuthn credentials, the single-use challenges of registering
and removing them, and what confirming an awaiting transfer reads, as reads and
transaction bodies (``server.store``). The ceremonies themselves are
``server.usecases.passkeys``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from server.domain import errors
from server.domain.model import Status, Transfer
from server.store import Conn, Store, findable
from server.store.schema import accounts, passkey_challenges, passkeys, transfers


@dataclasses.dataclass(frozen=True)
class Passkey:
    """One of a user's passkeys (``id``: the credential id, base64url)."""

    id: str
    user_id: str
    name: str
    public_key: str  # base64url of the COSE key
    sign_count: int
    created_at: int
    last_used_at: int | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Passkey:
        last = row["last_used_at"]
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            name=row["name"],
            public_key=row["public_key"],
            sign_count=int(row["sign_count"]),
            created_at=int(row["created_at"]),
            last_used_at=None if last is None else int(last),
        )


_OF_USER = (
    sa.select(passkeys)
    .where(passkeys.c.user_id == sa.bindparam("uid"))
    .order_by(passkeys.c.created_at, passkeys.c.id)
)
_BY_ID = sa.select(passkeys).where(passkeys.c.id == sa.bindparam("pid"))
_EXISTS = sa.select(passkeys.c.user_id).where(passkeys.c.id == sa.bindparam("pid"))
# The counter only moves forward, from the value the assertion was checked against: of
# two assertions checked at once, one counts.
_USED = (
    passkeys.update()
    .where(passkeys.c.id == sa.bindparam("pid"), passkeys.c.sign_count == sa.bindparam("was"))
    .values(sign_count=sa.bindparam("count"), last_used_at=sa.bindparam("at"))
    .returning(passkeys.c.id)
)
_RENAME = (
    passkeys.update()
    .where(passkeys.c.id == sa.bindparam("pid"), passkeys.c.user_id == sa.bindparam("uid"))
    .values(name=sa.bindparam("name"))
    .returning(passkeys.c.id)
)
_REMOVE = (
    passkeys.delete()
    .where(passkeys.c.id == sa.bindparam("pid"), passkeys.c.user_id == sa.bindparam("uid"))
    .returning(passkeys.c.id)
)
_TAKE_CHALLENGE = (
    passkey_challenges.delete()
    .where(
        passkey_challenges.c.challenge == sa.bindparam("challenge"),
        passkey_challenges.c.user_id == sa.bindparam("uid"),
        passkey_challenges.c.purpose == sa.bindparam("purpose"),
        passkey_challenges.c.expires_at > sa.bindparam("at"),
    )
    .returning(passkey_challenges.c.challenge)
)
_OLD_CHALLENGES = passkey_challenges.delete().where(
    passkey_challenges.c.expires_at <= sa.bindparam("at")
)
# A transfer the user sent, with its nonce (sender only: a recipient does not know of an
# awaiting transfer, anyone else never).
_SENT = (
    sa.select(transfers)
    .join(accounts, accounts.c.id == transfers.c.from_account)
    .where(transfers.c.id == sa.bindparam("tid"), accounts.c.user_id == sa.bindparam("uid"))
)


async def of_user(store: Store, user_id: str) -> list[Passkey]:
    return [Passkey.of(r) for r in await store.fetch_all(_OF_USER, {"uid": user_id})]


async def by_id(store: Store, passkey_id: str) -> Passkey | None:
    row = await store.fetch_one(_BY_ID, {"pid": passkey_id})
    return None if row is None else Passkey.of(row)


async def add(conn: Conn, key: Passkey) -> None:
    """Keep a new passkey; PasskeyInvalid if the credential is already someone's."""
    if await conn.fetch_val(_EXISTS, {"pid": key.id}) is not None:
        raise errors.PasskeyInvalid("this passkey is already registered")
    await conn.execute(passkeys.insert().values(**dataclasses.asdict(key)))


async def used(conn: Conn, key: Passkey, sign_count: int, at: int) -> None:
    """The passkey made an assertion with ``sign_count``: ConfirmationInvalid if another
    was counted since it was read (the same assertion twice, say)."""
    changed = await conn.fetch_val(
        _USED, {"pid": key.id, "was": key.sign_count, "count": sign_count, "at": at}
    )
    if changed is None:
        raise errors.ConfirmationInvalid("this passkey was used again meanwhile")


async def rename(store: Store, user_id: str, passkey_id: str, name: str) -> None:
    async def body(conn: Conn) -> None:
        values = {"pid": passkey_id, "uid": user_id, "name": name}
        if await conn.fetch_val(_RENAME, values) is None:
            raise errors.NotFound("no such passkey of yours")

    await store.transaction(body)


async def remove(conn: Conn, user_id: str, passkey_id: str) -> None:
    if await conn.fetch_val(_REMOVE, {"pid": passkey_id, "uid": user_id}) is None:
        raise errors.NotFound("no such passkey of yours")


async def new_challenge(
    store: Store, user_id: str, purpose: str, challenge: str, expires_at: int, at: int
) -> None:
    """Keep a registration's (or removal's) challenge until it is used or expires (and
    forget the expired ones)."""

    async def body(conn: Conn) -> None:
        await conn.execute(_OLD_CHALLENGES, {"at": at})
        await conn.execute(
            passkey_challenges.insert().values(
                challenge=challenge, user_id=user_id, purpose=purpose, expires_at=expires_at
            )
        )

    await store.transaction(body)


async def take_challenge(conn: Conn, user_id: str, purpose: str, challenge: str, at: int) -> None:
    """Spend a challenge: PasskeyInvalid unless it is this user's, for this, unexpired
    and unused."""
    values = {"challenge": challenge, "uid": user_id, "purpose": purpose, "at": at}
    if await conn.fetch_val(_TAKE_CHALLENGE, values) is None:
        raise errors.PasskeyInvalid("this ceremony expired or was already used: start again")


@dataclasses.dataclass(frozen=True)
class Sent:
    """A transfer the user sent, and while it awaits their passkey its challenge's
    nonce (None otherwise)."""

    transfer: Transfer
    nonce: str | None

    @property
    def awaiting(self) -> bool:
        return self.transfer.status is Status.AWAITING and self.nonce is not None


async def sent(store: Store, user_id: str, transfer_id: str) -> Sent:
    """A transfer the user sent; TransferNotFound if it is not theirs (as if it did not
    exist: a recipient is not told of a transfer awaiting its sender's passkey)."""
    row = await store.fetch_one(_SENT, {"tid": findable(transfer_id), "uid": user_id})
    if row is None:
        raise errors.TransferNotFound("no such transfer of yours")
    nonce = row["confirm_nonce"]
    return Sent(Transfer.of(row), None if nonce is None else str(nonce))
