"""What a socket is sent, and the queue it waits in: the hub (``server.live.hub``) puts
items in a socket's ``Inbox``; the socket's sender (``server.web.ws``) takes them out."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One message for a socket, already serialized: fan-out encodes it once for all."""

    seq: int
    text: str
    is_event: bool = True


# Put in a subscription's queue after a Redis reconnect: "events may have been lost".
RESYNC = Outgoing(seq=-1, text="", is_event=False)
# Put in a subscription's queue when its socket must close (``Subscription.close_code``).
STOP = Outgoing(seq=-2, text="", is_event=False)


class Inbox:
    """A socket's bounded queue of outgoing items. Its reader (the socket's sender,
    ``server.web.ws``) is told by ``notify`` that something arrived and ``take``s it all.

    An idle socket's holds empty slots: the deque exists only while items wait (an
    ``asyncio.Queue``, with its three deques and an Event, costs about 3 KB a socket)."""

    __slots__ = ("_items", "maxsize", "notify")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Outgoing] | None = None
        # Called after each put: a socket's sender starts when there is something to
        # send, instead of waiting with a task of its own while idle.
        self.notify: Callable[[], None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def put_nowait(self, item: Outgoing, bounded: bool = True) -> None:
        """Queue ``item``; QueueFull at ``maxsize`` unless not ``bounded`` (STOP)."""
        items = self._items
        if items is None:
            items = self._items = deque()
        elif bounded and len(items) >= self.maxsize:
            raise asyncio.QueueFull
        items.append(item)
        if self.notify is not None:
            self.notify()

    def take(self) -> list[Outgoing]:
        """Every queued item, without waiting (none: an empty list)."""
        items, self._items = self._items, None
        return list(items) if items else []
