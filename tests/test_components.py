"""Components on their own: built from a test crawler, fed fake responses."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scrapy.http import Request, TextResponse
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler
from twisted.internet.error import TimeoutError as TxTimeoutError

from tmapi_crawler import api
from tmapi_crawler.api import ApiError, Endpoint
from tmapi_crawler.calls.answers import BACKOFF_META, AnswerMiddleware
from tmapi_crawler.redaction import redact_exception
from tmapi_crawler.spiders.item import ItemSpider

SETTINGS = {
    "TMAPI_TOKEN": "tok",
    "TMAPI_BASE_URL": "https://api.tmapi.io",
    "TMAPI_RETRY_BACKOFF": 2.0,
    "ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0},
}


@pytest.fixture
def mw():
    crawler = get_crawler(ItemSpider, SETTINGS)
    crawler.spider = crawler._create_spider(item_ids="1")
    return AnswerMiddleware.from_crawler(crawler)


def call(item_id: int = 1) -> Request:
    return api.build_request("https://api.tmapi.io", Endpoint.ITEM_DETAIL, {"item_id": item_id})


def answer(request: Request, code: int, status: int | None = None, data: str = "null") -> TextResponse:
    body = f'{{"code": {code}, "msg": "m{code}", "data": {data}}}'.encode()
    return TextResponse(request.url, status=status or code, body=body, request=request)


def test_success_is_passed_on_and_counted(mw):
    req = call()
    resp = answer(req, 200, data="{}")
    assert mw.process_response(req, resp) is resp
    assert mw.stats.get_value("tmapi/billed") == 1
    assert mw.stats.get_value("tmapi/codes/200") == 1


@pytest.mark.parametrize("status", [417, 200])
def test_transient_errors_are_retried_with_growing_backoff_then_fail(mw, status):
    req = call()
    delays = []
    for attempt in range(1, 4):
        retry = mw.process_response(req, answer(req, 417, status=status))
        assert isinstance(retry, Request)
        assert retry.meta["retry_times"] == attempt
        assert retry.dont_filter
        delays.append(retry.meta[BACKOFF_META])
        req = retry
    assert 1.0 <= delays[0] <= 3.0
    assert 2.0 <= delays[1] <= 6.0
    assert 4.0 <= delays[2] <= 12.0
    with pytest.raises(ApiError) as info:
        mw.process_response(req, answer(req, 417, status=status))
    assert info.value.code == 417
    assert mw.stats.get_value("tmapi/retries/count") == 3


def test_parameter_errors_fail_at_once(mw):
    req = call()
    with pytest.raises(ApiError) as info:
        mw.process_response(req, answer(req, 422))
    assert (info.value.code, info.value.msg) == (422, "m422")


def test_concurrency_errors_never_count_as_attempts(mw):
    req = call()
    for _ in range(10):
        later = mw.process_response(req, answer(req, 503))
        assert isinstance(later, Request)
        assert later.meta.get("retry_times", 0) == 0
        assert later.meta[BACKOFF_META] > 0
        req = later
    assert mw.stats.get_value("tmapi/throttle/503") == 10


def test_malformed_answers_fail_with_the_start_of_the_body(mw):
    req = call()
    resp = TextResponse(req.url, status=200, body=b"<html>Bad gateway</html>", request=req)
    with pytest.raises(ApiError) as info:
        mw.process_response(req, resp)
    assert info.value.code is None
    assert info.value.snippet == "<html>Bad gateway</html>"


def test_auth_error_stops_and_keeps_the_request(mw):
    req = call()
    kept = mw.process_response(req, answer(req, 401))
    assert isinstance(kept, Request)
    assert kept.dont_filter
    assert mw.gate.stop_reason == "tmapi_auth_failed"


def test_timeouts_are_retried(mw):
    req = call()
    retry = mw.process_exception(req, TxTimeoutError())
    assert isinstance(retry, Request)
    assert retry.meta["retry_times"] == 1


def test_non_api_requests_are_left_alone(mw):
    req = Request("https://example.com")
    resp = TextResponse(req.url, status=500, body=b"x", request=req)
    assert mw.process_response(req, resp) is resp
    assert mw.process_exception(req, TxTimeoutError()) is None


def test_exceptions_are_redacted():
    exc = TxTimeoutError("Getting https://api.tmapi.io/1688/item_desc?item_id=1&apiToken=s3cret took longer")
    clean = redact_exception(exc, "s3cret")
    assert clean is not None
    assert "s3cret" not in str(clean)
    assert "apiToken=***" in str(clean)
    assert isinstance(clean, TxTimeoutError)
    assert redact_exception(ValueError("nothing here"), "s3cret") is None


@deferred_f_from_coro_f
async def test_timer_compaction_frees_cancelled_timers(monkeypatch):
    """Cancelled Twisted timers (a download's timeout, once its answer is in)
    do not stay in the reactor's heap until a timer falls due."""
    import gc

    from scrapy.utils.asyncio import sleep
    from twisted.internet import reactor as installed
    from twisted.internet.base import DelayedCall

    reactor: Any = installed
    from tmapi_crawler import extensions

    def dead() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, DelayedCall) and o.cancelled)

    monkeypatch.setattr(extensions, "TIMER_COMPACTION_INTERVAL", 0.05)
    ext = extensions.TimerCompaction.from_crawler(get_crawler(ItemSpider, SETTINGS))
    ext.spider_opened()
    try:
        for call in [reactor.callLater(60, lambda: None) for _ in range(500)]:
            call.cancel()
        assert dead() >= 500  # held by the heap until something compacts it
        await sleep(0.2)
        assert dead() < 50
    finally:
        ext.spider_closed()


def test_the_objects_of_the_start_are_out_of_the_collectors_way_while_the_engine_runs():
    """StartFrozen: once the engine runs, what the start made is in the
    collector's permanent generation (no full collection goes through it)
    and the youngest generation is collected less often; both given back
    when the engine stops, so that a process running several crawls
    collects each one's leftovers."""
    import gc

    from tmapi_crawler import extensions

    crawler = get_crawler(ItemSpider, SETTINGS)
    ext = extensions.StartFrozen.from_crawler(crawler)
    before = gc.get_threshold()
    try:
        ext.engine_started()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the modules, classes and functions imported so far, at least
        assert crawler.stats.get_value("tmapi/gc/frozen") == frozen
        made_later = [object()]
        assert gc.is_tracked(made_later) and gc.get_freeze_count() == frozen  # new objects are collected as ever
        assert gc.get_threshold() == (extensions.YOUNG_THRESHOLD, *before[1:])  # the youngest collected less often
    finally:
        ext.engine_stopped()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_two_crawls_in_one_process_give_back_the_collectors_threshold_they_found():
    """StartFrozen with two engines in one process (the add-on in a user's
    project): the threshold stays raised while either runs, and the one
    found before the first is given back when the last stops, whatever
    the order."""
    import gc

    from tmapi_crawler import extensions

    first = extensions.StartFrozen.from_crawler(get_crawler(ItemSpider, SETTINGS))
    second = extensions.StartFrozen.from_crawler(get_crawler(ItemSpider, SETTINGS))
    before = gc.get_threshold()
    raised = (extensions.YOUNG_THRESHOLD, *before[1:])
    try:
        first.engine_started()
        second.engine_started()
        assert gc.get_threshold() == raised
        first.engine_stopped()
        assert gc.get_threshold() == raised  # the second still runs
        first.engine_stopped()  # a second stop of one engine changes nothing
        assert gc.get_threshold() == raised
    finally:
        second.engine_stopped()
        first.engine_stopped()
    assert gc.get_threshold() == before


def test_a_callback_without_tracked_is_refused_naming_it():
    """A subclass's callback must be @tracked, or its lease is never
    acknowledged and a resumed crawl pays for the call again: an override
    is refused before the crawl, a new callback when its request is made."""
    from scrapy.settings import Settings

    from tmapi_crawler.config import ConfigError
    from tmapi_crawler.spiders.base import tracked
    from tmapi_crawler.spiders.shop import ShopSpider

    class Careless(ShopSpider):
        name = "careless"

        def parse_page(self, response, **kwargs):  # the base's callback, untracked
            yield from ()

    with pytest.raises(ConfigError, match=r"Careless\.parse_page overrides a callback of ShopSpider without @tracked"):
        Careless.check_arguments({"member_id": "m"}, Settings())

    class Careful(ShopSpider):
        name = "careful"

        @tracked
        def parse_page(self, response, **kwargs):
            yield from ()

    Careful.check_arguments({"member_id": "m"}, Settings())

    class NewCallback(ShopSpider):
        name = "new_callback"

        def page_request(self, params, opts, pages=None):
            return self.api_request(Endpoint.SHOP_ITEMS, params, callback=self.my_page)

        def my_page(self, response):
            yield from ()

    crawler = get_crawler(NewCallback, {"TMAPI_TOKEN": "t"})
    spider = NewCallback.from_crawler(crawler, member_id="m")
    with pytest.raises(TypeError, match=r"the callback .*NewCallback\.my_page of an API call is not decorated"):
        list(spider.seed_requests(spider.args))


def test_listing_pages_go_first_while_the_frontier_is_short(monkeypatch):
    """#37: a page's products need two more round trips, so a page asked for
    while few requests are queued goes before them; past FRONTIER_MOST it
    waits behind them (a big category is not all held in memory)."""
    from tmapi_crawler.spiders import base
    from tmapi_crawler.spiders.shop import ShopSpider

    crawler = get_crawler(ShopSpider, {"TMAPI_TOKEN": "t"})
    spider = ShopSpider.from_crawler(crawler, member_id="m")
    queued = {"n": 0}
    monkeypatch.setattr(base, "queued_requests", lambda _crawler: queued["n"])
    [first] = spider.seed_requests(spider.args)
    assert first.priority == base.PRIORITY_PAGE_FIRST > base.PRIORITY_DESC > base.PRIORITY_DETAIL
    queued["n"] = base.FRONTIER_MOST
    [later] = spider.seed_requests(spider.args)
    assert later.priority == base.PRIORITY_PAGE < base.PRIORITY_DETAIL


def test_a_resumed_runs_progress_line_has_an_eta_before_its_first_record():
    """Until a resumed run has a record of its own, its ETA is reckoned at
    its earlier runs' rate (the seconds JOBDIR kept with their figures);
    from its first record on, at its own."""
    from tmapi_crawler.extensions import RESUMED, TmapiStats, progress_of
    from tmapi_crawler.spiders.shop import ShopSpider

    crawler = get_crawler(ShopSpider, SETTINGS)
    crawler.spider = crawler._create_spider(member_id="b2b-1")
    stats = TmapiStats.from_crawler(crawler)
    kept = {"pages": 3, "pages_known": 10, "products_expected": 200, "products": 60, "seconds": 30}
    for key, value in kept.items():
        crawler.stats.set_value(f"{RESUMED}/{key}", value)
    assert stats.progress().endswith("ETA 0:01:10")  # 140 left at 60 in 30 s
    crawler.stats.set_value("tmapi/products", 1)
    stats.started = time.monotonic() - 10
    assert re.search(r"ETA 0:23:[12]\d$", stats.progress())  # 139 left at one in 10 s
    crawler.stats.set_value(f"{RESUMED}/seconds", 0)
    crawler.stats.set_value("tmapi/products", 0)
    assert "ETA" not in stats.progress()  # no rate known
    # What JOBDIR keeps carries the seconds of every run on.
    assert progress_of(crawler.stats.get_stats())["seconds"] == 0
    crawler.stats.set_value(f"{RESUMED}/seconds", 30)
    assert progress_of(crawler.stats.get_stats())["seconds"] == 30
    crawler.stats.set_value("start_time", datetime.now(UTC) - timedelta(seconds=5.5))  # CoreStats'
    assert progress_of(crawler.stats.get_stats())["seconds"] == pytest.approx(35.5, abs=1)
    crawler.stats.set_value(f"{RESUMED}/seconds", 0.4)  # a first run killed within its first second
    assert stats.progress().endswith("ETA 0:00:00")  # 140 left at 60 in 0.4 s
