"""The token is added here, at the very last moment, and nowhere else.

Scrapy logs, caches, queues, fingerprints and signals requests at many points
between the spider and the socket, and every downloader middleware (even the
last one) hands its request to code that may log it.  So the request that
Scrapy knows never carries the token: :class:`TokenDownloadHandler` wraps the
HTTP download handler, sends a copy of the request with ``apiToken`` added,
and gives Scrapy back a response whose URL and request are the token-free
originals.  An exception whose message carries the URL (a timeout, say) is
re-raised with the token masked.

It is also where a call is admitted (:mod:`tmapi_crawler.throttle`: the
account's concurrency limit, the 439 pause, the budget) and counted
(``tmapi/calls``): the last moment before it is really sent.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers.base import BaseDownloadHandler
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import build_from_crawler, load_object
from w3lib.url import add_or_replace_parameter

from tmapi_crawler.api import TOKEN_PARAM, Outcome, endpoint_of, outcome_of
from tmapi_crawler.config import REDACTED, config_from_settings
from tmapi_crawler.throttle import gate_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

#: The handler that really downloads (Scrapy's default for http and https).
INNER_HANDLER = "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"


def token_of(crawler: Crawler) -> str | None:
    """The token, as the add-on took it out of the settings."""
    from tmapi_crawler.addon import TmapiAddon

    addon = crawler.get_addon(TmapiAddon)
    if addon is not None:
        return addon.token
    return config_from_settings(crawler.settings).token


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
    """A log handler filter that masks the token in messages and tracebacks:
    a second line of defence, since no request Scrapy logs carries it."""

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
    the call that takes the masking off again (when the crawl is over)."""
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


class TokenDownloadHandler(BaseDownloadHandler):
    lazy = False

    def __init__(self, crawler: Crawler):
        super().__init__(crawler)
        config = config_from_settings(crawler.settings, token=token_of(crawler))
        self.token = config.token
        self.api_host = config.api_host
        self.stats = crawler.stats
        self.gate = gate_of(crawler)
        inner_cls = load_object(crawler.settings.get("TMAPI_INNER_DOWNLOAD_HANDLER", INNER_HANDLER))
        self.inner: Any = build_from_crawler(inner_cls, crawler)

    async def download_request(self, request: Request) -> Response:
        endpoint = endpoint_of(request)
        if endpoint is None or urlparse_cached(request).netloc != self.api_host or not self.token:
            # Not an API call (or no token to add): nothing of ours to add.
            return await self.inner.download_request(request)
        # Waits for a place among the account's calls in flight; raises
        # CrawlStopping when the crawl stops (budget, 439, bad token).
        ticket = await self.gate.acquire()
        sent = request.replace(url=add_or_replace_parameter(request.url, TOKEN_PARAM, self.token))
        self.stats.inc_value("tmapi/calls")
        self.stats.inc_value(f"tmapi/calls/{endpoint.value}")
        outcome: Outcome | None = None
        try:
            response: Response = await self.inner.download_request(sent)
            response = response.replace(url=request.url, request=request)
            outcome = outcome_of(response)
        except Exception as exc:
            clean = redact_exception(exc, self.token)
            if clean is None:
                raise
            raise clean from None
        finally:
            self.gate.release(ticket, outcome)
        return response

    async def close(self) -> None:
        await self.inner.close()
