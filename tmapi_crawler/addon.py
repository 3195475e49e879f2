"""The add-on: every component of the crawler registered in one place.

``ADDONS = {"tmapi_crawler.addon.TmapiAddon": 0}`` (the project's settings do
this) turns a Scrapy project into a TMAPI crawler:

* the token is taken out of the settings (``TMAPI_TOKEN`` or the environment)
  and kept here, so that no settings dump or log shows it;
* the download handler that adds the token, the middleware that acts on the
  API's answers (in place of ``RetryMiddleware``), the validation pipeline and
  the stats/progress extension are enabled;
* feeds: every feed the user configured (``-o``, ``-O``, ``FEEDS``) gets the
  product and listing records; failure records go to ``TMAPI_FAILURES_FILE``,
  created only when there is one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from scrapy import signals

from tmapi_crawler.auth import redact_logs
from tmapi_crawler.config import DEFAULTS, REDACTED
from tmapi_crawler.records import RECORD_CLASSES, FailureItem

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class TmapiAddon:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.token: str | None = None
        self.stop_redacting: Callable[[], None] = lambda: None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def update_settings(self, settings: BaseSettings) -> None:
        token = settings.get("TMAPI_TOKEN")
        if token in (None, "", REDACTED):
            token = os.environ.get("TMAPI_TOKEN") or None
        self.token = token
        self.crawler.signals.connect(self.engine_started, signal=signals.engine_started)
        self.crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)
        if settings.get("TMAPI_TOKEN") is not None:
            settings.set("TMAPI_TOKEN", REDACTED, settings.getpriority("TMAPI_TOKEN") or 0)

        from scrapy.downloadermiddlewares.retry import RetryMiddleware

        from tmapi_crawler.extensions import TimerCompaction, TmapiStats
        from tmapi_crawler.middlewares import ApiMiddleware
        from tmapi_crawler.pipelines import ValidationPipeline
        from tmapi_crawler.throttle import DEFAULT_CAP, TmapiThrottle

        handler = "tmapi_crawler.auth.TokenDownloadHandler"
        handlers = {**settings.getdict("DOWNLOAD_HANDLERS"), "http": handler, "https": handler}
        settings.set("DOWNLOAD_HANDLERS", handlers, settings.getpriority("DOWNLOAD_HANDLERS") or 0)
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", RetryMiddleware, None)
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", ApiMiddleware, 550)
        settings.set_in_component_priority_dict("ITEM_PIPELINES", ValidationPipeline, 100)
        settings.set_in_component_priority_dict("EXTENSIONS", TmapiStats, 500)
        settings.set_in_component_priority_dict("EXTENSIONS", TimerCompaction, 0)
        settings.set_in_component_priority_dict("EXTENSIONS", TmapiThrottle, 0)
        # The gate (tmapi_crawler.throttle) decides how many calls are in
        # flight; Scrapy's own limits only need to leave it room.
        cap = settings.getint("TMAPI_CONCURRENCY") or DEFAULT_CAP
        for name in ("CONCURRENT_REQUESTS", "CONCURRENT_REQUESTS_PER_DOMAIN"):
            if settings.getint(name) < 2 * cap:
                settings.set(name, 2 * cap, settings.getpriority(name) or 0)
        if settings.get("REDIS_URL"):
            # Distributed: the queue, the dupefilter and the account's limit
            # in Redis (tmapi_crawler.cluster); nothing of it loads otherwise.
            from tmapi_crawler.cluster.scheduler import LeasedScheduler, RedisDupeFilter

            settings.set("SCHEDULER", _path(LeasedScheduler), "addon")
            settings.set("DUPEFILTER_CLASS", _path(RedisDupeFilter), "addon")
        self._feeds(settings)

    def engine_started(self) -> None:
        # From the first call to the last, every log line is masked; nothing
        # before can hold the token (it left the settings above).
        self.stop_redacting = redact_logs(self.token)

    def engine_stopped(self) -> None:
        self.stop_redacting()

    @staticmethod
    def _feeds(settings: BaseSettings) -> None:
        feeds: dict[str, dict[str, Any]] = {}
        for uri, given in settings.getdict("FEEDS").items():
            options = dict(given or {})
            options.setdefault("item_classes", [_path(c) for c in RECORD_CLASSES])
            options.setdefault("encoding", "utf-8")
            feeds[str(uri)] = options
        failures = settings.get("TMAPI_FAILURES_FILE", DEFAULTS["TMAPI_FAILURES_FILE"])
        feeds[str(failures)] = {
            "format": "jsonlines",
            "item_classes": [_path(FailureItem)],
            "encoding": "utf-8",
            "store_empty": False,
            # A resumed crawl (JOBDIR) adds to the failures of its first run.
            "overwrite": not settings.get("JOBDIR"),
        }
        settings.set("FEEDS", feeds, settings.getpriority("FEEDS") or 0)
