"""The local files a crawl writes (feeds, failures, changes) are written
whole, or the crawl stops: nothing is lost silently (docs/behaviour.md).

Scrapy's feed exports call the exporter from the ``item_scraped`` signal,
which logs an exception and goes on: a full disk or a read-only mount cost
a traceback per record, the crawl still ended "finished" with exit 0, and
the records were gone.  Here:

* :func:`check_outputs` refuses, before any call, a local file that cannot
  be written (its folder is not writable, it is a directory, a read-only
  mount);
* :class:`GuardedFileFeedStorage` (the add-on puts it in the place of
  Scrapy's ``FileFeedStorage``) writes each record straight to the file
  (records are larger than a buffer anyway) and never leaves half a record:
  a write that fails is cut back, and tells :class:`FeedGuard`;
* :class:`FeedGuard` then logs one line that names the file and the cause,
  freezes the acknowledgements (with ``JOBDIR`` the crawl is not over, and
  the same command resumes it with nothing lost and nothing twice; in
  Redis the requests return to the queue), stops the crawl with
  :data:`FEED_FAILED`, and the record that was not written is not counted.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.extensions.feedexport import FeedExporter, FileFeedStorage
from scrapy.extensions.spiderstate import SpiderState

from tmapi_crawler.config import DEFAULTS, ConfigError, is_distributed
from tmapi_crawler.reasons import FinishReason

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Self

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: The finish reason of a crawl stopped because a file could not be written.
FEED_FAILED = FinishReason.FEED_FAILED
#: The stat that holds the one line saying which file and why.
FEED_ERROR_STAT = "tmapi/feed/error"
#: A feed option of the failures and changes files: they hold this crawl's
#: records only, so an older one is removed when the crawl starts.
FRESH = "tmapi_fresh"


def to_feeds(crawler: Crawler, item: Any) -> None:
    """A record made outside the spider (a change record of the catalog
    store, a media failure) to the feed exports, which take records from
    the ``item_scraped`` signal; the stats count it as the spider's."""
    crawler.signals.send_catch_log(signal=signals.item_scraped, item=item, response=None, spider=crawler.spider)


def _reason(exc: BaseException) -> str:
    if not isinstance(exc, OSError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__  # SQLite's "database or disk is full"
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


# -- before the crawl -------------------------------------------------------------------


def local_feed_path(uri: str) -> str | None:
    """The local file a feed URI names (a plain path or ``file://``, not a
    ``%(name)s`` template), or ``None`` for any other storage (``s3://``,
    ``stdout:``...)."""
    if "%(" in uri or ("://" in uri and not uri.startswith("file://")) or uri.startswith("stdout:"):
        return None
    return uri.removeprefix("file://")


def local_outputs(settings: BaseSettings) -> list[tuple[str, str]]:
    """``(path, what it is)`` of every local file the crawl will write: the
    feeds given (plain paths, no template), the failures file, and the
    changes file when there is a store."""
    outputs = [
        (path, "the feed") for uri in settings.getdict("FEEDS") if (path := local_feed_path(str(uri))) is not None
    ]
    outputs.append((str(settings.get("TMAPI_FAILURES_FILE") or DEFAULTS["TMAPI_FAILURES_FILE"]), "TMAPI_FAILURES_FILE"))
    if settings.get("TMAPI_STORE"):
        outputs.append(
            (str(settings.get("TMAPI_CHANGES_FILE") or DEFAULTS["TMAPI_CHANGES_FILE"]), "TMAPI_CHANGES_FILE")
        )
    return outputs


def local_feeds(settings: BaseSettings) -> list[Path]:
    """The local files of the feeds given (``-o``, ``-O``, ``FEEDS``; plain
    paths, not the failures and changes files): one crawl at a time may
    write each (:func:`tmapi_crawler.durable.locks.hold_feed`)."""
    return [
        Path(path)
        for uri, options in settings.getdict("FEEDS").items()
        if (path := local_feed_path(str(uri))) is not None and not (options or {}).get(FRESH)
    ]


def check_feed_formats(settings: BaseSettings) -> None:
    """Refuse, in one line, a feed whose format no exporter has or whose
    exporter cannot be loaded: Scrapy would disable every feed with one
    error line and the crawl would "finish" with no record."""
    from scrapy.utils.misc import load_object

    from tmapi_crawler.exports import FEED_FORMATS  # the add-on registers them

    exporters = {**FEED_FORMATS, **settings.getwithbase("FEED_EXPORTERS")}
    for uri, options in settings.getdict("FEEDS").items():
        form = (options or {}).get("format") or Path(str(uri)).suffix.removeprefix(".")
        path = exporters.get(form)
        if path is None:
            known = ", ".join(sorted(name for name, value in exporters.items() if value))
            raise ConfigError(f"the feed {uri} has the format {form!r}, which no exporter has; the formats: {known}")
        try:
            if isinstance(path, str):
                load_object(path)
        except (ImportError, AttributeError, ValueError, NameError) as exc:
            raise ConfigError(f"the exporter of the feed format {form!r} ({path}) cannot be loaded: {exc}") from None


def check_outputs(settings: BaseSettings) -> None:
    """Refuse, in one line, a local output that cannot be written; raises
    :class:`ConfigError`."""
    check_feed_formats(settings)
    for path, what in local_outputs(settings):
        problem = _unwritable(Path(path))
        if problem:
            raise ConfigError(f"cannot write {what} {path}: {problem}; give a path where the crawl can write")


def _unwritable(path: Path) -> str | None:
    if path.is_dir():
        return "it is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else "the file is not writable (or on a read-only mount)"
    folder = path.parent
    while not folder.exists():  # Scrapy makes the missing folders
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable (or on a read-only mount)"
    return None


# -- during the crawl -------------------------------------------------------------------


class FeedGuard:
    """Knows whether every file took every record (see the module's
    docstring).  Built before the feed exports (the add-on gives it a lower
    priority), so that its ``item_scraped`` handler runs before theirs."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        self.failed: str | None = None
        #: Whether a file failed to take the record being exported now.
        self.item_failed = False
        resumable = bool(crawler.settings.get("JOBDIR")) or is_distributed(crawler.settings)
        self.resume = "; the same command resumes where it stopped" if resumable else ""
        self.listeners: list[Callable[[str], None]] = []
        crawler.signals.connect(self._opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _opened(self) -> None:
        """Refuse feeds that cannot be written at all (the crawl command
        does before the crawl; Scrapy's own ``crawl`` gets here): the crawl
        stops before any call.  Then remove the failures and changes files
        an earlier crawl left: a crawl with none must not leave yesterday's."""
        try:
            check_feed_formats(self.crawler.settings)
            check_readers_order(self.crawler)
        except ConfigError as exc:
            self._stop(str(exc), "the crawl stops before any call")
            # The gate sends nothing from now (told in listen()); the engine
            # runs once the spider is open, and is closed then.
            self.crawler.signals.connect(self._close, signal=signals.engine_started)
            return
        for uri, options in self.crawler.settings.getdict("FEEDS").items():
            if (options or {}).get(FRESH):
                path = Path(str(uri).removeprefix("file://"))
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    self.write_failed(str(path), exc)

    async def _close(self) -> None:
        assert self.crawler.engine is not None
        await self.crawler.engine.close_spider_async(reason=FEED_FAILED)

    def write_failed(self, path: str, exc: BaseException) -> None:
        """A write to *path* failed (a feed, or the crawl's state in
        ``JOBDIR``), or a record could not be exported to it: the record is
        not counted, nothing is acknowledged from now on, and the crawl
        stops (once)."""
        self.item_failed = True
        if self.failed is not None:
            return
        if isinstance(exc, (OSError, sqlite3.Error)):
            self.failed = f"cannot write {path}: {_reason(exc)}"
            advice = "Free some space (or make the file writable), then run the same command again"
        else:
            self.failed = f"cannot write a record to {path}: {type(exc).__name__}: {_reason(exc)[:200]}"
            advice = "Nothing of it was acknowledged; report this line (a bug), or run the same command again"
        self._stop(self.failed, f"the crawl stops. {advice}{self.resume}")

    def _stop(self, failed: str, then: str) -> None:
        """A file failed (*failed*, the stat and the error line, followed by
        *then*): nothing is acknowledged, the listeners stop the crawl."""
        self.item_failed = True
        self.failed = failed
        self.stats.set_value(FEED_ERROR_STAT, failed)
        logger.error("%s: %s", failed, then)
        for listener in self.listeners:
            listener(FEED_FAILED)

    def listen(self, listener: Callable[[str], None]) -> None:
        """Call *listener* with the finish reason when a file fails (the
        lease tracker stops acknowledging, the gate stops the crawl); at
        once when one failed already (a feed refused as the spider opened)."""
        self.listeners.append(listener)
        if self.failed is not None:
            listener(FEED_FAILED)


#: The class attribute of a component whose ``item_scraped`` receiver reads
#: :attr:`FeedGuard.item_failed`: it must be told of a record after the feed
#: exports wrote it (checked when the spider opens).
READS_FEED_OUTCOME = "reads_feed_outcome"


def check_readers_order(crawler: Crawler) -> None:
    """Refuse a crawl in which a component that reads whether the files
    took a record (:data:`READS_FEED_OUTCOME`) is told of it before the feed
    exports (a user's ``EXTENSIONS`` priority below theirs): it would count
    a record no file holds.  Raises :class:`ConfigError` naming it."""
    exporter = crawler.get_extension(GuardedFeedExporter)
    if exporter is None:
        return
    for owner in item_scraped_owners(crawler):
        if owner is exporter:
            return
        if getattr(owner, READS_FEED_OUTCOME, False):
            raise ConfigError(
                f"{type(owner).__name__} is told of each record before the feed exports (its priority in "
                "EXTENSIONS is below theirs, 0): it would count records no file holds; give it a priority above 0"
            )


def item_scraped_owners(crawler: Crawler) -> list[Any]:
    """The object of each ``item_scraped`` receiver (``None`` for a plain
    function), in the order they are told of a record."""
    from pydispatch import dispatcher

    receivers = dispatcher.liveReceivers(dispatcher.getAllReceivers(crawler.signals.sender, signals.item_scraped))
    return [getattr(receiver, "__self__", None) for receiver in receivers]


def guard_of(crawler: Crawler) -> FeedGuard | None:
    return crawler.get_extension(FeedGuard)


class GuardedFeedExporter(FeedExporter):
    """Scrapy's feed exports (the add-on puts them in the place of
    ``scrapy.extensions.feedexport.FeedExporter``), for which a record that
    an exporter cannot write (a value its format cannot hold, a bug of a
    user's exporter) is a file that failed (:meth:`FeedGuard.write_failed`):
    one line, the crawl stops, nothing of it is acknowledged.  Scrapy's
    would log a traceback and go on without the record.

    A component that reads whether the files took a record
    (:data:`READS_FEED_OUTCOME`) may be told of it here, right after they
    wrote it (:meth:`tell`), instead of by ``item_scraped``: Scrapy 2.19 runs
    each receiver of a record as an asyncio task of its own."""

    def __init__(self, crawler: Crawler):
        super().__init__(crawler)
        self._told: list[Callable[[Any], None]] = []

    def tell(self, receiver: Callable[[Any], None]) -> None:
        """Call *receiver* with each record once the files have it (or not:
        :attr:`FeedGuard.item_failed` says), in the place of its own
        ``item_scraped`` receiver, which its owner disconnects."""
        self._told.append(receiver)

    def _exporter_supported(self, format_: str) -> bool:
        """Scrapy's check, without its error line: :class:`FeedGuard` says
        it, and stops the crawl (Scrapy's would go on without any feed)."""
        return format_ in self.exporters

    @functools.cached_property
    def guard(self) -> FeedGuard | None:
        # Looked up on the first record: the extensions are all built by then.
        return guard_of(self.crawler)

    def item_scraped(self, item: Any, spider: Spider) -> None:
        # FeedGuard.item_failed says whether this record is in every file:
        # reset here, set while the slots write it, read by the lease tracker,
        # whose item_scraped receiver is connected after this one (when the
        # leasing scheduler opens), so that it always reads this record's.
        guard = self.guard
        if guard is not None:
            guard.item_failed = False
        counts = [(slot, slot.itemcount) for slot in self.slots]
        try:
            super().item_scraped(item, spider)
        except Exception as exc:
            # The slot that failed: the first that accepts the record and
            # has not counted it yet (self.slots is replaced only at the end).
            failed = next(
                (slot for slot, count in counts if slot.itemcount == count and slot.filter.accepts(item)),
                counts[0][0] if counts else None,
            )
            if guard is None:
                raise
            guard.write_failed(failed.uri.removeprefix("file://") if failed is not None else "a feed", exc)
        for receiver in self._told:
            try:
                receiver(item)
            except Exception:  # as Scrapy says of a receiver that fails, and goes on
                logger.exception("Error caught on signal handler: %s", receiver)


class GuardedFile(io.RawIOBase):
    """A local feed file written straight through: a write is whole in the
    file or cut back out of it; after a failure, writes are dropped (the
    crawl is stopping) and each one is reported."""

    def __init__(self, path: str, mode: str, guard: FeedGuard | None):
        super().__init__()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if "w" in mode else os.O_APPEND)
        self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        self.name = path
        self.mode = mode
        self.guard = guard
        self.good = os.fstat(self._fd).st_size
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.error is not None:
            self._report(self.error)
            return size
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.failed(exc)
            return size
        self.good += size
        return size

    def failed(self, exc: OSError) -> None:
        """Writing (or syncing) failed: cut what was half written, report."""
        self.error = exc
        try:
            os.ftruncate(self._fd, self.good)
        except OSError:
            logger.debug("could not cut %s back to %d bytes", self.name, self.good)
        self._report(exc)

    def _report(self, exc: OSError) -> None:
        if self.guard is not None:
            self.guard.write_failed(self.name, exc)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class GuardedFileFeedStorage(FileFeedStorage):
    """Scrapy's local feed storage, with files that never lose a record
    silently (:class:`GuardedFile`)."""

    def __init__(self, uri: str, *, feed_options: dict[str, Any] | None = None, crawler: Crawler | None = None):
        super().__init__(uri, feed_options=feed_options)
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str, *, feed_options: dict[str, Any] | None = None) -> Self:
        return cls(uri, feed_options=feed_options, crawler=crawler)

    def open(self, spider: Spider) -> IO[bytes]:
        # Looked up now: the feed exports build their storages with the
        # extensions, when none can be looked up yet.
        guard = guard_of(self.crawler) if self.crawler is not None else None
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            file = GuardedFile(self.path, self.write_mode, guard)
        except OSError as exc:
            if guard is None:
                raise
            file = GuardedFile(os.devnull, "ab", None)  # takes nothing: every write is reported
            file.name, file.guard = self.path, guard
            file.failed(exc)
        return file  # type: ignore[return-value]


class GuardedSpiderState(SpiderState):
    """Scrapy's ``spider.state`` kept in ``JOBDIR`` (the add-on puts it in
    the place of Scrapy's extension), whose file, written when the crawl
    closes, is reported like any other that cannot be written (the disk is
    full) rather than as a traceback."""

    def __init__(self, jobdir: str | None = None, *, crawler: Crawler | None = None):
        super().__init__(jobdir)
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        state = super().from_crawler(crawler)
        state.crawler = crawler
        return state

    def spider_closed(self, spider: Spider) -> None:
        try:
            super().spider_closed(spider)
        except OSError as exc:
            guard = guard_of(self.crawler) if self.crawler is not None else None
            if guard is None:
                raise
            guard.write_failed(self.statefn, exc)
