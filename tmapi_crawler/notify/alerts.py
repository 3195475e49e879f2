"""The crawl's alert (docs/operations.md): when a crawl ends with a failed
monitor, or with changes of the catalog store that match
``TMAPI_ALERT_CHANGES`` (:mod:`tmapi_crawler.notify.digest`), one message (both in
one when both happen, none when neither does) to the webhook
(``TMAPI_ALERT_WEBHOOK``: a POST in ``TMAPI_ALERT_FORMAT``) and to the
services of ``TMAPI_NOTIFY`` (:mod:`tmapi_crawler.notify.services`: a title and a
Markdown body through Apprise).  With ``TMAPI_NOTIFY_REPORT`` every crawl
notifies, with the catalog report of its period attached: the daily email.

It runs after spidermon's monitors (:mod:`tmapi_crawler.notify.monitors`) and reads
their results from the stats.  In distributed mode each worker leaves its
report in Redis when it stops, and the last one to stop sends the crawl's
one alert with every worker's changes (:data:`~tmapi_crawler.cluster.lua.ALERT_LEAVE`).
The POST goes through Twisted, without blocking the reactor: a webhook that
is down or slow costs the crawl's end at most :data:`TRIES` x :data:`TIMEOUT`
seconds and one warning line, never a failure.  The report holds stats,
monitor reasons and change records only: never the token (no stat holds
it), never a Redis or database URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import sleep
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from tmapi_crawler.api import offer_url
from tmapi_crawler.config import config_from_settings, is_distributed
from tmapi_crawler.loops import looping_call
from tmapi_crawler.notify.digest import Digest, headline, markdown_items, parse_rules, render
from tmapi_crawler.notify.monitors import RESULTS
from tmapi_crawler.records import ChangeItem
from tmapi_crawler.store.catalog import titles
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.dialect import iso
from tmapi_crawler.store.url import StoreError, parse_store_url

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

    from tmapi_crawler.notify.services import Notifier

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


#: The summary's numbers that add up across workers.
ADDED = (*SUMMARY, "changes_matched")


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
    """The alert's extension: to the webhook, to Apprise's services, or both."""

    def __init__(self, crawler: Crawler, url: str | None, notifier: Notifier | None = None):
        self.crawler = crawler
        self.url = url
        self.notifier = notifier
        config = config_from_settings(crawler.settings)
        self.attach_report = config.notify_report
        self.form = config.alert_format
        self.rules = parse_rules(config.alert_changes) if config.alert_changes else []
        self.digest = Digest(self.rules, config.alert_max_changes)
        self.store = config.store.get_secret_value() if config.store is not None else None
        self.lease_ms = int(config.lease_timeout * 1000)
        self.cluster: Any = None  # distributed mode: Redis, and this worker's name there
        self.renew_loop: Any = None
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        if self.rules:
            crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        config = config_from_settings(crawler.settings)
        notifier = None
        if config.notify is not None:
            from tmapi_crawler.notify.services import Notifier  # Apprise: only for crawls that notify

            notifier = Notifier(config.notify.get_secret_value())
            logger.info("Notifications go to %s (TMAPI_NOTIFY)", notifier.describe())
        if not config.alert_webhook and notifier is None:
            raise NotConfigured("neither TMAPI_ALERT_WEBHOOK nor TMAPI_NOTIFY is set")
        return cls(crawler, config.alert_webhook, notifier)

    def item_scraped(self, item: Any) -> None:
        if isinstance(item, ChangeItem):
            self.digest.add(dict(item))

    # -- distributed mode: one alert per crawl ------------------------------------------

    def spider_opened(self) -> None:
        if not is_distributed(self.crawler.settings):
            return
        from tmapi_crawler.cluster.alerts import AlertRoom  # Redis's client: distributed mode only

        assert self.crawler.spider is not None
        self.cluster = AlertRoom(self.crawler.settings, self.crawler.spider.name, self.lease_ms)
        self.cluster.join()
        self.renew_loop = looping_call(self.cluster.join, "alert membership", self.crawler.stats)
        self.renew_loop.start(max(0.25, self.lease_ms / 3000), now=False)

    # -- the crawl's end -------------------------------------------------------------------

    async def spider_closed(self, reason: str) -> None:
        if self.renew_loop is not None and self.renew_loop.running:
            self.renew_loop.stop()
        report = await self.report(reason)
        if self.cluster is not None:
            reports = self.cluster.leave(report)
            if reports is None:
                logger.info("This worker's alert report is in Redis: the last worker to stop sends the alert")
                return
            report = merge(reports)
        alert = bool(report["failed_monitors"] or report["changes_matched"])
        if not alert and not (self.notifier is not None and self.attach_report):
            logger.debug("Every monitor passed and no change matched TMAPI_ALERT_CHANGES: no alert")
            return
        if self.url and alert:
            for payload in render(report, self.form):
                await self.post(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
        if self.notifier is not None:
            await self.notify(self.notifier, report)

    async def notify(self, notifier: Notifier, report: dict[str, Any]) -> None:
        """The alert through Apprise: the headline as the title, the rest of
        the Markdown message as the body; the report of the crawl's period
        attached with ``TMAPI_NOTIFY_REPORT``."""
        body = "\n".join([summary_line(report), *markdown_items(report)])
        failure = bool(report["failed_monitors"])
        if not (self.attach_report and self.store):
            await notifier.send(headline(report), body, failure=failure)
            return
        with tempfile.TemporaryDirectory(prefix="tmapi-report-") as folder:
            since = iso(report["started_at"]) if report.get("started_at") else None
            name = f"catalog-report-{(since or 'all')[:10]}.html"
            path = Path(folder) / name
            loop = asyncio.get_running_loop()
            written = await loop.run_in_executor(None, _write_report, self.store, since, path)
            await notifier.send(headline(report), body, failure=failure, attachment=path if written else None)

    async def report(self, reason: str) -> dict[str, Any]:
        """This worker's report: the crawl's summary, the failed monitors,
        and the changes that matched, with their products' titles."""
        changes = self.digest.changes()
        if changes and self.store:
            titles = await asyncio.get_running_loop().run_in_executor(None, _titles, self.store, changes)
            for change in changes:
                title, skus = titles.get(change["item_id"], (None, {}))
                change["title"] = title
                change["sku"] = skus.get(change["skuid"]) if change.get("skuid") else None
        for change in changes:
            change["url"] = offer_url(change["item_id"])
        return {
            **summary(self.crawler, reason),
            "changes_matched": self.digest.matched,
            "changes_by_kind": dict(self.digest.by_kind),
            "changes": changes,
            "more_changes": self.digest.matched - len(changes),
            "rules": [str(rule) for rule in self.rules],
            "most_changes": self.digest.most,
        }

    async def post(self, body: bytes) -> None:
        from twisted.internet import reactor  # the installed one (see compat.compact_timers)

        assert self.url is not None

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


def summary_line(report: dict[str, Any]) -> str:
    """The crawl's numbers in one line, first in a notification's body."""
    return (
        f"{report.get('products', 0)} products, {report.get('billed', 0)} calls billed, "
        f"{report.get('failures', 0)} failures"
    )


def _write_report(store: str, since: str | None, path: Path) -> bool:
    """The catalog report of the period from *since* to now, to *path* (in
    a thread); ``False``, with one warning line, when it cannot be made."""
    from tmapi_crawler.store.history import History, Period
    from tmapi_crawler.store.report import Report  # plotly: only for crawls that attach the report

    try:
        db = CatalogDB(parse_store_url(store), create=False)
    except StoreError as exc:
        logger.warning("The notification goes without its report: %s", exc)
        return False
    try:
        path.write_text(Report(History(db), Period(since, None)).render(20, []), encoding="utf-8")
    except Exception as exc:
        logger.warning(
            "The notification goes without its report: %s", db.error(exc) if not isinstance(exc, OSError) else exc
        )
        return False
    finally:
        db.close()
    return True


def _titles(store: str, changes: list[dict[str, Any]]) -> dict[int, tuple[str, dict[str, str | None]]]:
    """The titles and SKU names of the products of *changes* (in a thread)."""
    try:
        db = CatalogDB(parse_store_url(store), create=False)
    except StoreError as exc:
        logger.warning("The alert names its products by id only: %s", exc)
        return {}
    try:
        return titles(db, sorted({change["item_id"] for change in changes}))
    except Exception as exc:
        logger.warning("The alert names its products by id only: %s", db.error(exc))
        return {}
    finally:
        db.close()


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' reports as the crawl's one: numbers added, finish
    reasons and failed monitors of each worker, the largest changes of all."""
    first = reports[0]
    digest = Digest([], int(first.get("most_changes") or 50))
    merged: dict[str, Any] = {**first, "workers": len(reports), "failed_monitors": []}
    for name in ADDED:
        merged[name] = sum(int(r.get(name) or 0) for r in reports)
    reasons = sorted({str(r["finish_reason"]) for r in reports})
    merged["finish_reason"] = reasons[0] if len(reasons) == 1 else ", ".join(reasons)
    merged["started_at"] = min(str(r.get("started_at") or "") for r in reports)
    merged["finished_at"] = max(str(r.get("finished_at") or "") for r in reports)
    for number, r in enumerate(reports, start=1):
        for failed in r.get("failed_monitors") or []:
            merged["failed_monitors"].append({**failed, "worker": number})
        digest.merge(r.get("changes") or [], int(r.get("changes_matched") or 0), r.get("changes_by_kind") or {})
    merged["changes"] = digest.changes()
    merged["changes_by_kind"] = digest.by_kind
    merged["changes_matched"] = digest.matched
    merged["more_changes"] = digest.matched - len(merged["changes"])
    return merged
