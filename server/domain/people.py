"""People as settle names them: a username (the handle, case-insensitive), the name
they go by (their display name, shown with the username everywhere), and the time zone
their months and times are read in. Rules only, no database."""

from __future__ import annotations

import zoneinfo

from server.domain import errors, text

MAX_USERNAME = 64
MAX_DISPLAY_NAME = 100
MAX_TIME_ZONE = 64


def username_key(username: str) -> str:
    """What a username is looked up and kept unique by: "BOB" is bob."""
    return username.lower()


def username(value: str) -> str:
    """A new username: text (``server.domain.text``), 1 to 64 characters, no spaces."""
    text.check(value, "username", MAX_USERNAME)
    if not value or any(c.isspace() for c in value):
        raise errors.InvalidField("a username is 1 to 64 characters, without spaces", "username")
    return value


def display_name(value: str | None, username: str) -> str:
    """The name a person goes by; their username when they give none."""
    name = (value or "").strip()
    if not name:
        return username
    return text.check(name, "display_name", MAX_DISPLAY_NAME)


def called(username: str, display: str) -> str:
    """A person as the pages name them: "Bob Martin (@bob)", or just "bob" when they go
    by their username (or the display name is not known: older records)."""
    if not display or display == username:
        return username
    return f"{display} (@{username})"


def time_zone(value: str) -> str:
    """An IANA time zone this machine knows ("America/New_York"), else InvalidField."""
    if not value or len(value) > MAX_TIME_ZONE or value != value.strip():
        raise errors.InvalidField("time_zone must be an IANA time zone name", "time_zone")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise errors.InvalidField(f"unknown time zone {value!r}", "time_zone") from None
    return value


def zone(name: str) -> zoneinfo.ZoneInfo:
    """A person's zone: the one they set, else UTC (also for a zone no longer known)."""
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return zoneinfo.ZoneInfo("UTC")
