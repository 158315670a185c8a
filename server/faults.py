"""Fault injection for the crash and chaos tests (``SETTLE_CRASH_POINT``).

At a named point a process kills itself with SIGKILL, as an OOM kill or a power cut
would: no cleanup, no rollback from our side, no response to the client.

- ``settle-before-commit``: a worker, inside a settlement transaction, after posting
  its entries and before COMMIT;
- ``accept-after-commit``: a web process, after committing an accepted transfer and
  before enqueueing its settlement job and publishing its events.
"""

from __future__ import annotations

import logging
import os
import signal

from server.settings import Settings

log = logging.getLogger("settle.faults")

POINTS = ("settle-before-commit", "accept-after-commit")


def crash_at(settings: Settings, point: str) -> None:
    """SIGKILL this process if ``SETTLE_CRASH_POINT`` names ``point``."""
    assert point in POINTS, point
    if settings.crash_point == point:
        log.error("SETTLE_CRASH_POINT=%s: killing this process", point)
        os.kill(os.getpid(), signal.SIGKILL)
