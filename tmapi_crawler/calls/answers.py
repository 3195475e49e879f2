"""The downloader middleware that acts on TMAPI's answers; what it does with
each code is the README's table (docs/behaviour.md).

Invariants:

* It replaces Scrapy's ``RetryMiddleware`` (same priority, 550) and sits
  engine-side of ``HttpCompressionMiddleware``, so it sees decoded bodies.
* An error code is the same whether it came as the HTTP status or as HTTP
  200 with the code in the body (:func:`tmapi_crawler.api.envelope_of`).
* Retries go through Scrapy's ``get_retry_request``; their backoff is waited
  in ``process_request``, before the download slot, so that a waiting retry
  holds no place another call could use.
* 503 and 439 never count as attempts and never become failure records.
* A request refused because the crawl is stopping goes back to the
  scheduler, so that a resumable crawl keeps it.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.utils.asyncio import sleep
from scrapy.utils.misc import load_object

from tmapi_crawler.api import (
    API_SLOT,
    DOWNLOAD_SLOT,
    KEPT_FLAG,
    STORED_FLAG,
    ApiError,
    MalformedAnswer,
    Outcome,
    envelope_of,
)
from tmapi_crawler.calls.gate import CrawlStopping, gate_of
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.reasons import FinishReason

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

    from tmapi_crawler.config import TmapiConfig

logger = logging.getLogger(__name__)

BACKOFF_META = "tmapi_backoff"
#: Seconds a call answered 503 waits before it is sent again.
CONCURRENCY_RETRY_DELAY = 0.5


def retry_exceptions(settings: BaseSettings) -> tuple[type[Exception], ...]:
    """``RETRY_EXCEPTIONS``, loaded."""
    return tuple(load_object(x) if isinstance(x, str) else x for x in settings.getlist("RETRY_EXCEPTIONS"))


def retry_later(
    crawler: Crawler,
    config: TmapiConfig,
    request: Request,
    reason: str | Exception,
    times: int,
    stats_key: str,
    rng: random.Random,
) -> Request | None:
    """Scrapy's retry of *request* (``None`` after *times* retries, logged
    at DEBUG only: a failure record says it), to be sent after an
    exponential backoff with jitter: 1x, 2x, 4x ... ``TMAPI_RETRY_BACKOFF``,
    capped at ``TMAPI_RETRY_BACKOFF_MAX`` (waited by the middleware that
    finds :data:`BACKOFF_META`)."""
    assert crawler.spider is not None
    retry = get_retry_request(
        request,
        spider=crawler.spider,
        reason=reason,
        max_retry_times=times,
        logger=logger,
        give_up_log_level=logging.DEBUG,
        stats_base_key=stats_key,
    )
    if retry is not None:
        attempt = retry.meta["retry_times"]
        delay = min(config.retry_backoff_max, config.retry_backoff * 2 ** (attempt - 1))
        retry.meta[BACKOFF_META] = delay * rng.uniform(0.5, 1.5)
    return retry


class AnswerMiddleware:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config_from_settings(crawler.settings)
        self.retry_exceptions = retry_exceptions(crawler.settings)
        self.rng = random.Random()
        self.gate = gate_of(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_request(self, request: Request) -> Request | None:
        if "tmapi" not in request.meta:
            return None
        # A call queued by an earlier version (JOBDIR, Redis) gets the API's slot too.
        request.meta.setdefault(DOWNLOAD_SLOT, API_SLOT)
        if self.gate.stop_reason is not None:
            return self._keep(request)
        delay = request.meta.pop(BACKOFF_META, None)
        if delay:
            await sleep(delay)
            if self.gate.stop_reason is not None:
                return self._keep(request)
        return None

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if "tmapi" not in request.meta or STORED_FLAG in response.flags or KEPT_FLAG in response.flags:
            return response  # answered without a call (the store, or an answer an earlier run paid for)
        try:
            envelope = envelope_of(response)
        except MalformedAnswer as exc:
            self.stats.inc_value("tmapi/codes/malformed")
            raise ApiError(None, f"malformed answer: {exc.problem}", snippet=exc.snippet) from None
        code, outcome = envelope.code, envelope.outcome
        self.stats.inc_value(f"tmapi/codes/{code}")
        if outcome is Outcome.OK:
            self.stats.inc_value("tmapi/billed")
            return response
        if outcome is Outcome.RETRY:
            retry = self._retry(request, f"tmapi_{code}")
            if retry is not None:
                return retry
        elif outcome is Outcome.CONCURRENCY:
            self.stats.inc_value("tmapi/throttle/503")
            later = request.replace(dont_filter=True)
            later.meta[BACKOFF_META] = CONCURRENCY_RETRY_DELAY * self.rng.uniform(0.5, 1.5)
            return later
        elif outcome is Outcome.QUOTA:
            # The gate pauses every call; this one waits there like the others.
            return request.replace(dont_filter=True)
        elif outcome is Outcome.AUTH:
            if self.gate.stop_reason is None:
                logger.error(
                    "TMAPI refused the token (%s: %s): check TMAPI_TOKEN in the TMAPI console, "
                    "then run the same command again",
                    code,
                    envelope.msg,
                )
                self.gate.stop(FinishReason.AUTH_FAILED)
            return self._keep(request)
        raise ApiError(code, envelope.msg)

    def process_exception(self, request: Request, exception: Exception) -> Request | None:
        if "tmapi" not in request.meta:
            return None
        if isinstance(exception, CrawlStopping):
            return self._keep(request)
        if not isinstance(exception, self.retry_exceptions):
            return None
        return self._retry(request, exception)

    def _retry(self, request: Request, reason: str | Exception) -> Request | None:
        # The errback logs the failure, once.
        return retry_later(
            self.crawler, self.config, request, reason, self.config.retry_times, "tmapi/retries", self.rng
        )

    def _keep(self, request: Request) -> Request:
        """Hand *request* back to the scheduler; the engine is closing, so it
        stays there (and in ``JOBDIR``) for the next run."""
        kept = request.replace(dont_filter=True)
        kept.meta.pop(BACKOFF_META, None)
        return kept
