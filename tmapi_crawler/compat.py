"""Every use of a Scrapy or Twisted name that is not public API, in one place.

Scrapy has no public call for what these do: tell that the engine is
closing, wake it when work arrived from elsewhere (Redis), reach the files
its feed exports write (to fsync them before a lease is acknowledged), and
make Twisted drop its cancelled timers.  Each name is used directly here,
never through ``getattr(..., default)``: were it renamed, a silent default
would skip an fsync and acknowledge work that is not safe.  Instead
:class:`InternalsCheck` looks for every one of them when a crawl opens and
stops it at once, in one line, with the finish reason
``tmapi_incompatible_scrapy``; ``tests/test_compat.py`` pins them against the
Scrapy version of ``requirements.txt``.
"""

from __future__ import annotations

import io
import logging
import os
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy import signals
from scrapy.extensions.feedexport import FeedExporter, FileFeedStorage
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.reactor import is_asyncio_reactor_installed

from tmapi_crawler.outputs import GuardedFile

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: The finish reason of a crawl stopped because an internal is missing.
INCOMPATIBLE = "tmapi_incompatible_scrapy"


def _slot(crawler: Crawler) -> Any:
    # ExecutionEngine._slot: the open spider's slot (closing, nextcall).
    return crawler.engine._slot


def engine_closing(crawler: Crawler) -> bool:
    """Whether the engine is stopping (Ctrl-C, a close): Scrapy has no public
    "closing" flag, and sends no signal before it waits for the calls in
    progress."""
    engine = crawler.engine
    slot = _slot(crawler)
    return not engine.running or slot is None or slot.closing is not None


def wake_engine(crawler: Crawler) -> None:
    """Have the engine ask the scheduler for requests now rather than at its
    next 5 s heartbeat: work that arrives from elsewhere (other workers'
    requests in Redis) comes with no signal to this process."""
    slot = _slot(crawler)
    if slot is not None and slot.closing is None:
        slot.nextcall.schedule()


def _open_feeds(crawler: Crawler) -> Iterator[tuple[Any, IO[bytes]]]:
    """``(slot, open file)`` of every feed this crawl writes
    (FeedExporter.slots, FeedSlot.file: both internal)."""
    exporter = crawler.get_extension(FeedExporter)
    if exporter is None:
        return
    for slot in exporter.slots:
        file = slot.file
        if file is not None and not file.closed:
            yield slot, file


def feed_files(crawler: Crawler) -> Iterator[IO[bytes]]:
    """The open files of every feed this crawl writes."""
    for _, file in _open_feeds(crawler):
        yield file


def local_feed_files(crawler: Crawler) -> Iterator[tuple[str, IO[bytes]]]:
    """``(absolute path, open file)`` of every feed written to a local file
    without post-processing (FeedSlot.storage and feed_options, internal;
    FileFeedStorage.path)."""
    for slot, file in _open_feeds(crawler):
        if isinstance(slot.storage, FileFeedStorage) and "postprocessing" not in slot.feed_options:
            yield os.path.abspath(slot.storage.path), file


def sync_feeds(crawler: Crawler) -> None:
    """Flush and fsync every feed file this crawl is writing (a feed on
    remote storage is uploaded only when the crawl closes: see the README).
    A local file that fails to sync is reported like a failed write
    (:mod:`tmapi_crawler.outputs`)."""
    for file in feed_files(crawler):
        file.flush()
        try:
            os.fsync(file.fileno())
        except (AttributeError, ValueError, io.UnsupportedOperation):
            continue  # not a file of its own: flushed is all it can be
        except OSError as exc:
            # Our own local files say so (a full disk); any other is a pipe
            # or a device, for which flushed is all it can be.
            if isinstance(file, GuardedFile):
                file.failed(exc)


def compact_timers() -> None:
    """Run Twisted's ``runUntilCurrent()``, which drops cancelled timers from
    its heap (the asyncio reactor calls it only when one of Twisted's own
    timers falls due): see :class:`tmapi_crawler.extensions.TimerCompaction`."""
    # Imported when called: importing the reactor when this module loads
    # would install Twisted's default one before Scrapy installs its own.
    from twisted.internet import reactor

    reactor.runUntilCurrent()


async def wait_for_room(crawler: Crawler) -> None:
    """While the downloader is full (``ExecutionEngine.needs_backout``, not
    documented), wait until the scheduler is empty: Scrapy takes whatever
    ``start()`` yields as fast as it comes, so without this an ids file of
    millions of lines would be read into memory at once."""
    engine = crawler.engine
    if engine is not None and engine.needs_backout():
        await crawler.signals.wait_for(signals.scheduler_empty)


def set_slot(crawler: Crawler, key: str, concurrency: int) -> None:
    """Give the download slot *key* its own concurrency and no delay before
    its first request (``Downloader.per_slot_settings``: what Scrapy read
    from ``DOWNLOAD_SLOTS``, whose keys must be known in advance; a media
    host is known only when a record names it)."""
    crawler.engine.downloader.per_slot_settings.setdefault(key, {"concurrency": concurrency, "delay": 0, "jitter": 0})


def missing_internals(crawler: Crawler) -> list[str]:
    """The internals above that this Scrapy and Twisted lack, by name."""
    missing = []
    engine = crawler.engine
    if not hasattr(engine, "needs_backout"):
        missing.append("ExecutionEngine.needs_backout")
    if not isinstance(getattr(getattr(engine, "downloader", None), "per_slot_settings", None), dict):
        missing.append("Downloader.per_slot_settings")
    if not hasattr(engine, "_slot"):
        missing.append("ExecutionEngine._slot")
    else:
        slot = engine._slot
        missing += [f"engine slot.{name}" for name in ("closing", "nextcall") if slot and not hasattr(slot, name)]
    exporter = crawler.get_extension(FeedExporter)
    if exporter is not None:
        if not hasattr(exporter, "slots"):
            missing.append("FeedExporter.slots")
        else:
            for name in ("file", "storage", "feed_options"):
                if any(not hasattr(slot, name) for slot in exporter.slots):
                    missing.append(f"FeedSlot.{name}")
    if is_asyncio_reactor_installed():
        from twisted.internet import reactor  # see compact_timers

        if not hasattr(reactor, "runUntilCurrent"):
            missing.append("reactor.runUntilCurrent")
    return missing


class InternalsCheck:
    """Stops a crawl at once when an internal of :mod:`tmapi_crawler.compat`
    is missing, rather than let it run with leases acknowledged unsafely.
    Enabled by the add-on, after the feed exports (so that their slots
    exist when it looks)."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def spider_opened(self) -> None:
        missing = missing_internals(self.crawler)
        if not missing:
            return
        logger.error(
            "This Scrapy (%s) lacks what tmapi_crawler relies on (%s): install the versions of requirements.txt",
            scrapy.__version__,
            ", ".join(missing),
        )
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=INCOMPATIBLE))
