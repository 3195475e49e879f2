"""The alert webhook: one JSON POST when a crawl ends with a failed monitor
(``TMAPI_ALERT_WEBHOOK``, docs/operations.md).

It runs after spidermon's monitors (:mod:`tmapi_crawler.monitors`), reads
their results from the stats, and sends nothing for a crawl whose monitors
all passed.  The POST goes through Twisted, without blocking the reactor:
a webhook that is down or slow costs the crawl's end at most
:data:`TRIES` x :data:`TIMEOUT` seconds and one warning line, never a
failure.  The summary holds stats and monitor reasons only: never the token
(no stat holds it), never a Redis or database URL.
"""

from __future__ import annotations

import json
import logging
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import sleep
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from tmapi_crawler.config import config_from_settings
from tmapi_crawler.monitors import RESULTS

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Seconds a try may take (connecting, sending, the answer).
TIMEOUT = 10.0
#: Tries of a POST that met an error or a 5xx answer.
TRIES = 2
#: Seconds between two tries.
RETRY_DELAY = 2.0
#: The stats in the summary, by the name they have there.
SUMMARY = {
    "calls": "tmapi/calls",
    "billed": "tmapi/billed",
    "products": "tmapi/products",
    "listings": "tmapi/listings",
    "failures": "tmapi/failures",
    "products_failed": "tmapi/products_failed",
    "invalid": "tmapi/invalid",
}


def shown(url: str) -> str:
    """The webhook as logs may show it: a webhook's path often is its
    secret (Slack's, say), so only its scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..."


def summary(crawler: Crawler, reason: str) -> dict[str, Any]:
    stats = crawler.stats.get_stats() if crawler.stats else {}
    failed = [
        {"monitor": key.removeprefix(f"{RESULTS}/failed/"), "reason": value}
        for key, value in stats.items()
        if key.startswith(f"{RESULTS}/failed/")
    ]
    spider = crawler.spider
    return {
        "spider": spider.name if spider else None,
        "job": getattr(spider, "_job", None),
        "finish_reason": reason,
        **{name: int(stats.get(key, 0) or 0) for name, key in SUMMARY.items()},
        "started_at": str(stats.get("start_time", "")),
        "finished_at": str(stats.get("finish_time", "")),
        "failed_monitors": failed,
    }


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class AlertWebhook:
    def __init__(self, crawler: Crawler, url: str):
        self.crawler = crawler
        self.url = url
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        url = config_from_settings(crawler.settings).alert_webhook
        if not url:
            raise NotConfigured("TMAPI_ALERT_WEBHOOK is not set")
        return cls(crawler, url)

    async def spider_closed(self, reason: str) -> None:
        report = summary(self.crawler, reason)
        if not report["failed_monitors"]:
            logger.debug("Every monitor passed: no alert")
            return
        await self.post(json.dumps(report, ensure_ascii=False).encode("utf-8"))

    async def post(self, body: bytes) -> None:
        from twisted.internet import reactor  # the installed one (see compat.compact_timers)

        agent = Agent(reactor, connectTimeout=TIMEOUT)
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"tmapi_crawler alert"]})
        problem = ""
        for attempt in range(1, TRIES + 1):
            try:
                producer: Any = FileBodyProducer(BytesIO(body))  # an IBodyProducer (zope, not a base class)
                sent = agent.request(b"POST", self.url.encode("ascii"), headers, producer)
                sent.addTimeout(TIMEOUT, reactor)
                response: Any = await maybe_deferred_to_future(sent)  # an IResponse
            except Exception as exc:  # the webhook's trouble is never the crawl's
                problem = f"{type(exc).__name__}: {exc}"
            else:
                # The status says it all: the body is thrown away as it comes
                # (one cut short, when a server closes without a length, too).
                response.deliverBody(_Discard())
                if 200 <= response.code < 300:
                    logger.info("Alert sent to %s (HTTP %d)", shown(self.url), response.code)
                    return
                problem = f"HTTP {response.code}"
                if response.code < 500:
                    break  # the webhook refused it: trying again would change nothing
            if attempt < TRIES:
                await sleep(RETRY_DELAY)
        logger.warning(
            "The alert could not be sent to %s (%s, %d tries): the crawl's results are in its log and stats",
            shown(self.url),
            problem,
            attempt,
        )
