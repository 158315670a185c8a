"""What text settle accepts from a client, in every field: the one place that decides.

Text must be valid Unicode (JSON can carry lone surrogates, ``"\\ud800"``, which no
database or encoder takes), hold no NUL (PostgreSQL text cannot), and, where a person
will read it back (memos, names, ids), no control characters, direction overrides or
line separators.
"""

from __future__ import annotations

import re

from server.domain import errors

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Text that rearranges what surrounds it when shown: bidirectional embeddings, overrides
# and isolates (a memo that reads "gro.knab" as "bank.org"), and line and paragraph
# separators (a memo that starts a fake line in a statement or a log).
_LAYOUT = re.compile("[\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def check(value: str, field: str, max_len: int, *, controls: bool = False) -> str:
    """``value`` if it is acceptable text for ``field``, else InvalidField saying why.
    ``controls``: control characters other than NUL are allowed (passwords)."""
    if len(value) > max_len:
        raise errors.InvalidField(f"{field} must be at most {max_len} characters", field)
    if "\x00" in value:
        raise errors.InvalidField(f"{field} must not contain NUL characters", field)
    if _SURROGATE.search(value):
        raise errors.InvalidField(f"{field} must be valid Unicode text", field)
    if not controls and _CONTROL.search(value):
        raise errors.InvalidField(f"{field} must not contain control characters", field)
    if not controls and _LAYOUT.search(value):
        raise errors.InvalidField(
            f"{field} must not contain direction overrides or line separators", field
        )
    return value
