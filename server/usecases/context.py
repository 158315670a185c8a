"""What a use case needs, and nothing it does not: the database, a way to tell the rest
of the system what committed (``Dispatch``), limits, and metrics. The web process and
the worker each build one ``Context``; this package imports nothing of either."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

from server.domain.events import Event
from server.metrics import Metrics
from server.settings import Settings
from server.store import Store


class Dispatch(Protocol):
    """After a commit: queue settlement and publish events (``server.live.dispatch``).
    Best-effort by design: the database already holds the truth, so a failure here is
    logged, never raised (the sweeper re-queues, subscribers catch up from the log)."""

    async def after_commit(self, events: Sequence[Event], settle: Iterable[int] = ()) -> None:
        """Publish ``events`` and wake the drainers of the partitions in ``settle``."""
        ...

    async def publish(self, events: Sequence[Event]) -> None: ...

    async def ring(self, partitions: Iterable[int]) -> None:
        """Wake (or start) the partitions' drainers (the sweeper's, for transfers
        pending past their due time)."""
        ...


class Unpublished:
    """A ``Dispatch`` where no Redis runs, so no web process or worker is there to be
    told (a command run while settle is stopped): subscribers catch up from the log."""

    async def after_commit(self, events: Sequence[Event], settle: Iterable[int] = ()) -> None:
        return None

    async def publish(self, events: Sequence[Event]) -> None:
        return None

    async def ring(self, partitions: Iterable[int]) -> None:
        return None


class RateLimit(Protocol):
    async def check(self, user_id: str, kind: str) -> None:
        """Count one ``kind`` of attempt ("transfers", "previews") for ``user_id``;
        raise ``errors.RateLimited`` past the limit."""
        ...


class NoLimit:
    """No rate limit (the worker and the command line act for nobody in particular)."""

    async def check(self, user_id: str, kind: str) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    dispatch: Dispatch
    rate: RateLimit = dataclasses.field(default_factory=NoLimit)
    # The web process's counters (accepted, cancelled); None where nobody reads them.
    metrics: Metrics | None = None
