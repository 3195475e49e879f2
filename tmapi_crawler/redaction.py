"""Masking secrets where they could still show: the token in exception
messages and logs, and the password of a URL in what is shown of it
(:func:`hide_password`).

No request that Scrapy logs carries the token (the download handler adds it
to a copy, at the last moment), so this is a second line of defence: an
exception raised while the token-bearing copy was being sent, and any log
line, has the token replaced by :data:`REDACTED`.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable

REDACTED = "***"


def redact(text: str, token: str | None) -> str:
    if not token:
        return text
    return text.replace(token, REDACTED)


def redact_exception(exc: BaseException, token: str | None) -> BaseException | None:
    """A copy of *exc* with the token masked in its arguments, or ``None``
    when it does not carry the token."""
    if not token or (token not in repr(exc.args) and token not in str(exc)):
        return None
    clean = copy.copy(exc)
    clean.args = tuple(redact(a, token) if isinstance(a, str) else a for a in exc.args)
    for name, value in vars(clean).items():  # Twisted keeps messages in attributes too
        if isinstance(value, str):
            setattr(clean, name, redact(value, token))
    if token in str(clean):  # an exception that formats its message elsewhere
        return RuntimeError(redact(str(exc), token))
    return clean


class RedactingFilter(logging.Filter):
    """A log handler filter that masks the token in messages and tracebacks."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = redact(message, self.token), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and self.token in record.exc_text:
            record.exc_text = redact(record.exc_text, self.token)
        return True


def redact_logs(token: str | None) -> Callable[[], None]:
    """Mask *token* in everything the root logger's handlers write; returns
    the call that takes the masking off again (when the crawl is over, so
    that a short token does not mask later, unrelated logs)."""
    added: list[tuple[logging.Handler, RedactingFilter]] = []
    if token:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, RedactingFilter) and f.token == token for f in handler.filters):
                added.append((handler, RedactingFilter(token)))
                handler.addFilter(added[-1][1])

    def undo() -> None:
        for handler, log_filter in added:
            handler.removeFilter(log_filter)

    return undo


def hide_password(text: str) -> str:
    """*text* with the password of a URL replaced."""
    try:
        parts = urlsplit(text)
        if parts.password:
            return text.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        pass
    return text
