"""The crawl's own extensions: stats, the progress line and the
end-of-crawl summary (:class:`TmapiStats`), the compaction of Twisted's
timers (:class:`TimerCompaction`), the start's objects kept out of the
garbage collector's way (:class:`StartFrozen`), and the stats collector
itself (:class:`TmapiStatsCollector`)."""

from __future__ import annotations

import gc
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.extensions.corestats import CoreStats
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.reactor import is_asyncio_reactor_installed

from tmapi_crawler._moved import moved_name
from tmapi_crawler.api import DETAIL_ENDPOINTS, Endpoint, endpoint_of
from tmapi_crawler.compat import compact_timers
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.durable.feeds import GuardedFeedExporter, guard_of, item_scraped_owners
from tmapi_crawler.loops import looping_call
from tmapi_crawler.records import ChangeItem, FailureItem, ListingItem, ProductItem

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler

    from tmapi_crawler.durable.feeds import FeedGuard

logger = logging.getLogger(__name__)

#: Failures that end a product (a failed description does not: the product
#: is still written, with its description fields null).
PRODUCT_ENDING = {Endpoint.ITEM_DETAIL.value, Endpoint.ITEM_DETAIL_BY_URL.value, "record"}


#: The progress figures a resumed crawl carries on (JOBDIR keeps them), and
#: the prefix of the stats that hold the earlier runs' part.
PROGRESS_KEYS = (
    "pages",
    "pages_known",
    "products_expected",
    "products",
    "products_failed",
    "listings",
    "failures",
    "duplicates",
    "refresh/spent",
)
RESUMED = "tmapi/resumed"
#: The crawl's id, given by what knows it: the JOBDIR scheduler (the same
#: across the crawl's resumes), the distributed run (every worker's); the
#: catalog store's ``crawls`` row is the crawl's under it.
CRAWL_ID_STAT = "tmapi/crawl_id"


class TmapiStatsCollector(MemoryStatsCollector):
    """Scrapy's ``MemoryStatsCollector`` (the add-on sets ``STATS_CLASS`` to
    it where the user's settings keep Scrapy's), without the
    ``__getattribute__`` Scrapy 2.19 puts in front of every attribute of a
    stats collector (to warn of a ``spider`` argument, which its methods
    take and ignore): a stat counted in 0.15 us instead of 2.8 us, and a
    crawl counts a few stats a product, plus every component's lookups."""

    __getattribute__ = object.__getattribute__


def from_the_store(served: int, descriptions: int) -> str:
    """What the store answered, as the summary and the report say it: the
    products served whole, and the descriptions reused for products whose
    detail was fetched (a price changed), and the calls that saved."""
    alone = max(0, descriptions - served)
    reused = f" and {alone} descriptions reused" if alone else ""
    return f"{served} products{reused} ({served + descriptions} calls saved)"


def changes_by_kind(stats: dict[str, Any]) -> dict[str, int]:
    """The change records written in this crawl, by kind (``tmapi/changes/<kind>``)."""
    return {
        key.removeprefix("tmapi/changes/"): int(value)
        for key, value in stats.items()
        if key.startswith("tmapi/changes/") and value
    }


def progress_of(stats: dict[str, Any]) -> dict[str, float]:
    """The progress figures of a crawl so far, its earlier runs' included
    (what JOBDIR keeps for the next run), and the seconds they took
    (``seconds``: the rate of a resumed run's ETA before its first record)."""
    figures: dict[str, float] = {
        key: int(stats.get(f"tmapi/{key}", 0)) + int(stats.get(f"{RESUMED}/{key}", 0)) for key in PROGRESS_KEYS
    }
    started = stats.get("start_time")  # CoreStats'
    ran = (datetime.now(UTC) - started).total_seconds() if isinstance(started, datetime) else 0.0
    figures["seconds"] = round(ran + float(stats.get(f"{RESUMED}/seconds", 0)), 3)
    return figures


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TmapiStats:
    """Counts records under ``tmapi/``, logs a progress line every
    ``TMAPI_PROGRESS_INTERVAL`` seconds and a summary when the crawl ends."""

    #: Counts only what the files took (FeedGuard.item_failed): told of a
    #: record after the feed exports (tmapi_crawler.durable.feeds.check_readers_order).
    reads_feed_outcome = True

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        config = config_from_settings(crawler.settings)
        self.interval = config.progress_interval
        self.failures_file = config.failures_file
        self.changes_file = config.changes_file if config.store is not None else None
        self.guard: FeedGuard | None = None
        #: Whether it counts ``item_scraped_count`` for ``CoreStats`` (:meth:`_take_core_count`).
        self.counts_for_core = False
        self.started = time.monotonic()
        self.task: Any = None
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.request_dropped, signal=signals.request_dropped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def spider_opened(self) -> None:
        self.guard = guard_of(self.crawler)
        self.started = time.monotonic()
        self.counts_for_core = self._take_core_count()
        self._told_by_feeds()
        if self.interval:
            self.task = looping_call(self.log_progress, "progress", self.stats)
            self.task.start(self.interval, now=False)

    def _take_core_count(self) -> bool:
        """Count ``item_scraped_count`` in the place of Scrapy's
        ``CoreStats``, when it is Scrapy's own: its receiver of every record
        is disconnected.  Scrapy 2.19 runs each ``item_scraped`` receiver as
        an asyncio task of its own (about 80 K instructions a record, 5% of
        one the store answers); the count is the same, of every record,
        whether its files took it or not."""
        core = self.crawler.get_extension(CoreStats)
        if core is None or type(core).item_scraped is not CoreStats.item_scraped:
            return False
        self.crawler.signals.disconnect(core.item_scraped, signal=signals.item_scraped)
        return True

    def _told_by_feeds(self) -> None:
        """Be told of each record by the feed exports right after they wrote
        it (:meth:`GuardedFeedExporter.tell`) in the place of an
        ``item_scraped`` receiver of its own: one asyncio task a record
        fewer (68 K instructions a record, measured).  Only
        where it is told after them anyway, so that what it reads of the
        files is the same; told before them (a user's ``EXTENSIONS``
        priority below 0), it stays, and ``check_readers_order`` refuses
        the crawl."""
        exporter = self.crawler.get_extension(GuardedFeedExporter)
        owners = item_scraped_owners(self.crawler)
        if self.guard is None or exporter is None or exporter not in owners or self not in owners:
            return
        if owners.index(self) < owners.index(exporter):
            return
        self.crawler.signals.disconnect(self.item_scraped, signal=signals.item_scraped)
        exporter.tell(self.item_scraped)

    def item_scraped(self, item: Any) -> None:
        if self.counts_for_core:
            self.stats.inc_value("item_scraped_count")
        if self.guard is not None and self.guard.item_failed:
            return  # a file did not take it: only what was written counts
        inc = self.stats.inc_value
        if isinstance(item, ProductItem):
            inc("tmapi/products")
        elif isinstance(item, ListingItem):
            inc("tmapi/listings")
        elif isinstance(item, FailureItem):
            inc("tmapi/failures")
            inc(f"tmapi/failures/{item['endpoint']}")
            if item["endpoint"] in PRODUCT_ENDING:
                inc("tmapi/products_failed")
        elif isinstance(item, ChangeItem):
            inc("tmapi/changes")
            inc(f"tmapi/changes/{item['change']}")

    def request_dropped(self, request: Request) -> None:
        endpoint = endpoint_of(request)
        if endpoint in DETAIL_ENDPOINTS:
            # The dupefilter saw this product already: it is fetched once.
            self.stats.inc_value("tmapi/duplicates")

    def _get(self, key: str) -> int:
        return int(self.stats.get_value(key, 0))

    def progress(self) -> str:
        get = self._get
        elapsed = max(time.monotonic() - self.started, 1e-6)
        calls = get("tmapi/calls")
        done = get("tmapi/products") + get("tmapi/products_failed") + get("tmapi/listings")
        # A resumed crawl (JOBDIR) carries on the figures of its earlier runs.
        before = {key: get(f"{RESUMED}/{key}") for key in PROGRESS_KEYS}
        done_before = before["products"] + before["products_failed"] + before["listings"]
        expected = get("tmapi/products_expected") + before["products_expected"]
        parts = []
        pages_known = get("tmapi/pages_known") + before["pages_known"]
        if pages_known:
            parts.append(f"pages {get('tmapi/pages') + before['pages']}/{pages_known}")
        parts.append(
            f"products {get('tmapi/products') + get('tmapi/listings') + before['products'] + before['listings']}"
        )
        parts.append(f"failures {get('tmapi/failures') + before['failures']}")
        parts.append(f"{calls / elapsed:.1f} calls/s")
        # This run's rate; before its first record, its earlier runs'.
        seconds_before = float(self.stats.get_value(f"{RESUMED}/seconds", 0))
        rate = done / elapsed if done else done_before / seconds_before if seconds_before else 0.0
        if expected and rate and self.crawler.spider is not None and self.crawler.spider.name == "shop":
            duplicates = get("tmapi/duplicates") + before["duplicates"]
            remaining = max(expected - done - done_before - duplicates, 0)
            parts.append(f"ETA {_duration(remaining / rate)}")
        return ", ".join(parts)

    def log_progress(self) -> None:
        logger.info("Progress: %s", self.progress())

    def _store_rows(self) -> list[tuple[str, Any]]:
        """What the catalog store did: the products it served (each a call
        saved, or two with the description), the changes by kind and where
        they went; the same figures in the stats."""
        get = self._get
        served = get("tmapi/store/detail_from_store")
        saved = served + get("tmapi/store/desc_from_store")
        self.stats.set_value("tmapi/store/products_served", served)
        self.stats.set_value("tmapi/store/calls_saved", saved)
        kinds = changes_by_kind(self.stats.get_stats())
        changes = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        rows = [
            ("from the store", from_the_store(served, get("tmapi/store/desc_from_store"))),
            ("changes", f"{changes} in {self.changes_file}" if changes else "0"),
        ]
        stats = self.stats.get_stats()
        if "tmapi/refresh/spent" in stats:
            current = stats.get("tmapi/refresh/estimated_current")
            share = f"; about {current:.0%} of orders current" if current is not None else ""
            caught = get("tmapi/refresh/caught")
            rows.append(
                (
                    "refreshed",
                    f"{get('tmapi/refresh/spent')} of {get('tmapi/refresh/eligible')} stored (budget "
                    f"{get('tmapi/refresh/budget')}, {get('tmapi/refresh/watched')} watched), {caught} changes caught"
                    f"{share}",
                )
            )
        return rows

    def spider_closed(self, reason: str) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()
        get = self._get
        elapsed = time.monotonic() - self.started
        per_endpoint = ", ".join(
            f"{e.value} {get(f'tmapi/calls/{e.value}')}" for e in Endpoint if get(f"tmapi/calls/{e.value}")
        )
        media_failed = get("tmapi/failures/media")
        failures = get("tmapi/failures") - media_failed
        rows = [
            ("finish reason", reason),
            ("calls sent", f"{get('tmapi/calls')}" + (f" ({per_endpoint})" if per_endpoint else "")),
            ("billed (200)", get("tmapi/billed")),
            ("retries", get("tmapi/retries/count")),
            ("503 / 439 answers", f"{get('tmapi/codes/503')} / {get('tmapi/codes/439')}"),
            ("products", get("tmapi/products")),
        ]
        if get("tmapi/listings"):
            rows.append(("listing records", get("tmapi/listings")))
        if get("tmapi/duplicates"):
            rows.append(("duplicates skipped", get("tmapi/duplicates")))
        rows.append(("failures", f"{failures} in {self.failures_file}" if failures else "0"))
        if media_failed:
            rows.append(("media files failed", f"{media_failed} in {self.failures_file} (their products were written)"))
        if self.changes_file is not None:
            rows += self._store_rows()
        if self.guard is not None and self.guard.failed:
            rows.append(("NOT WRITTEN", f"{self.guard.failed} (the counts above are what was written)"))
        rows.append(("elapsed", f"{elapsed:.1f} s ({get('tmapi/calls') / max(elapsed, 1e-6):.1f} calls/s)"))
        width = max(len(name) for name, _ in rows)
        table = "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
        logger.info("TMAPI summary:\n%s", table)


#: Seconds between two compactions of Twisted's heap of timers.
TIMER_COMPACTION_INTERVAL = 2.0


class TimerCompaction:
    """Keeps Twisted's heap of timers from holding a minute of dead ones.

    Every download sets a 60 s timeout (``DOWNLOAD_TIMEOUT``), and every
    connection going back to the pool an idle timer; both are cancelled a few
    milliseconds later.  Twisted drops cancelled timers from its heap only in
    ``runUntilCurrent()``, which the asyncio reactor calls only when one of
    Twisted's own timers falls due, so at hundreds of calls a second the heap
    holds every timer of the last minute: tens of MB that grow with the call
    rate (measured: +25 MB at 600 calls/s).  ``runUntilCurrent()`` runs only
    what is due, so calling it more often changes nothing else.  Under
    Twisted's own reactors it runs on every iteration: nothing to do.
    """

    def __init__(self, crawler: Crawler):
        self.task: Any = None
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def spider_opened(self) -> None:
        if not is_asyncio_reactor_installed():
            return  # Twisted's own reactors compact on every iteration
        self.task = looping_call(compact_timers, "timer compaction")
        self.task.start(TIMER_COMPACTION_INTERVAL, now=False)

    def spider_closed(self) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()


#: The cyclic collector's youngest generation's threshold while the engine
#: runs (Python's default is 700): see :class:`StartFrozen`.
YOUNG_THRESHOLD = 100_000


class StartFrozen:
    """Keeps the objects of the crawl's start out of the cyclic garbage
    collector's way, and the collector out of the crawl's.

    A crawl's start leaves some 100,000 objects tracked by the collector
    that live as long as it does (modules, classes, settings, the
    components), and Python's collector goes through every one of them at
    each full collection, which a crawl's records trigger again and again.
    When the engine starts, one collection clears what the start left over
    and ``gc.freeze()`` moves the rest to the collector's permanent
    generation, which it never goes through; the objects made after it are
    collected as ever (a record the store answers: 54 K instructions less,
    3%; docs/performance.md).  When the engine stops they are given back
    (``gc.unfreeze()``), so that a process that runs several crawls
    collects each one's leftovers.

    While the engine runs, the youngest generation is collected after
    :data:`YOUNG_THRESHOLD` more objects than were freed, not 700: a crawl
    frees nearly all it makes by reference counting, and Python's default
    collected some 100 times a second, promoting every object that lived a
    moment (a response whose record waits for the store's writer) to the
    older generations, each collected in its turn: 11% to 15% of a crawl's
    CPU went to the collector, 3% since, and the store's records no longer
    cost collections of their own.  The cost: cyclic garbage lives a few
    seconds, some 15 MB of peak memory (docs/performance.md).

    The collector is the process's: with several crawls in one process,
    the first engine to start sets the threshold and the last to stop gives
    back the one it found.
    """

    #: Engines running in this process, and the thresholds found before the first.
    _running = 0
    _thresholds: tuple[int, int, int] | None = None

    def __init__(self, crawler: Crawler):
        self.stats = crawler.stats
        self._started = False
        crawler.signals.connect(self.engine_started, signal=signals.engine_started)
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def engine_started(self) -> None:
        gc.collect()
        gc.freeze()
        self.stats.set_value("tmapi/gc/frozen", gc.get_freeze_count())
        if not self._started:
            self._started = True
            if StartFrozen._running == 0:
                StartFrozen._thresholds = gc.get_threshold()
                gc.set_threshold(YOUNG_THRESHOLD, *StartFrozen._thresholds[1:])
            StartFrozen._running += 1

    def engine_stopped(self) -> None:
        gc.unfreeze()
        if self._started:
            self._started = False
            StartFrozen._running -= 1
            if StartFrozen._running == 0 and StartFrozen._thresholds is not None:
                gc.set_threshold(*StartFrozen._thresholds)
                StartFrozen._thresholds = None


def __getattr__(name: str) -> object:
    """``to_feeds`` and ``QuietLogFormatter`` lived here until round 4."""
    return moved_name(__name__, name)
