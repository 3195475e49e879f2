"""The store answers calls before they reach the API, the gate or the bill:
:class:`StoreSpiderMiddleware` turns a listing page's unchanged products into
their records at once (one query for the page, no request each), and
:class:`StoreMiddleware` (a downloader middleware, before the gate) answers
the other ``item_detail`` and ``item_desc`` calls it can."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from scrapy import Request
from scrapy.http import Response

from tmapi_crawler.api import (
    DETAIL_ENDPOINTS,
    FETCHED_AT_META,
    STORED_DESC_META,
    STORED_FLAG,
    Endpoint,
    Envelope,
    endpoint_of,
    listing_key,
    remember_envelope,
)
from tmapi_crawler.calls.gate import CrawlStopping
from tmapi_crawler.durable.leases import tracker_of
from tmapi_crawler.records import ProductItem
from tmapi_crawler.store.extension import STORE_FAILED, required_store
from tmapi_crawler.store.freshness import listing_counters
from tmapi_crawler.store.url import StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from typing import Self, TypeVar

    from scrapy.crawler import Crawler

    from tmapi_crawler.store.lookup import Stored

    T = TypeVar("T")


#: meta key: the listing page's lookup found that this detail must be
#: fetched (:class:`StoreSpiderMiddleware`): no second lookup.
CHECKED_META = "tmapi_store_checked"


def stored_response(request: Request, data: bytes, fetched_at: str, parsed: Any = None) -> Response:
    """The answer the store gives for *request*: the API's envelope around
    the stored ``data``, already parsed for :func:`tmapi_crawler.api.envelope_of`
    (*parsed*, when the lookup parsed it)."""
    request.meta[FETCHED_AT_META] = fetched_at
    body = b'{"code":200,"msg":"success","data":' + data + b"}"
    response = Response(request.url, status=200, body=body, request=request, flags=[STORED_FLAG])
    remember_envelope(response, Envelope(200, "success", orjson.loads(data) if parsed is None else parsed))
    return response


class StoreMiddleware:
    """Answers ``item_detail`` and ``item_desc`` from the store when the
    stored answer is still good; any other call goes on to the API."""

    def __init__(self, crawler: Crawler):
        self.store = required_store(crawler)
        self.stats = crawler.stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_request(self, request: Request) -> Response | None:
        info = request.meta.get("tmapi")
        if info is None:
            return None
        if request.cb_kwargs.get("item_id") is None:
            return None
        endpoint = info["endpoint"]
        if endpoint not in _STORED_ENDPOINTS:
            return None
        item_id = request.cb_kwargs["item_id"]
        if endpoint == Endpoint.ITEM_DESC.value and self.store.decision.pop_desc_due(item_id):
            return None  # its detail's lookup found no good description
        if request.meta.pop(CHECKED_META, False):
            return None  # the listing page's lookup found it must be fetched
        try:
            stored = await self.store.lookup(item_id)
        except StoreError:
            # The store failed (the crawl stops): the request is kept for the resume.
            self.stats.inc_value("tmapi/store/read_errors")
            raise CrawlStopping(STORE_FAILED) from None
        now = datetime.now(UTC)
        if endpoint == Endpoint.ITEM_DESC.value:
            if self.store.decision.fresh_desc(stored, now):
                assert stored is not None
                assert stored.description is not None
                self.stats.inc_value("tmapi/store/desc_from_store")
                return stored_response(request, stored.description, str(stored.desc_fetched_at), stored.desc_data)
            return None
        reason = self.store.decision.fresh_detail(
            stored, info["params"].get("language"), request.cb_kwargs.get("listing"), now
        )
        if reason is None:
            assert stored is not None
            self.stats.inc_value("tmapi/store/detail_from_store")
            return stored_response(request, stored.detail, stored.detail_fetched_at, stored.detail_data)
        self.store.decision.note_detail_fetch(request, stored, reason, now)
        return None


class StoreSpiderMiddleware:
    """Answers from the store the product details (and descriptions) that a
    listing page asks for, before they are scheduled: one query for the
    page's products, and an unchanged product becomes its record at once,
    made by the spider's own callbacks from the stored answers, with no
    request of its own.  What the store cannot answer goes on as a request
    (:class:`StoreMiddleware` answers what it can of those, later).

    A product the store answered is answered once a crawl: a listing that
    names it again (pages that shifted while they were read) adds nothing,
    as the dupefilter does for a request.  The records count toward the
    lease of the page that listed them (:meth:`LeaseTracker.replace`)."""

    def __init__(self, crawler: Crawler):
        self.store = required_store(crawler)
        self.stats = crawler.stats
        self.leases = tracker_of(crawler)
        #: Hashes of the detail calls answered here (the dupefilter's job for
        #: the calls that are made).
        self._answered: set[int] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_spider_output(self, response: Response, result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        outputs = [out async for out in result]  # one callback's: a listing page's entries at most
        details = [out for out in outputs if _is_detail(out)]
        found: dict[int, Stored] = {}
        failed = False
        if details:
            try:
                found = await self.store.lookup_all(r.cb_kwargs["item_id"] for r in details)
            except StoreError:
                failed = True  # the store failed (the crawl stops): the requests go on, and are kept
        now = datetime.now(UTC)
        # Why each detail must be fetched (None: the store may answer it), once a detail.
        reasons = {
            id(out): self.store.decision.fresh_detail(
                found.get(out.cb_kwargs["item_id"]),
                out.meta["tmapi"]["params"].get("language"),
                out.cb_kwargs.get("listing"),
                now,
            )
            for out in ([] if failed else details)
        }
        refresh = set() if failed else self._plan(response, details, found, reasons, now)
        for out in outputs:
            if failed or not _is_detail(out):
                yield out
                continue
            stored = found.get(out.cb_kwargs["item_id"])
            params = out.meta["tmapi"]["params"]
            reason = reasons[id(out)]
            if reason is None and stored is not None and stored.item_id in refresh:
                reason = "watched" if stored.item_id in self.store.decision.planner.watch else "refresh"
                self.store.decision.refreshing.add(stored.item_id)
            if reason is not None:
                self.store.decision.note_detail_fetch(out, stored, reason, now)
                out.meta[CHECKED_META] = True  # StoreMiddleware need not look it up again
                yield out
                continue
            assert stored is not None  # fresh_detail says "new" without it
            key = hash((stored.item_id, *sorted(params.items())))
            if key in self._answered:
                self.stats.inc_value("tmapi/store/answered_twice")
                self.leases.replace(out, [])
                continue
            self._answered.add(key)
            for answer in self.leases.replace(out, list(self._answer(out, stored, now))):
                yield answer

    def _plan(
        self,
        response: Response,
        details: list[Request],
        found: dict[int, Stored],
        reasons: dict[int, str | None],
        now: datetime,
    ) -> set[int]:
        """The stored products of a listing page to refresh (the planner's
        choice among those whose entry looks unchanged: *reasons*, by the
        id of each detail request, ``None``); the others fetched for a reason
        of their own (new, entry changed) count as current."""
        planner = self.store.decision.planner
        if self.store.config.refresh_policy == "age":
            return set()
        candidates = []
        for out in details:
            stored = found.get(out.cb_kwargs["item_id"])
            listing = out.cb_kwargs.get("listing")
            reason = reasons[id(out)]
            if reason is None and stored is not None and listing is not None:
                candidates.append(planner.candidate(stored, listing, now))
            elif reason is not None:
                planner.fetched(1.0 + float(listing_counters(listing)[0] or 0))
        if not candidates:
            return set()
        request = response.request
        key = listing_key(request) if request is not None and "tmapi" in request.meta else None
        expected = int(self.stats.get_value("tmapi/products_expected", 0) or 0)
        left = max(0, expected - planner.eligible - len(candidates))
        chosen = planner.choose(candidates, planner.share_of(key, now), left)
        self.stats.set_value("tmapi/refresh/spent", planner.spent)  # JOBDIR keeps it (a resume spends what is left)
        return chosen

    def _answer(self, request: Request, stored: Stored, now: datetime) -> Iterator[Any]:
        """What the spider's callbacks make of the stored detail (and of the
        stored description, when it is still good: given with the detail,
        :data:`~tmapi_crawler.api.STORED_DESC_META`, or as the answer of the
        description's request, for a callback that asks for it anyway)."""
        self.stats.inc_value("tmapi/store/detail_from_store")
        desc: Any = None
        desc_fresh = self.store.decision.fresh_desc(stored, now)
        if desc_fresh:
            assert stored.description is not None
            desc = stored.desc_data if stored.desc_data is not None else orjson.loads(stored.description)
            request.meta[STORED_DESC_META] = (desc, str(stored.desc_fetched_at))
        response = stored_response(request, stored.detail, stored.detail_fetched_at, stored.detail_data)
        assert request.callback is not None
        for out in request.callback(response, **request.cb_kwargs):
            if _is_desc(out) and desc_fresh:
                assert stored.description is not None
                assert out.callback is not None
                self.stats.inc_value("tmapi/store/desc_from_store")
                answer = stored_response(out, stored.description, str(stored.desc_fetched_at), desc)
                for product in out.callback(answer, **out.cb_kwargs):
                    self._note(product)
                    yield product
            else:
                self._note(out)
                yield out
        if desc_fresh and request.meta.pop(STORED_DESC_META, None) is None:
            self.stats.inc_value("tmapi/store/desc_from_store")  # the callback took it

    def _note(self, out: Any) -> None:
        if isinstance(out, ProductItem):
            self.store.served[out["item_id"]] = (out["detail_fetched_at"], out["desc_fetched_at"])


def _is_detail(out: Any) -> bool:
    return (
        isinstance(out, Request) and endpoint_of(out) in DETAIL_ENDPOINTS and out.cb_kwargs.get("item_id") is not None
    )


def _is_desc(out: Any) -> bool:
    return isinstance(out, Request) and endpoint_of(out) is Endpoint.ITEM_DESC


_STORED_ENDPOINTS = frozenset(e.value for e in (*DETAIL_ENDPOINTS, Endpoint.ITEM_DESC))
