"""Logging: one line per record, and nothing a client sent can forge a line or leak.

Every record is written as one line, whoever logs it (settle, uvicorn, arq): its control
characters are escaped, the newlines of a traceback included (a ``%0a`` in a request
path cannot start a fake line, a ``%00`` writes ``\\x00``, not a NUL byte, and a
traceback is one line a log shipper keeps whole). uvicorn's lines about WebSocket
handshakes lose their query strings, where careless clients put credentials. settle's
own request log never writes query strings or headers.
"""

from __future__ import annotations

import logging
import re

from server.settings import LOG_FORMAT

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x00``)."""

    def one(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(one, text)


class EscapingFormatter(logging.Formatter):
    """Writes a record as one line: the message, and any traceback or stack the record
    carries, with every control character escaped (a traceback's newlines become
    ``\\x0a``)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


class NoQueryStrings(logging.Filter):
    """Drops the query string from uvicorn's ``"WebSocket /ws?..."`` lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if '"WebSocket %s"' in str(record.msg) and isinstance(record.args, tuple):
            args = list(record.args)
            if len(args) >= 2:
                args[1] = str(args[1]).split("?", 1)[0]
                record.args = tuple(args)
        return True


def configure(level: int = logging.INFO) -> None:
    """Every settle process logs to standard error through one such handler (uvicorn's
    loggers included: its own logging configuration is not used)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    handler.addFilter(NoQueryStrings())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


# Libraries whose routine INFO lines drown settle's own: arq logs every job (the
# sweeper's twice every 2 s), alembic every migration step. At the default level they
# speak only from WARNING up; the sweeper logs itself when it finds work.
CHATTY = ("arq", "alembic")


def quiet_libraries(level: str = "info") -> None:
    """Quiet the chatty libraries, unless ``level`` (SETTLE_LOG_LEVEL) is "debug"."""
    verbose = level.lower() == "debug"
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
