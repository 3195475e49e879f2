"""The add-on: what it configures, in one process and in distributed mode."""

from __future__ import annotations

import pprint
import subprocess
import sys

from pydantic import SecretStr
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.core.scheduler import Scheduler
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.misc import load_object
from scrapy.utils.test import get_crawler

from tests.helpers import SCRAPY, TOKEN, crawl, scrapy_env
from tmapi_crawler.addon import TmapiAddon
from tmapi_crawler.calls.answers import AnswerMiddleware
from tmapi_crawler.calls.gate import TmapiThrottle
from tmapi_crawler.calls.handler import TokenDownloadHandler
from tmapi_crawler.compat import InternalsCheck
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.durable.leases import LeaseTracker
from tmapi_crawler.pipelines import ValidationPipeline
from tmapi_crawler.spiders.shop import ShopSpider

ADDON = {"ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0}}


def path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def components(settings, name: str) -> dict[str, int | None]:
    """A component priority dict, classes written as their paths."""
    return {path(k) if isinstance(k, type) else k: v for k, v in settings.getdict(name).items()}


def settings_of(**settings):
    return get_crawler(ShopSpider, {**ADDON, "TMAPI_TOKEN": TOKEN, **settings}).settings


def test_one_process_components():
    s = settings_of()
    handler = path(TokenDownloadHandler)
    # Ours for the API's scheme only; http keeps Scrapy's own.
    assert s.getdict("DOWNLOAD_HANDLERS") == {"https": handler}
    middlewares = components(s, "DOWNLOADER_MIDDLEWARES")
    assert middlewares["scrapy.downloadermiddlewares.retry.RetryMiddleware"] is None
    assert middlewares[path(AnswerMiddleware)] == 550
    assert components(s, "ITEM_PIPELINES") == {path(ValidationPipeline): 100}
    extensions = components(s, "EXTENSIONS")
    for cls in (TmapiThrottle, LeaseTracker, InternalsCheck):
        assert path(cls) in extensions
    assert config_from_settings(s).gate_class == "tmapi_crawler.calls.gate.CallGate"
    # Scrapy's own scheduler, which keeps to the budget's end (behaviour.md).
    assert s["SCHEDULER"] == "tmapi_crawler.calls.gate.BudgetScheduler"
    assert issubclass(load_object(s["SCHEDULER"]), Scheduler)
    assert s["DUPEFILTER_CLASS"] == "scrapy.dupefilters.RFPDupeFilter"
    assert not any("cluster" in mw for mw in components(s, "SPIDER_MIDDLEWARES"))


def test_redis_url_switches_every_shared_component(redis_server):
    s = settings_of(REDIS_URL=redis_server.url)
    assert s["SCHEDULER"] == "tmapi_crawler.cluster.scheduler.LeasedScheduler"
    assert s["DUPEFILTER_CLASS"] == "tmapi_crawler.cluster.dupefilter.RedisDupeFilter"
    assert s["TMAPI_GATE_CLASS"] == "tmapi_crawler.cluster.gate.SharedCallGate"
    assert "tmapi_crawler.cluster.seeds.RedisSeedsMiddleware" in components(s, "SPIDER_MIDDLEWARES")


def test_the_token_is_a_secret_in_the_settings():
    s = settings_of()
    assert isinstance(s["TMAPI_TOKEN"], SecretStr)
    assert s["TMAPI_TOKEN"].get_secret_value() == TOKEN
    assert TOKEN not in pprint.pformat(s.copy_to_dict())


class CountingHandler(HTTP11DownloadHandler):
    """A user's own HTTP handler."""

    sent: list[str] = []  # noqa: RUF012 - shared by the instances, read by the test

    async def download_request(self, request):
        CountingHandler.sent.append(request.url)
        return await super().download_request(request)


def test_a_users_download_handler_is_kept_under_ours():
    s = settings_of(DOWNLOAD_HANDLERS={"https": path(CountingHandler)})
    assert s["TMAPI_INNER_DOWNLOAD_HANDLER"] == path(CountingHandler)
    assert s.getdict("DOWNLOAD_HANDLERS")["https"] == path(TokenDownloadHandler)
    given = settings_of(DOWNLOAD_HANDLERS={"http": CountingHandler}, TMAPI_INNER_DOWNLOAD_HANDLER=path(TmapiAddon))
    assert given["TMAPI_INNER_DOWNLOAD_HANDLER"] == path(TmapiAddon)  # said explicitly: it wins


def test_each_scheme_keeps_its_own_handler_and_ours_wraps_the_apis():
    theirs = {"http": path(CountingHandler), "https": path(HTTP11DownloadHandler)}
    s = settings_of(DOWNLOAD_HANDLERS=theirs)  # the API on https
    assert s.getdict("DOWNLOAD_HANDLERS") == {"http": path(CountingHandler), "https": path(TokenDownloadHandler)}
    assert s["TMAPI_INNER_DOWNLOAD_HANDLER"] == path(HTTP11DownloadHandler)
    sandbox = settings_of(DOWNLOAD_HANDLERS=theirs, TMAPI_BASE_URL="http://127.0.0.1:8000", TMAPI_ALLOW_HTTP=True)
    assert sandbox.getdict("DOWNLOAD_HANDLERS") == {
        "http": path(TokenDownloadHandler),
        "https": path(HTTP11DownloadHandler),
    }
    assert sandbox["TMAPI_INNER_DOWNLOAD_HANDLER"] == path(CountingHandler)


@deferred_f_from_coro_f
async def test_calls_go_through_the_users_handler_with_the_token(sandbox, tmp_path):
    CountingHandler.sent.clear()
    result = await crawl(
        "item",
        sandbox,
        tmp_path,
        {"DOWNLOAD_HANDLERS": {"http": path(CountingHandler)}},
        item_ids="859086919394",
    )
    assert len(result.records) == 1
    assert len(CountingHandler.sent) == 2
    assert all(f"apiToken={TOKEN}" in url for url in CountingHandler.sent)
    assert sandbox.stats()["billed"] == 2


def test_feeds_get_the_records_and_failures_their_own_file(tmp_path):
    s = settings_of(FEEDS={str(tmp_path / "p.jsonl"): {"format": "jsonlines"}})
    feeds = s.getdict("FEEDS")
    assert feeds[str(tmp_path / "p.jsonl")]["item_classes"] == [
        "tmapi_crawler.records.ProductItem",
        "tmapi_crawler.records.ListingItem",
    ]
    assert feeds["failures.jsonl"]["item_classes"] == ["tmapi_crawler.records.FailureItem"]
    assert feeds["failures.jsonl"]["store_empty"] is False


def test_a_user_can_turn_off_or_reorder_each_optional_component(tmp_path):
    from tmapi_crawler.extensions import StartFrozen, TimerCompaction, TmapiStats
    from tmapi_crawler.media.downloads import MediaFilesPipeline, MediaMiddleware
    from tmapi_crawler.notify.monitors import TmapiSpidermon
    from tmapi_crawler.store.extension import CatalogStore
    from tmapi_crawler.store.middlewares import StoreSpiderMiddleware
    from tmapi_crawler.store.pipeline import StorePipeline

    optional: dict[str, list[type]] = {
        "EXTENSIONS": [TmapiStats, TimerCompaction, StartFrozen, TmapiSpidermon],
        "ITEM_PIPELINES": [ValidationPipeline, StorePipeline, MediaFilesPipeline],
        "SPIDER_MIDDLEWARES": [StoreSpiderMiddleware],
        "DOWNLOADER_MIDDLEWARES": [MediaMiddleware],
    }
    given = {"TMAPI_STORE": str(tmp_path / "c.sqlite"), "FILES_STORE": str(tmp_path / "files")}
    on = settings_of(**given)
    for name, classes in optional.items():
        for cls in classes:
            assert components(on, name)[path(cls)] is not None, cls  # on by default
            off = settings_of(**given, **{name: {path(cls): None}})
            assert components(off, name)[path(cls)] is None, cls  # by path
            moved = settings_of(**given, **{name: {cls: 777}})
            assert components(moved, name)[path(cls)] == 777, cls  # by class
    # What the crawler's safety rests on stays, whatever the settings say.
    forced = settings_of(
        **given,
        EXTENSIONS={path(LeaseTracker): None, path(InternalsCheck): None, path(CatalogStore): None},
        DOWNLOADER_MIDDLEWARES={path(AnswerMiddleware): None},
    )
    for name, cls in [
        ("EXTENSIONS", LeaseTracker),
        ("EXTENSIONS", InternalsCheck),
        ("EXTENSIONS", CatalogStore),
        ("DOWNLOADER_MIDDLEWARES", AnswerMiddleware),
    ]:
        assert components(forced, name)[path(cls)] is not None, cls


def test_a_component_switched_off_is_not_imported_to_be_dropped(sandbox, tmp_path):
    """Scrapy imports every component it lists before it drops those that
    are off; the add-on takes those its settings switch off out of Scrapy's
    base lists, unless the user's settings name them."""
    remote, telnet = "scrapy.extensions.remote_control.RemoteControl", "scrapy.extensions.telnet.TelnetConsole"
    cookies = "scrapy.downloadermiddlewares.cookies.CookiesMiddleware"
    off = settings_of(REMOTE_CONTROL_ENABLED=False, TELNETCONSOLE_ENABLED=False, COOKIES_ENABLED=False)
    assert remote not in off.getwithbase("EXTENSIONS") and telnet not in off.getwithbase("EXTENSIONS")
    assert cookies not in off.getwithbase("DOWNLOADER_MIDDLEWARES")
    on = settings_of(COOKIES_ENABLED=True, REMOTE_CONTROL_ENABLED=True)  # -s ...=true: as Scrapy has it
    assert on.getwithbase("DOWNLOADER_MIDDLEWARES")[cookies] == 700
    assert on.getwithbase("EXTENSIONS")[remote] == 0
    named = settings_of(COOKIES_ENABLED=False, DOWNLOADER_MIDDLEWARES={cookies: 710})
    assert named.getwithbase("DOWNLOADER_MIDDLEWARES")[cookies] == 710
    # The real command, with the project's settings (all three off): neither
    # aiohttp (the remote control's) nor tldextract (the cookies') is imported.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", SCRAPY, "crawl", "item", "-a", "item_ids=1",
         "-s", f"TMAPI_BASE_URL={sandbox.url}"],
        cwd=tmp_path, env=scrapy_env({"TMAPI_TOKEN": sandbox.token}), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "scrapy.crawler" in imported
    assert "aiohttp" not in imported and "tldextract" not in imported


def test_stats_are_scrapys_memory_stats_without_the_per_access_shim():
    from scrapy.statscollectors import DummyStatsCollector, MemoryStatsCollector

    from tmapi_crawler.extensions import TmapiStatsCollector

    assert settings_of().get("STATS_CLASS") == path(TmapiStatsCollector)
    assert settings_of(STATS_CLASS=MemoryStatsCollector).get("STATS_CLASS") == path(TmapiStatsCollector)
    assert settings_of(STATS_CLASS=path(DummyStatsCollector)).get("STATS_CLASS") == path(DummyStatsCollector)
    crawler = get_crawler(ShopSpider, {**ADDON, "TMAPI_TOKEN": TOKEN})
    crawler._apply_settings()
    stats = crawler.stats
    assert type(stats) is TmapiStatsCollector and isinstance(stats, MemoryStatsCollector)
    stats.set_stats({})
    stats.inc_value("a")
    stats.inc_value("a", 2, spider=None)  # the spider argument Scrapy's methods take, ignored
    stats.max_value("m", 3)
    stats.min_value("m", 1)
    stats.set_value("s", "x")
    assert stats.get_stats() == {"a": 3, "m": 1, "s": "x"} and stats.get_value("a") == 3
