"""The add-on: every component of the crawler registered in one place.

``ADDONS = {"tmapi_crawler.addon.TmapiAddon": 0}`` (the project's settings do
this) turns a Scrapy project into a TMAPI crawler.  It only configures: the
secrets wrapped so that Scrapy's log of its settings masks them, the
components (those the crawler's safety rests on forced, the others only where
the user's settings do not name them: docs/development.md lists which), the
mode (``REDIS_URL``: :mod:`tmapi_crawler.cluster`, by class path; ``JOBDIR``:
:mod:`tmapi_crawler.durable.jobdir`), and the feeds (records to the user's feeds,
failures and changes to their files).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from scrapy import signals
from scrapy.core.scheduler import Scheduler
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.extensions.feedexport import FeedExporter
from scrapy.extensions.spiderstate import SpiderState
from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.misc import load_object
from spidermon.contrib.scrapy.extensions import Spidermon

from tmapi_crawler.api import API_SLOT, PRODUCTION_URL
from tmapi_crawler.calls.answers import AnswerMiddleware
from tmapi_crawler.calls.gate import DEFAULT_CAP, BudgetScheduler, TmapiThrottle
from tmapi_crawler.calls.handler import TokenDownloadHandler
from tmapi_crawler.calls.paid import PaidAnswers
from tmapi_crawler.calls.room import RoomMiddleware
from tmapi_crawler.compat import InternalsCheck
from tmapi_crawler.config import DEFAULTS, Mode, from_environment, mode_of
from tmapi_crawler.durable.feeds import (
    FRESH,
    FeedGuard,
    GuardedFeedExporter,
    GuardedFileFeedStorage,
    GuardedSpiderState,
)
from tmapi_crawler.durable.jobdir import JobdirScheduler, has_state
from tmapi_crawler.durable.leases import LeaseTracker
from tmapi_crawler.exports import EXPORTERS, register_feed_formats
from tmapi_crawler.extensions import StartFrozen, TimerCompaction, TmapiStats, TmapiStatsCollector
from tmapi_crawler.media.downloads import (
    MEDIA_MIDDLEWARE_PRIORITY,
    MediaDownloads,
    MediaFilesPipeline,
    MediaImagesPipeline,
    MediaMiddleware,
)
from tmapi_crawler.notify.alerts import AlertWebhook
from tmapi_crawler.notify.monitors import STALL_CHECK_INTERVAL, CrawlMonitors, StallMonitors, TmapiSpidermon
from tmapi_crawler.pipelines import ValidationPipeline
from tmapi_crawler.records import RECORD_CLASSES, ChangeItem, FailureItem, ProductItem
from tmapi_crawler.redaction import redact_logs
from tmapi_crawler.store.extension import CatalogStore
from tmapi_crawler.store.middlewares import StoreMiddleware, StoreSpiderMiddleware
from tmapi_crawler.store.pipeline import StorePipeline

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    from scrapy.crawler import Crawler

#: Distributed mode's components, by class path (imported only when used).
CLUSTER = "tmapi_crawler.cluster"
CLUSTER_COMPONENTS = {
    "SCHEDULER": f"{CLUSTER}.scheduler.LeasedScheduler",
    "DUPEFILTER_CLASS": f"{CLUSTER}.dupefilter.RedisDupeFilter",
    "TMAPI_GATE_CLASS": f"{CLUSTER}.gate.SharedCallGate",
    "TMAPI_MEDIA_CLAIMS_CLASS": f"{CLUSTER}.claims.MediaClaims",
}
CLUSTER_SEEDS = f"{CLUSTER}.seeds.RedisSeedsMiddleware"
CLUSTER_HEALTH = f"{CLUSTER}.health.RedisHealth"

#: Scrapy's components that a setting switches off, by the setting: off (as
#: the project's settings have them), they are taken out of Scrapy's base
#: lists (``EXTENSIONS_BASE``, ...), not imported to find that out (Scrapy
#: imports every component it lists, even one named only to be disabled, then
#: drops those that raise NotConfigured): the remote control imports aiohttp,
#: the cookies middleware tldextract, a sixth of a crawl's start (0.2 s of CPU).
SWITCHED_OFF = {
    "REMOTE_CONTROL_ENABLED": ("EXTENSIONS", "scrapy.extensions.remote_control.RemoteControl"),
    "TELNETCONSOLE_ENABLED": ("EXTENSIONS", "scrapy.extensions.telnet.TelnetConsole"),
    "COOKIES_ENABLED": ("DOWNLOADER_MIDDLEWARES", "scrapy.downloadermiddlewares.cookies.CookiesMiddleware"),
}


def _password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _given(settings: BaseSettings, name: str, component: type) -> bool:
    """Whether the user's *name* (``EXTENSIONS``, ...) names *component*
    (enabled, reordered or disabled with ``None``), by class or by path."""
    return any(load_object(key) is component for key in settings.getdict(name))


def _default(settings: BaseSettings, name: str, component: type, priority: int) -> None:
    """Add an optional *component*, unless the user's settings name it: it
    stays where they put it, or off (docs/development.md lists which)."""
    if not _given(settings, name, component):
        settings.set_in_component_priority_dict(name, component, priority)


def _leave_out_switched_off(settings: BaseSettings) -> None:
    """:data:`SWITCHED_OFF`: each component whose setting is off, and that
    the user's settings do not name, taken out of Scrapy's base list."""
    for switch, (name, path) in SWITCHED_OFF.items():
        if settings.getbool(switch) or any(
            key == path or (isinstance(key, type) and _path(key) == path) for key in settings.getdict(name)
        ):
            continue  # on, or the user's: as they have it
        base = settings.getdict(f"{name}_BASE")
        if base.pop(path, None) is not None:
            settings.set(f"{name}_BASE", base, settings.getpriority(f"{name}_BASE") or 0)


class TmapiAddon:
    def __init__(self, crawler: Crawler | None = None):
        self.crawler = crawler
        self._unmask: list[Callable[[], None]] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def update_settings(self, settings: BaseSettings) -> None:
        from_environment(settings)
        for secret in ("TMAPI_TOKEN", "TMAPI_STORE", "TMAPI_NOTIFY"):  # a store URL may hold a password
            value = settings.get(secret)
            if isinstance(value, str) and value:
                settings.set(secret, SecretStr(value), settings.getpriority(secret) or 0)
        self._mask_media_passwords(settings)
        self._download_handlers(settings)
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", RetryMiddleware, None)
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", AnswerMiddleware, 550)
        # Engine-side of AnswerMiddleware: it sees what was billed; its own
        # answers (kept in JOBDIR by an earlier run) are no call.
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", PaidAnswers, 545)
        # API calls wait while records wait for the store's writer or for their
        # files (tmapi_crawler.calls.room): before the store answers a call.
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", RoomMiddleware, 525)
        _default(settings, "ITEM_PIPELINES", ValidationPipeline, 100)
        _default(settings, "EXTENSIONS", TmapiStats, 500)
        _default(settings, "EXTENSIONS", TimerCompaction, 0)
        _default(settings, "EXTENSIONS", StartFrozen, 0)
        settings.set_in_component_priority_dict("EXTENSIONS", TmapiThrottle, 0)
        # After the feed exports (0): for a record, they write it before the
        # tracker counts it as safe.
        settings.set_in_component_priority_dict("EXTENSIONS", LeaseTracker, 100)
        # Built after the feed exports (priority 0), so that it sees their slots.
        settings.set_in_component_priority_dict("EXTENSIONS", InternalsCheck, 1000)
        # Before the feed exports: told first of each record, it knows
        # whether their files took it.
        settings.set_in_component_priority_dict("EXTENSIONS", FeedGuard, -1)
        settings.set_in_component_priority_dict("EXTENSIONS", FeedExporter, None)  # replaced by:
        settings.set_in_component_priority_dict("EXTENSIONS", GuardedFeedExporter, 0)
        settings.set_in_component_priority_dict("EXTENSIONS", SpiderState, None)  # replaced by:
        settings.set_in_component_priority_dict("EXTENSIONS", GuardedSpiderState, 0)
        self._monitors(settings)
        if settings.get("TMAPI_STORE"):
            # Before AnswerMiddleware (550) and the gate: a stored answer is no call.
            settings.set_in_component_priority_dict("EXTENSIONS", CatalogStore, 0)
            settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", StoreMiddleware, 540)
            # Next to the spider (Scrapy's own are 50 to 900): a product the
            # store answers is a record before any other middleware sees it.
            _default(settings, "SPIDER_MIDDLEWARES", StoreSpiderMiddleware, 950)
            _default(settings, "ITEM_PIPELINES", StorePipeline, 200)
        # The gate decides how many calls are in flight; Scrapy's own limits
        # only need to leave it room: the API's calls have a slot of their
        # own, with no delay, whatever the project's politeness settings.
        cap = settings.getint("TMAPI_CONCURRENCY") or DEFAULT_CAP
        if settings.getint("CONCURRENT_REQUESTS") < 2 * cap:
            settings.set("CONCURRENT_REQUESTS", 2 * cap, settings.getpriority("CONCURRENT_REQUESTS") or 0)
        slots = settings.getdict("DOWNLOAD_SLOTS")
        slots[API_SLOT] = {"concurrency": 2 * cap, "delay": 0, "jitter": 0}
        settings.set("DOWNLOAD_SLOTS", slots, settings.getpriority("DOWNLOAD_SLOTS") or 0)
        if settings.get("FILES_STORE"):
            self._media(settings)
        mode = mode_of(settings)
        if mode is Mode.DISTRIBUTED:
            for name, path in CLUSTER_COMPONENTS.items():
                settings.set(name, path, "addon")
            settings.set_in_component_priority_dict("SPIDER_MIDDLEWARES", load_object(CLUSTER_SEEDS), 0)
            settings.set_in_component_priority_dict("EXTENSIONS", load_object(CLUSTER_HEALTH), 0)
        elif mode is Mode.JOBDIR:
            settings.set("SCHEDULER", _path(JobdirScheduler), "addon")
        elif settings.get("SCHEDULER") in (_path(Scheduler), Scheduler):
            # Scrapy's own, which once the budget is reached hands out only
            # what finishes a started product.
            settings.set("SCHEDULER", _path(BudgetScheduler), "addon")
        self._feeds(settings)
        if settings.get("STATS_CLASS") in (MemoryStatsCollector, _path(MemoryStatsCollector)):
            settings.set("STATS_CLASS", _path(TmapiStatsCollector), settings.getpriority("STATS_CLASS") or 0)
        # Last: a component given by path is imported by the next
        # set_in_component_priority_dict of its setting.
        _leave_out_switched_off(settings)

    def _mask_media_passwords(self, settings: BaseSettings) -> None:
        """A password in ``FILES_STORE``, ``IMAGES_STORE`` (``ftp://user:pass@...``)
        or ``REDIS_URL``, and the webhook's path, are masked in the log from
        now (Scrapy logs its settings as given, next) to the end of the
        crawl.  Those who use them need them as plain strings."""
        for name in ("FILES_STORE", "IMAGES_STORE", "REDIS_URL"):
            value = settings.get(name)
            password = _password_of(value) if isinstance(value, str) else None
            if password:
                self._unmask.append(redact_logs(password))
        webhook = settings.get("TMAPI_ALERT_WEBHOOK")
        path = urlsplit(webhook).path if isinstance(webhook, str) else ""
        if len(path) > 1:  # a webhook's path is often its secret (Slack's)
            self._unmask.append(redact_logs(path))
        if self._unmask and self.crawler is not None:
            self.crawler.signals.connect(self._engine_stopped, signal=signals.engine_stopped)

    def _engine_stopped(self) -> None:
        while self._unmask:
            self._unmask.pop()()

    @staticmethod
    def _media(settings: BaseSettings) -> None:
        """The media pipelines after validation (100) and before the store
        (200); media downloads get room of their own among the downloader's
        requests, so that they never keep an API call waiting."""
        settings.set_in_component_priority_dict("EXTENSIONS", MediaDownloads, 0)
        _default(settings, "DOWNLOADER_MIDDLEWARES", MediaMiddleware, MEDIA_MIDDLEWARE_PRIORITY)
        # Scrapy's media pipelines leave a 3xx to the pipeline unless told to
        # let RedirectMiddleware follow it (each hop is checked: MediaMiddleware).
        if settings.getpriority("MEDIA_ALLOW_REDIRECTS") in (None, SETTINGS_PRIORITIES["default"]):
            settings.set("MEDIA_ALLOW_REDIRECTS", True, "addon")
        thumbs = settings.get("IMAGES_THUMBS")
        if isinstance(thumbs, str):
            # From the command line: JSON, which Scrapy's images pipeline
            # does not parse (a bad one is refused before the crawl).
            with contextlib.suppress(ValueError):
                settings.set(
                    "IMAGES_THUMBS", settings.getdict("IMAGES_THUMBS"), settings.getpriority("IMAGES_THUMBS") or 0
                )
        if settings.getdict("IMAGES_THUMBS"):
            if not settings.get("IMAGES_STORE"):
                settings.set("IMAGES_STORE", settings.get("FILES_STORE"), settings.getpriority("FILES_STORE") or 0)
            _default(settings, "ITEM_PIPELINES", MediaImagesPipeline, 150)
        _default(settings, "ITEM_PIPELINES", MediaFilesPipeline, 160)
        try:
            media = settings.getint("TMAPI_MEDIA_CONCURRENCY") or DEFAULTS["TMAPI_MEDIA_CONCURRENCY"]
        except ValueError:  # refused in one line by the config check, before the crawl
            media = DEFAULTS["TMAPI_MEDIA_CONCURRENCY"]
        total = settings.getint("CONCURRENT_REQUESTS") + media
        settings.set("CONCURRENT_REQUESTS", total, settings.getpriority("CONCURRENT_REQUESTS") or 0)

    @staticmethod
    def _monitors(settings: BaseSettings) -> None:
        """spidermon with the crawler's suites (added to any the user has),
        and the alerts after it.  Monitors are on unless the user turns
        spidermon off, and always when a webhook or TMAPI_NOTIFY is set:
        the alerts report on them."""
        alerts = settings.get("TMAPI_ALERT_WEBHOOK") or settings.get("TMAPI_NOTIFY")
        if alerts:
            settings.set(
                "SPIDERMON_ENABLED",
                True,
                max(settings.getpriority("SPIDERMON_ENABLED") or 0, SETTINGS_PRIORITIES["cmdline"]),
            )
        elif settings.get("SPIDERMON_ENABLED") is None:
            settings.set("SPIDERMON_ENABLED", True, "addon")
        settings.set_in_component_priority_dict("EXTENSIONS", Spidermon, None)  # replaced by:
        _default(settings, "EXTENSIONS", TmapiSpidermon, 500)
        if alerts:  # else nothing to send, and no "Disabled" warning
            _default(settings, "EXTENSIONS", AlertWebhook, 510)
        close = list(settings.getlist("SPIDERMON_SPIDER_CLOSE_MONITORS"))
        settings.set("SPIDERMON_SPIDER_CLOSE_MONITORS", [*close, _path(CrawlMonitors)], "addon")
        periodic = settings.getdict("SPIDERMON_PERIODIC_MONITORS")
        settings.set("SPIDERMON_PERIODIC_MONITORS", {**periodic, _path(StallMonitors): STALL_CHECK_INTERVAL}, "addon")

    @staticmethod
    def _download_handlers(settings: BaseSettings) -> None:
        """Ours for the API's scheme (``TMAPI_BASE_URL``'s: https, or http
        for the sandbox), wrapping the handler that scheme had (the user's,
        or Scrapy's: ``TMAPI_INNER_DOWNLOAD_HANDLER``); the other scheme keeps
        its own handler, untouched, as Scrapy's add-on documentation does."""
        ours = _path(TokenDownloadHandler)
        base = settings.get("TMAPI_BASE_URL") or PRODUCTION_URL
        try:
            scheme = urlsplit(str(base)).scheme or "https"
        except ValueError:  # refused in one line by the config check, before the crawl
            scheme = "https"
        handlers = settings.getdict("DOWNLOAD_HANDLERS")
        given = handlers.get(scheme)
        theirs = _path(given) if isinstance(given, type) else given
        if theirs and theirs != ours:
            settings.set("TMAPI_INNER_DOWNLOAD_HANDLER", theirs, "addon")
        settings.set("DOWNLOAD_HANDLERS", {**handlers, scheme: ours}, settings.getpriority("DOWNLOAD_HANDLERS") or 0)

    @staticmethod
    def _feeds(settings: BaseSettings) -> None:
        # Local files that never lose a record silently (a full disk).
        storages = settings.getdict("FEED_STORAGES")
        ours = {scheme: _path(GuardedFileFeedStorage) for scheme in ("", "file") if scheme not in storages}
        settings.set("FEED_STORAGES", {**storages, **ours}, settings.getpriority("FEED_STORAGES") or 0)
        register_feed_formats(settings)  # ours wherever the user's FEED_EXPORTERS does not name them
        feeds: dict[str, dict[str, Any]] = {}
        resuming = has_state(settings)
        for uri, given in settings.getdict("FEEDS").items():
            options = dict(given or {})
            # A store or SKU export is made of products only.
            classes = [ProductItem] if options.get("format") in EXPORTERS else RECORD_CLASSES
            options.setdefault("item_classes", [_path(c) for c in classes])
            options.setdefault("encoding", "utf-8")
            if resuming:
                # The same command again (-O too) resumes: the feed keeps the
                # first run's records (JobdirScheduler cuts what was not safe).
                options["overwrite"] = False
            feeds[str(uri)] = options
        failures = settings.get("TMAPI_FAILURES_FILE") or DEFAULTS["TMAPI_FAILURES_FILE"]
        feeds[str(failures)] = {
            "format": "jsonlines-compact",
            "item_classes": [_path(FailureItem)],
            "encoding": "utf-8",
            "store_empty": False,
            # A resumed crawl (JOBDIR) adds to the failures of its first run.
            "overwrite": mode_of(settings) is not Mode.JOBDIR,
            # Any other holds this crawl's records only: an older file goes
            # when the crawl starts, even if this one has none.
            FRESH: not resuming,
        }
        if settings.get("TMAPI_STORE"):
            changes = settings.get("TMAPI_CHANGES_FILE") or DEFAULTS["TMAPI_CHANGES_FILE"]
            feeds[str(changes)] = {**feeds[str(failures)], "item_classes": [_path(ChangeItem)]}
        settings.set("FEEDS", feeds, settings.getpriority("FEEDS") or 0)
