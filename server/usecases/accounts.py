"""The use cases of an account's life: funding it from the bank, freezing and
unfreezing it. Each runs one transaction that appends the account's events, then tells
every screen and subscriber (``Dispatch``), like a transfer does."""

from __future__ import annotations

from server.domain import errors
from server.domain.clock import now_us
from server.domain.events import Event
from server.domain.model import AccountStatus
from server.store import accounts
from server.usecases.context import Context


async def deposit(ctx: Context, account_id: str, amount: int, memo: str = "Deposit") -> list[Event]:
    """Fund a user account from the bank (a transfer completed at once); its events
    reach every open screen of it."""
    events = await ctx.store.transaction(
        lambda conn: accounts.deposit(conn, account_id, amount, memo)
    )
    await ctx.dispatch.publish(events)
    return events


async def freeze(ctx: Context, account_id: str) -> Event | None:
    """Freeze a user account: it can neither send nor receive, transfers pending into
    it fail at settlement, and every open screen of it says so (``account.frozen``).
    None if it already was frozen."""
    return await _set_status(ctx, account_id, AccountStatus.FROZEN)


async def unfreeze(ctx: Context, account_id: str) -> Event | None:
    """Unfreeze a user account (``account.unfrozen``); None if it was not frozen."""
    return await _set_status(ctx, account_id, AccountStatus.ACTIVE)


async def _set_status(ctx: Context, account_id: str, status: AccountStatus) -> Event | None:
    event = await ctx.store.transaction(
        lambda conn: accounts.set_status(conn, account_id, status, now_us())
    )
    if event is not None:
        await ctx.dispatch.publish([event])
    return event


async def account_named(ctx: Context, name: str) -> str:
    """The account ``name`` means on the command line: an account id, or a username
    (that user's first account)."""
    if await accounts.is_user_account(ctx.store, name):
        return name
    found = await accounts.account_of_user(ctx.store, name)
    if found is None:
        raise errors.AccountNotFound(f"no user account or user called {name!r}")
    return found
