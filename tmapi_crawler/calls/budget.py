"""``TMAPI_MAX_CALLS``: the calls a crawl may send (docs/behaviour.md,
"Budget").

A product is whole or absent: a call that starts a product (its detail)
keeps a place in the budget for the description that follows it, and once
the budget is reached no product is started, while the ones started are
finished.  :class:`CallBudget` does the counting; the gate asks it whether a
call may leave (:meth:`CallBudget.fits`) and tells it what left
(:meth:`CallBudget.count`); schedulers ask it what to hand out
(:meth:`CallBudget.may_hand_out`).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from tmapi_crawler.api import DETAIL_ENDPOINTS, Endpoint, calls_to_finish, endpoint_of

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

#: meta keys (their value: the budget's run id, so that a request kept from
#: an earlier run claims nothing): the product was started by this crawl, and
#: the place of its description is kept in the budget.
STARTED_META = "tmapi_started"
RESERVED_META = "tmapi_reserved"


class CallBudget:
    """The calls sent, the descriptions whose place is kept, and whether the
    budget is reached (*max_calls* 0: no budget, every call fits)."""

    def __init__(self, max_calls: int, stats: StatsCollector):
        self.max_calls = max_calls
        self.stats = stats
        #: Marks a request as this run's (:data:`STARTED_META`, :data:`RESERVED_META`).
        self.run_id = uuid.uuid4().hex[:12]
        self.sent = 0
        #: Descriptions of started products whose place the budget keeps.
        self.reserved = 0
        #: The budget is reached: only started products are finished.
        self.draining = False

    def fits(self, request: Request | None) -> bool:
        """Whether *request* may be sent: always a call of a product this
        crawl started; else when the calls it needs, with the descriptions
        whose place is kept, fit in ``TMAPI_MAX_CALLS``."""
        if not self.max_calls:
            return True
        if request is not None and request.meta.get(STARTED_META) == self.run_id:
            return True
        need = calls_to_finish(request) if request is not None else 1
        return self.sent + self.reserved + need <= self.max_calls

    def count(self, request: Request | None) -> None:
        """*request* was let through: counted, and a detail that starts a
        product marks it started (its description's place kept)."""
        self.sent += 1
        if not self.max_calls or request is None:
            return
        meta, endpoint = request.meta, endpoint_of(request)
        if meta.get(STARTED_META) == self.run_id:
            if endpoint is Endpoint.ITEM_DESC and meta.pop(RESERVED_META, None) == self.run_id:
                self.reserved -= 1
        elif endpoint in DETAIL_ENDPOINTS:
            meta[STARTED_META] = self.run_id
            if calls_to_finish(request) == 2:
                meta[RESERVED_META] = self.run_id
                self.reserved += 1

    def unreserve(self, request: Request | None) -> None:
        """*request*'s product ended before its description was sent (it
        failed, or the store answered it): its place is free again."""
        if request is not None and request.meta.pop(RESERVED_META, None) == self.run_id:
            self.reserved -= 1

    def may_hand_out(self, request: Request) -> bool:
        """Whether a scheduler should hand *request* out now: once the
        budget is reached, only what finishes a started product."""
        return not self.draining or self.fits(request)

    def reach(self) -> bool:
        """The budget has no room for a new product: drain from now on.
        ``True`` the first time (the caller wakes what waits)."""
        if self.draining:
            return False
        self.draining = True
        self.stats.set_value("tmapi/budget/reached_at", self.sent)
        logger.info(
            "TMAPI_MAX_CALLS=%d: %d calls sent, %d more kept for the descriptions of products started; no new "
            "product is started, and the crawl stops once those are written. What was not sent is kept for a "
            "resume (JOBDIR)",
            self.max_calls,
            self.sent,
            self.reserved,
        )
        return True
