"""Answers that were paid for are not paid for again (docs/behaviour.md,
"Stop and resume").

A crawl that stops for a failure it can report (a feed or the store that
cannot be written, the budget, Ctrl-C or SIGTERM) has calls that were
answered, and billed, whose products were not yet written or stored: those
requests are not acknowledged, so a resumed crawl sends them again.  With
``JOBDIR``, :class:`PaidAnswers` keeps the answer of every request in hand,
in memory, until the request is acknowledged; when the crawl stops, the
answers of the requests still in hand go to the JOBDIR's state (table
``answers``, by request fingerprint), and the resumed crawl answers those
requests from there instead of calling the API.  A kept answer is deleted
when its request is acknowledged in the resumed crawl.  What is billed twice
after such a stop is then only what was cut off in flight.  (After a kill
nothing can be kept: the bound of :mod:`tmapi_crawler.durable.jobdir` holds.)

Without ``JOBDIR`` nothing can be kept: when the crawl stops with products
fetched but not written, one line says how many calls were paid for them.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.http import Response

from tmapi_crawler.api import DETAIL_ENDPOINTS, FETCHED_AT_META, KEPT_FLAG, STORED_FLAG, Endpoint, endpoint_of
from tmapi_crawler.config import is_distributed
from tmapi_crawler.durable.feeds import guard_of
from tmapi_crawler.durable.leases import LEASE_META
from tmapi_crawler.reasons import FinishReason
from tmapi_crawler.records import FailureItem, ProductItem, now_precise

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler

    from tmapi_crawler.durable.feeds import FeedGuard

logger = logging.getLogger(__name__)

#: The endpoints whose answers make a product (a listing page's answer is
#: kept too with JOBDIR; without, it is not counted: its products are).
PRODUCT_ENDPOINTS = frozenset({*DETAIL_ENDPOINTS, Endpoint.ITEM_DESC})


class PaidAnswers:
    """A downloader middleware next to :class:`~tmapi_crawler.calls.answers.AnswerMiddleware`
    (engine-side of it: it sees the answers that were billed, and its own
    answers need no call); see the module's docstring."""

    #: Counts only what the files took (FeedGuard.item_failed): told of a
    #: record after the feed exports (tmapi_crawler.durable.feeds.check_readers_order).
    reads_feed_outcome = True

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        self.fingerprinter = crawler.request_fingerprinter
        self.jobdir = bool(crawler.settings.get("JOBDIR")) and not is_distributed(crawler.settings)
        #: From the JOBDIR's state: fingerprint -> (body, fetched_at).
        self.kept: dict[bytes, tuple[bytes, str]] = {}
        #: The answers of requests in hand: lease -> (fingerprint, body, fetched_at, from the state).
        self.answers: dict[str, tuple[bytes, bytes, str, bool]] = {}
        #: Without JOBDIR: calls billed per product not yet written.
        self.unwritten: dict[int, int] = {}
        self.counting = not self.jobdir and not is_distributed(crawler.settings)
        #: Whether it is told of each record (from the first product call it
        #: counts: a re-crawl that the store answers has none, and a receiver
        #: of every record costs 4% of its instructions).  Connected after the
        #: feed exports, as READS_FEED_OUTCOME wants.
        self._told = False
        if self.counting:
            crawler.signals.connect(self._closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    # -- the downloader's side ------------------------------------------------------

    def process_request(self, request: Request) -> Response | None:
        if not self.kept or "tmapi" not in request.meta:
            return None
        fingerprint = self.fingerprinter.fingerprint(request)
        found = self.kept.pop(fingerprint, None)
        if found is None:
            return None
        body, fetched_at = found
        lease = request.meta.get(LEASE_META)
        if lease is not None:
            self.answers[lease] = (fingerprint, body, fetched_at, True)
        request.meta[FETCHED_AT_META] = fetched_at
        self.stats.inc_value("tmapi/jobdir/answers_reused")
        return Response(request.url, status=200, body=body, request=request, flags=[KEPT_FLAG])

    def process_response(self, request: Request, response: Response) -> Response:
        if "tmapi" not in request.meta or response.status != 200 or KEPT_FLAG in response.flags:
            return response
        if STORED_FLAG in response.flags:
            return response
        # AnswerMiddleware let it through: an answer TMAPI billed.
        if self.jobdir:
            lease = request.meta.get(LEASE_META)
            if lease is not None:
                fingerprint = self.fingerprinter.fingerprint(request)
                self.answers[lease] = (fingerprint, response.body, now_precise(), False)
        elif self.counting and endpoint_of(request) in PRODUCT_ENDPOINTS:
            item_id = request.cb_kwargs.get("item_id")
            if item_id is not None:
                self.unwritten[item_id] = self.unwritten.get(item_id, 0) + 1
                if not self._told:
                    self._told = True
                    self.crawler.signals.connect(self._item_scraped, signal=signals.item_scraped)
        return response

    # -- the JOBDIR scheduler's side ----------------------------------------------------

    def load(self, db: sqlite3.Connection) -> None:
        """Read the answers an earlier run of this crawl kept (the table is
        :data:`tmapi_crawler.durable.jobdir.SCHEMA`'s)."""
        rows = db.execute("SELECT fingerprint, body, fetched_at FROM answers").fetchall()
        self.kept = {bytes(fp): (bytes(body), str(at)) for fp, body, at in rows}
        if self.kept:
            logger.info("%d answers paid for by an earlier run are used instead of calls", len(self.kept))

    def acknowledged(self, leases: Iterable[str], db: sqlite3.Connection) -> None:
        """*leases* are acknowledged (in the transaction of *db* that does
        it): their answers are no longer needed."""
        done = []
        for lease in leases:
            answer = self.answers.pop(lease, None)
            if answer is not None and answer[3]:
                done.append((answer[0],))
        if done:
            db.executemany("DELETE FROM answers WHERE fingerprint = ?", done)

    def forget(self, lease: str) -> None:
        """*lease* was replaced by a request of its own (sent again)."""
        self.answers.pop(lease, None)

    def keep(self, leases: Iterable[str], db: sqlite3.Connection) -> int:
        """The crawl stops with *leases* in hand: keep their answers in *db*."""
        rows = [self.answers[lease][:3] for lease in leases if lease in self.answers]
        db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", rows)
        # Answers of an earlier run that this one did not get to: still kept.
        self.answers.clear()
        if rows:
            self.stats.set_value("tmapi/jobdir/answers_kept", len(rows))
            logger.info(
                "Kept %d answers that were paid for but whose records are not safe yet: the same command "
                "resumes with them, without calling again",
                len(rows),
            )
        return len(rows)

    # -- without JOBDIR ----------------------------------------------------------------

    @functools.cached_property
    def guard(self) -> FeedGuard | None:
        # Looked up on the first record, once: the extensions are all built by then.
        return guard_of(self.crawler)

    def _item_scraped(self, item: Any) -> None:
        if not isinstance(item, (ProductItem, FailureItem)) or not self.unwritten:
            return
        guard = self.guard
        if guard is not None and guard.item_failed:
            return
        item_id = item.get("item_id")
        if item_id is not None:
            self.unwritten.pop(item_id, None)

    def _closed(self, reason: str) -> None:
        paid = sum(self.unwritten.values())
        self.unwritten.clear()
        if paid and reason != FinishReason.FINISHED:
            self.stats.set_value("tmapi/paid_not_kept", paid)
            logger.warning(
                "%d calls were paid for products that were not written or stored (the crawl stopped: %s); the next "
                "run pays for them again. With -s JOBDIR=DIR their answers are kept and a resumed crawl uses them",
                paid,
                reason,
            )


def paid_answers_of(crawler: Crawler) -> PaidAnswers | None:
    return crawler.get_downloader_middleware(PaidAnswers)
