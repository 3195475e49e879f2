"""Every use of a Scrapy or Twisted name that is not public API, in one place.

Scrapy has no public call for what these do: tell that the engine is
closing, wake it when work arrived from elsewhere (Redis), reach the files
its feed exports write (to fsync them before a lease is acknowledged), make
Twisted drop its cancelled timers, give a media host a download slot of its
own, reach the media pipeline's per-crawl cache of files and its files
store (to bound the one and replace the other), let ``Request.to_dict``
find a callback's name without looking through the whole spider, and import
its TLS modules without reading the source of the whole stack.  Each name is used directly here,
never through ``getattr(..., default)``: were it renamed, a silent default
would skip an fsync and acknowledge work that is not safe.  Instead
:class:`InternalsCheck` looks for every one of them when a crawl opens and
stops it at once, in one line, with the finish reason
``tmapi_incompatible_scrapy``; ``tests/test_compat.py`` pins them against the
Scrapy version of ``requirements.txt``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import logging
import os
import sys
import types
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy import Request, signals
from scrapy.extensions.feedexport import FeedExporter, FileFeedStorage
from scrapy.pipelines.files import FilesPipeline
from scrapy.pipelines.media import MediaPipeline
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.deprecate import create_deprecated_class
from scrapy.utils.reactor import is_asyncio_reactor_installed

from tmapi_crawler.durable.feeds import GuardedFile
from tmapi_crawler.reasons import FinishReason

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Self

    from scrapy import Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: The finish reason of a crawl stopped because an internal is missing.
INCOMPATIBLE = FinishReason.INCOMPATIBLE


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


def queued_requests(crawler: Crawler) -> int:
    """How many requests the scheduler holds (``ExecutionEngine._slot``'s
    scheduler: Scrapy exposes no count of it); 0 before the spider opens."""
    try:
        slot = _slot(crawler)
    except RuntimeError:  # Crawler.engine: not crawling yet
        return 0
    return len(slot.scheduler) if slot is not None else 0


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
    (:mod:`tmapi_crawler.durable.feeds`)."""
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


#: Scrapy's modules whose deprecated classes :func:`import_tls_modules` imports.
TLS_MODULES = ("scrapy.core.downloader.tls", "scrapy.core.downloader.contextfactory")


def import_tls_modules() -> None:
    """Import Scrapy's TLS modules (the HTTP download handler's) without what
    naming their deprecated classes costs: ``create_deprecated_class`` finds
    the module of each class it makes with ``inspect.stack()``, which reads
    the source of every frame of the stack and, the first time, maps every
    loaded module to its file; three classes, 0.5 G instructions (150 ms) of
    every crawl's start, measured on a re-crawl of 20 products (3.7 G).
    While they are imported, ``inspect.stack`` called from there gives the
    one thing Scrapy reads of it, the module of its caller (any other caller
    is given the real one)."""
    if all(name in sys.modules for name in TLS_MODULES):
        return
    real = inspect.stack

    def caller_module(context: int = 1) -> list[Any]:
        if sys._getframe(1).f_code is not create_deprecated_class.__code__:
            return real(context)
        # [1][0] is all it reads: inspect.getmodule() of its caller's frame.
        module = sys._getframe(2).f_globals.get("__name__")
        return [None, (types.SimpleNamespace(__module__=module),)]

    inspect.stack = caller_module
    try:
        for name in TLS_MODULES:
            importlib.import_module(name)
    finally:
        inspect.stack = real


def compact_timers() -> None:
    """Run Twisted's ``runUntilCurrent()``, which drops cancelled timers from
    its heap (the asyncio reactor calls it only when one of Twisted's own
    timers falls due): see :class:`tmapi_crawler.extensions.TimerCompaction`."""
    # Imported when called: importing the reactor when this module loads
    # would install Twisted's default one before Scrapy installs its own.
    from twisted.internet import reactor

    reactor.runUntilCurrent()


def set_slot(crawler: Crawler, key: str, concurrency: int) -> None:
    """Give the download slot *key* its own concurrency and no delay before
    its first request (``Downloader.per_slot_settings``: what Scrapy read
    from ``DOWNLOAD_SLOTS``, whose keys must be known in advance; a media
    host is known only when a record names it)."""
    crawler.engine.downloader.per_slot_settings.setdefault(key, {"concurrency": concurrency, "delay": 0, "jitter": 0})


def media_cache(pipeline: MediaPipeline) -> Any:
    """The media pipeline's cache of this crawl's files (``spiderinfo``, made
    in ``open_spider``, and its ``downloaded`` dict, which keeps every file
    of the crawl: :class:`tmapi_crawler.media.downloads.MediaFilesPipeline` bounds it)."""
    return pipeline.spiderinfo


def files_store(pipeline: FilesPipeline) -> Any:
    """The files pipeline's store (``FilesPipeline.store``, made from
    ``FILES_STORE`` by ``_get_store``)."""
    return pipeline.store


def replace_files_store(pipeline: FilesPipeline, store: Any) -> None:
    """Give the files pipeline another store object (ours write local files
    in threads, and keep FTP connections)."""
    pipeline.store = store


class CallbackNames:
    """What ``Request.to_dict`` is shown of the spider: only the request's
    callback and errback.  Scrapy finds their names with
    ``inspect.getmembers`` over the whole spider (``_find_method``), which
    costs more than the rest of a request's encoding; shown two members, it
    finds the same names."""

    def __init__(self, spider: Spider, request: Request):
        self._methods = {}
        for func in (request.callback, request.errback):
            name = getattr(func, "__name__", None)
            if name and getattr(getattr(spider, name, None), "__func__", None) is getattr(func, "__func__", 0):
                self._methods[name] = func

    def __dir__(self) -> list[str]:
        return list(self._methods)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_methods"][name]
        except KeyError:
            raise AttributeError(name) from None


def request_dict(request: Request, spider: Spider) -> dict[str, Any]:
    """``request.to_dict()``, its callback and errback found by name through
    :class:`CallbackNames`."""
    return request.to_dict(spider=CallbackNames(spider, request))  # type: ignore[arg-type]


def missing_internals(crawler: Crawler) -> list[str]:
    """The internals above that this Scrapy and Twisted lack, by name."""
    return [*_engine(crawler), *_feeds(crawler), *_media(crawler), *_codec(crawler), *_reactor()]


def _engine(crawler: Crawler) -> Iterator[str]:
    engine = crawler.engine
    if not isinstance(getattr(getattr(engine, "downloader", None), "per_slot_settings", None), dict):
        yield "Downloader.per_slot_settings"
    if not hasattr(engine, "_slot"):
        yield "ExecutionEngine._slot"
        return
    slot = engine._slot
    yield from (f"engine slot.{name}" for name in ("closing", "nextcall") if slot and not hasattr(slot, name))


def _feeds(crawler: Crawler) -> Iterator[str]:
    exporter = crawler.get_extension(FeedExporter)
    if exporter is None:
        return
    if not hasattr(exporter, "slots"):
        yield "FeedExporter.slots"
        return
    for name in ("file", "storage", "feed_options"):
        if any(not hasattr(slot, name) for slot in exporter.slots):
            yield f"FeedSlot.{name}"


def _media(crawler: Crawler) -> Iterator[str]:
    if "downloaded" not in vars(MediaPipeline.SpiderInfo(getattr(crawler, "spider", None))):  # type: ignore[arg-type]
        yield "MediaPipeline.SpiderInfo.downloaded"
    if not callable(getattr(FilesPipeline, "_get_store", None)):
        yield "FilesPipeline._get_store (FilesPipeline.store)"


def _codec(crawler: Crawler) -> Iterator[str]:
    spider = getattr(crawler, "spider", None)
    if spider is None or not callable(getattr(spider, "parse", None)):
        return
    try:
        found = request_dict(Request("http://127.0.0.1/", callback=spider.parse), spider).get("callback")
    except (ValueError, AttributeError, TypeError):
        found = None
    if found != "parse":
        yield "Request.to_dict finding callbacks with inspect.getmembers"


def _reactor() -> Iterator[str]:
    if is_asyncio_reactor_installed():
        from twisted.internet import reactor  # see compact_timers

        if not hasattr(reactor, "runUntilCurrent"):
            yield "reactor.runUntilCurrent"


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
