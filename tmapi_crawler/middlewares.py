"""The downloader middleware that acts on TMAPI's answers (SPEC.md's table).

It takes the place of Scrapy's ``RetryMiddleware`` (same priority, 550), sits
engine-side of ``HttpCompressionMiddleware`` so that it sees decoded bodies,
and treats an error code the same whether it came as the HTTP status or as
HTTP 200 with the code in the body:

* 200: counted as billed, passed on; the callback reads the envelope that was
  parsed here (:func:`tmapi_crawler.api.envelope_of` caches it).
* 417, 499, 500, timeouts and connection errors: retried through Scrapy's
  :func:`~scrapy.downloadermiddlewares.retry.get_retry_request`, up to
  ``TMAPI_RETRY_TIMES``, after an exponential backoff with jitter.  The wait
  happens in ``process_request`` before the request reaches its download
  slot, so a waiting retry holds no slot that another call could use.  After
  the last try the error reaches the spider's errback, which writes a failure
  record.
* 422, undocumented codes and malformed answers: :class:`ApiError` at once.
* 503: sent again after a short pause, never counted as an attempt, never a
  failure record; the gate (:mod:`tmapi_crawler.throttle`) lowers the number
  of calls in flight.
* 439: sent again, never counted as an attempt; the gate pauses all calls and
  probes until the balance is back or ``TMAPI_QUOTA_WAIT`` runs out.
* A bad token: the crawl stops at once with ``tmapi_auth_failed``.
* A call the gate refused because the crawl is stopping (``CrawlStopping``)
  goes back to the scheduler, so that a crawl with ``JOBDIR`` keeps it for
  the resume.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.utils.asyncio import sleep
from scrapy.utils.misc import load_object

from tmapi_crawler.api import ApiError, MalformedAnswer, Outcome, envelope_of
from tmapi_crawler.auth import token_of
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.throttle import CrawlStopping, gate_of

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

BACKOFF_META = "tmapi_backoff"
#: Seconds a call answered 503 waits before it is sent again.
CONCURRENCY_RETRY_DELAY = 0.5


def attempts_of(request: Request) -> int:
    return int(request.meta.get("retry_times", 0)) + 1


class ApiMiddleware:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config_from_settings(crawler.settings, token=token_of(crawler))
        self.retry_exceptions = tuple(
            load_object(x) if isinstance(x, str) else x for x in crawler.settings.getlist("RETRY_EXCEPTIONS")
        )
        self.rng = random.Random()
        self.gate = gate_of(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_request(self, request: Request) -> Request | None:
        if "tmapi" not in request.meta:
            return None
        if self.gate.stop_reason is not None:
            return self._keep(request)
        delay = request.meta.pop(BACKOFF_META, None)
        if delay:
            await sleep(delay)
            if self.gate.stop_reason is not None:
                return self._keep(request)
        return None

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if "tmapi" not in request.meta:
            return response
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
                self.gate.stop("tmapi_auth_failed")
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
        assert self.crawler.spider is not None
        retry = get_retry_request(
            request,
            spider=self.crawler.spider,
            reason=reason,
            max_retry_times=self.config.retry_times,
            logger=logger,
            give_up_log_level=logging.DEBUG,  # the errback logs the failure, once
            stats_base_key="tmapi/retries",
        )
        if retry is not None:
            # Exponential backoff with jitter: 1x, 2x, 4x ... the base, capped.
            attempt = retry.meta["retry_times"]
            delay = min(self.config.retry_backoff_max, self.config.retry_backoff * 2 ** (attempt - 1))
            retry.meta[BACKOFF_META] = delay * self.rng.uniform(0.5, 1.5)
        return retry

    def _keep(self, request: Request) -> Request:
        """Hand *request* back to the scheduler; the engine is closing, so it
        stays there (and in ``JOBDIR``) for the next run."""
        kept = request.replace(dont_filter=True)
        kept.meta.pop(BACKOFF_META, None)
        return kept


__all__ = ["ApiMiddleware", "attempts_of"]
