"""The catalog store in a crawl (docs/catalog.md): :class:`CatalogStore`,
the extension that owns the database, with a reader and a writer, each a
connection in a thread of its own, so that the reactor never waits for the
disk or for PostgreSQL.  Records are written in batches, one transaction
each; the change records a batch found go to ``TMAPI_CHANGES_FILE`` through
the feed exports.  Which calls the store can answer is its refresh decision
(:mod:`.decision`, with the planner of :mod:`.freshness`); :mod:`.middlewares`
answers them and :mod:`.pipeline` hands it the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import sleep

from tmapi_crawler.calls.gate import gate_of
from tmapi_crawler.calls.room import Room, add_room
from tmapi_crawler.config import ConfigError, config_from_settings, is_distributed
from tmapi_crawler.durable.feeds import to_feeds
from tmapi_crawler.durable.leases import NotSafe
from tmapi_crawler.extensions import CRAWL_ID_STAT, RESUMED, changes_by_kind
from tmapi_crawler.loops import looping_call
from tmapi_crawler.reasons import FinishReason
from tmapi_crawler.records import ChangeItem, ProductItem, now_precise
from tmapi_crawler.store.checks import quick_check
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.decision import RefreshDecision
from tmapi_crawler.store.dialect import iso
from tmapi_crawler.store.ledger import CrawlRow, record_crawl
from tmapi_crawler.store.lookup import listing_reads, lookup, shop_rates
from tmapi_crawler.store.url import StoreError, parse_store_url
from tmapi_crawler.store.watch import read_watch
from tmapi_crawler.store.write import PRUNE_BATCH, prune_changes, write

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Self, TypeVar

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

    from tmapi_crawler.store.listings import PageNote
    from tmapi_crawler.store.lookup import Stored
    from tmapi_crawler.store.url import StoreURL
    from tmapi_crawler.store.write import WriteResult

    T = TypeVar("T")

logger = logging.getLogger(__name__)


#: Records in one write transaction at most.
BATCH_SIZE = 200
#: Records waiting for the writer past which API calls wait for it.
MAX_WAITING = 2 * BATCH_SIZE
#: Seconds between two looks at what waits for the writer.
FLUSH_INTERVAL = 0.2
#: Seconds a batch that is not full waits at most while records keep coming.
#: The writer writes full batches as they fill, and the rest when records
#: stop coming (a pause, the crawl's end) or after these seconds; not
#: whatever waits as soon as it is free, which at full speed made batches of
#: some 20 records, each statement's GIL taken back from the busy reactor (a
#: first crawl of 10k products spent 15% more CPU so: 57.6 s against 49.9 s).
#: What a SIGKILL leaves unwritten, and a resume fetches again, is at most a
#: batch or these seconds of records.
BATCH_WAIT = 1.0
#: The finish reason of a crawl stopped because the store failed.
STORE_FAILED = FinishReason.STORE_FAILED
#: Seconds a crawl's end spends at most on pruning old changes.
PRUNE_SECONDS = 30.0
#: Seconds before the first and the longest between two tries of a store
#: that does not answer (TMAPI_STORE_OUTAGE_TIMEOUT in all).
OUTAGE_RETRY_FIRST = 0.1
OUTAGE_RETRY_MAX = 2.0


def store_url(settings: BaseSettings) -> StoreURL | None:
    """``TMAPI_STORE`` parsed, or ``None`` without a store; raises
    :class:`ConfigError` for a URL that does not parse, or for SQLite in
    distributed mode."""
    config = config_from_settings(settings)
    if config.store is None:
        return None
    try:
        url = parse_store_url(config.store.get_secret_value())
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    if url.kind == "sqlite" and is_distributed(settings):
        raise ConfigError(
            f"TMAPI_STORE={url.display!r} is a SQLite file, which the workers of a distributed crawl cannot share: "
            "use PostgreSQL (postgresql://user:pass@host:5432/db)"
        )
    return url


#: Seconds a crawl's start may spend checking a SQLite store's pages: a store
#: that is larger is checked row by row as it is read.
QUICK_CHECK_SECONDS = 1.0


def check_store(settings: BaseSettings) -> None:
    """Open the store once before the crawl (created or migrated on first
    use), so that a wrong URL, password or permission is one line before
    any call, and so is a damaged SQLite store whose pages can be checked in
    :data:`QUICK_CHECK_SECONDS`; raises :class:`ConfigError`."""
    url = store_url(settings)
    if url is None:
        return
    try:
        db = CatalogDB(url)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    try:
        problems = quick_check(db, QUICK_CHECK_SECONDS)
    finally:
        db.close()
    if problems:
        raise ConfigError(str(db.damaged(problems[0])))
    watch = config_from_settings(settings).watch
    if watch:
        read_watch(Path(watch))


def write_now(waiting: int, at_last_look: int, looks: int, *, first: bool = False) -> bool:
    """Whether the records waiting for the writer, fewer than a batch, are
    written at this look (every :data:`FLUSH_INTERVAL`), where *looks* have
    seen records waiting since the last write: when no record came since
    the last look (a pause, the crawl's end) or when they have waited
    :data:`BATCH_WAIT`; and the crawl's *first* records at once, so that a
    store that cannot take them (a full disk, a lock held) stops the crawl
    before a batch more is fetched.  Pages alone (no record waiting) are
    written at once."""
    return first or waiting == at_last_look or looks * FLUSH_INTERVAL >= BATCH_WAIT


class CatalogStore:
    """The store during a crawl (see the module's docstring)."""

    def __init__(self, crawler: Crawler, url: StoreURL):
        self.crawler = crawler
        self.url = url
        self.config = config_from_settings(crawler.settings)
        self.stats = crawler.stats
        try:
            self.reader = CatalogDB(url)
            self.writer = CatalogDB(url, max_age=self.config.detail_max_age)
        except StoreError as exc:
            raise ConfigError(str(exc)) from None
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="tmapi-store-read")
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="tmapi-store-write")
        self._names = {self._read_thread: "read", self._write_thread: "write"}
        self._cpu = dict.fromkeys(self._names.values(), 0.0)
        self._records: list[tuple[ProductItem, asyncio.Future[ProductItem]]] = []
        #: API calls wait while MAX_WAITING records wait for the writer (tmapi_crawler.calls.room).
        self.room = Room(self._writer_behind, crawler.stats, "tmapi/store/api_waits")
        add_room(crawler, self.room)
        self._pages: list[PageNote] = []
        self._writing: asyncio.Task[None] | None = None
        #: Lookups waiting for the next query: the ids each caller asked for, and its answer.
        self._lookups: list[tuple[list[int], asyncio.Future[dict[int, Stored]]]] = []
        self._reading: asyncio.Task[None] | None = None
        #: The records made from the store's answers alone, on their way to
        #: the pipeline: item id -> their fetch times (nothing to write).
        self.served: dict[int, tuple[str, str | None]] = {}
        self.failed: StoreError | None = None
        #: Which calls the store answers, which stored products are refreshed.
        self.decision = RefreshDecision(self.config, crawler.stats)
        #: The crawl's id when nothing gave one (:data:`CRAWL_ID_STAT`): a crawl of its own.
        self.crawl_id = uuid.uuid4().hex
        #: Since when the store does not answer (an outage that may pass).
        self.down_since: float | None = None
        #: Records waiting at the last look (:meth:`_look`), and for how many looks.
        self._waiting = 0
        self._looks = 0
        #: Whether a batch of records was written (or tried) in this crawl.
        self._wrote = False
        self._loop = looping_call(self._look, "store flush", crawler.stats)
        crawler.signals.connect(self._opened, signal=signals.spider_opened)
        crawler.signals.connect(self._closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        url = store_url(crawler.settings)
        if url is None:
            raise NotConfigured("no TMAPI_STORE")
        return cls(crawler, url)

    # -- threads ---------------------------------------------------------------------

    async def _in(self, thread: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in *thread*; the CPU it took is counted under
        ``tmapi/store/cpu_seconds/<read|write>``."""

        def timed() -> T:
            started = time.thread_time()
            try:
                return call(*args)
            finally:
                name = self._names[thread]
                self._cpu[name] += time.thread_time() - started
                self.stats.set_value(f"tmapi/store/cpu_seconds/{name}", round(self._cpu[name], 3))

        return await asyncio.get_running_loop().run_in_executor(thread, timed)

    async def _call(self, db: CatalogDB, thread: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in *thread*; an outage that may pass (PostgreSQL
        restarting) is waited out: tried again with backoff, on a new
        connection, for up to ``TMAPI_STORE_OUTAGE_TIMEOUT`` seconds.
        Raises :class:`StoreError` when the store cannot be used."""
        delay = OUTAGE_RETRY_FIRST
        while True:
            if self.failed is not None:
                raise self.failed
            try:
                result = await self._in(thread, call, *args)
            except Exception as exc:
                error = exc if isinstance(exc, StoreError) else db.error(exc)
                if not db.transient(exc):
                    raise error from None
                self._outage(error)
                if time.monotonic() - (self.down_since or 0.0) >= self.config.store_outage_timeout:
                    raise StoreError(
                        f"{error} (for {self.config.store_outage_timeout:.0f} s, TMAPI_STORE_OUTAGE_TIMEOUT)"
                    ) from None
                await sleep(delay)
                delay = min(delay * 2, OUTAGE_RETRY_MAX)
                with contextlib.suppress(Exception):  # still down: the next try says so
                    await self._in(thread, db.reconnect)
                continue
            if self.down_since is not None:
                down_for = time.monotonic() - self.down_since
                self.down_since = None
                logger.info("The catalog store %s answers again after %.1f s: going on", self.url.display, down_for)
            return result

    def _outage(self, error: StoreError) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.stats.inc_value("tmapi/store/outages")
            logger.warning(
                "%s; trying again for up to %.0f s (TMAPI_STORE_OUTAGE_TIMEOUT)",
                error,
                self.config.store_outage_timeout,
            )

    async def lookup(self, item_id: int) -> Stored | None:
        """What the store has of *item_id* (:meth:`lookup_all`)."""
        return (await self.lookup_all((item_id,))).get(item_id)

    async def lookup_all(self, item_ids: Iterable[int]) -> dict[int, Stored]:
        """What the store has of each of *item_ids*: one query, with the
        other lookups that arrive while one is under way."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        future: asyncio.Future[dict[int, Stored]] = asyncio.get_running_loop().create_future()
        self._lookups.append((ids, future))
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        return await future

    async def _read(self) -> None:
        try:
            while self._lookups:
                batch, self._lookups = self._lookups, []
                ids = list(dict.fromkeys(item_id for wanted, _ in batch for item_id in wanted))
                try:
                    found = await self._call(self.reader, self._read_thread, lookup, self.reader, ids)
                except StoreError as error:
                    self._fail(error)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for wanted, future in batch:
                    if not future.done():  # its caller may have gone (cancelled)
                        future.set_result({item_id: found[item_id] for item_id in wanted if item_id in found})
        finally:
            self._reading = None

    # -- writing ---------------------------------------------------------------------

    async def save(self, record: ProductItem) -> ProductItem:
        """*record* once it is in the store.  When the store failed, raises
        :class:`NotStored`: the record goes nowhere and its request is not
        acknowledged, so that a resumed crawl stores it."""
        if self.failed is not None:
            raise NotStored(record["item_id"], self.failed)
        future: asyncio.Future[ProductItem] = asyncio.get_running_loop().create_future()
        self._records.append((record, future))
        self.stats.max_value("tmapi/store/max_waiting", len(self._records))
        if len(self._records) >= BATCH_SIZE:
            self._flush()
        return await future

    def note_page(self, note: PageNote) -> None:
        """A listing page read or failed, for ``delisted`` (written with the
        next batch)."""
        if self.failed is None:
            self._pages.append(note)

    def _look(self) -> None:
        """Every :data:`FLUSH_INTERVAL`: write what waits if
        :func:`write_now` says so, else let the batch fill."""
        waiting = len(self._records)
        self._looks = self._looks + 1 if waiting else 0
        if write_now(waiting, self._waiting, self._looks, first=not self._wrote):
            self._flush()
        self._waiting = waiting

    def _flush(self) -> None:
        if self._writing is None and (self._records or self._pages):
            self._writing = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        """What is pending (a batch at most), then each full batch that
        waits; a batch not yet full waits for :meth:`_look` or
        :meth:`drain`."""
        try:
            pending = True
            while pending:
                batch, self._records = self._records[:BATCH_SIZE], self._records[BATCH_SIZE:]
                self._looks = 0
                self._wrote = self._wrote or bool(batch)
                pages, self._pages = self._pages, []
                try:
                    result = await self._call(
                        self.writer, self._write_thread, write, self.writer, [r for r, _ in batch], pages
                    )
                except StoreError as exc:
                    self._fail(exc)
                    result = None
                if result is not None:
                    self._written(result, len(batch))
                for record, future in batch:
                    if not future.done():
                        self._settle(future, record)
                self.room.check()
                if self.failed is not None:
                    for record, future in self._records:
                        if not future.done():
                            self._settle(future, record)
                    self._records, self._pages = [], []
                pending = len(self._records) >= BATCH_SIZE
        finally:
            self._writing = None
            self.room.check()

    def _writer_behind(self) -> bool:
        """Whether :data:`MAX_WAITING` records wait for the writer (and the
        store has not failed): API calls wait then, so that a writer slower
        than the crawl (latency 0, a busy reactor) slows the crawl rather
        than fill memory with records."""
        return len(self._records) >= MAX_WAITING and self.failed is None

    def _written(self, result: WriteResult, records: int) -> None:
        caught = sum(1 for item_id in result.mattered if item_id in self.decision.refreshing)
        if caught:
            self.stats.inc_value("tmapi/refresh/caught", caught)
        self.stats.inc_value("tmapi/store/batches")
        self.stats.inc_value("tmapi/store/written", result.written)
        self.stats.inc_value("tmapi/store/unchanged", records - result.written)
        for change in result.changes:
            to_feeds(self.crawler, ChangeItem(change))  # to TMAPI_CHANGES_FILE

    def _settle(self, future: asyncio.Future[ProductItem], record: ProductItem) -> None:
        if self.failed is None:
            future.set_result(record)
        else:
            future.set_exception(NotStored(record["item_id"], self.failed))

    def _fail(self, error: StoreError) -> None:
        if self.failed is not None:
            return
        self.failed = error
        self.stats.set_value("tmapi/store/error", str(error))
        if error.resumable:
            logger.error(
                "%s; the crawl stops (what was not stored is not acknowledged: once that is fixed, the same command "
                "stores it)",
                error,
            )
        else:
            logger.error("%s; the crawl stops (no record was made from what could not be read)", error)
        gate_of(self.crawler).stop(STORE_FAILED)

    async def drain(self) -> None:
        """Write all that is pending."""
        self._flush()
        while self._writing is not None:
            await self._writing
            self._flush()

    # -- the crawl -------------------------------------------------------------------

    def _opened(self) -> None:
        logger.info("Catalog store: %s", self.url.display)
        # A JOBDIR resume: what the earlier runs spent is the crawl's too.
        self.decision.planner.spent_before = int(self.stats.get_value(f"{RESUMED}/refresh/spent", 0) or 0)
        budget = self.config.refresh_budget
        if isinstance(budget, int) and is_distributed(self.crawler.settings):
            from tmapi_crawler.cluster.budget import SharedBudget  # Redis's client: distributed mode only

            self.decision.planner.grant = SharedBudget(self.crawler, budget).grant
        try:  # small tables, read once: each shop's rate, each listing's last read
            self.decision.planner.shop_rates = shop_rates(self.reader)
            self.decision.planner.listing_reads = listing_reads(self.reader)
        except Exception as exc:
            self._fail(self.reader.error(exc))
        self._loop.start(FLUSH_INTERVAL, now=False)

    async def _closed(self, reason: str) -> None:
        if self._loop.running:
            self._loop.stop()
        self.decision.publish()
        try:
            if self.failed is None:
                # In the writer's thread, as every write: the reactor does not wait.
                await self._in(self._write_thread, self._last_writes, self._crawl_row(reason))
        finally:
            self._read_thread.shutdown()
            self._write_thread.shutdown()
            self.reader.close()
            self.writer.close()

    def _last_writes(self, crawl: CrawlRow) -> None:
        """The crawl's row in ``crawls``; old changes pruned."""
        try:
            record_crawl(self.writer, crawl)
        except Exception as exc:
            logger.warning("The crawl is not in the store's crawls table: %s", self.writer.error(exc))
        if self.config.changes_retention:
            self._prune(self.config.changes_retention)

    def _prune(self, retention: float) -> None:
        """``TMAPI_CHANGES_RETENTION``: delete the older change rows, a batch
        a transaction, for at most :data:`PRUNE_SECONDS` (the next crawl
        goes on where this one stopped), when the crawl is over (in the
        writer's thread)."""
        before = str(iso(datetime.now(UTC) - timedelta(seconds=retention)))
        started, pruned = time.monotonic(), 0
        try:
            while time.monotonic() - started < PRUNE_SECONDS:
                deleted = prune_changes(self.writer, before)
                pruned += deleted
                if deleted < PRUNE_BATCH:
                    break
        except Exception as exc:
            logger.warning("Old changes were not all pruned: %s", self.writer.error(exc))
        if pruned:
            self.stats.set_value("tmapi/store/changes_pruned", pruned)
            logger.info("Pruned %d change rows detected before %s (TMAPI_CHANGES_RETENTION)", pruned, before)

    def _crawl_row(self, reason: str) -> CrawlRow:
        stats = self.crawler.stats.get_stats() if self.crawler.stats else {}
        spider: Any = self.crawler.spider
        args = getattr(spider, "args", None)
        seeds = args.seeds() if args is not None else []
        started = stats.get("start_time")
        return CrawlRow(
            id=str(stats.get(CRAWL_ID_STAT) or self.crawl_id),
            spider=spider.name if spider is not None else "",
            seed=seeds or None,
            started_at=str(iso(started)) if started else now_precise(),
            finished_at=now_precise(),
            reason=reason,
            products=int(stats.get("tmapi/products", 0)),
            calls=int(stats.get("tmapi/billed", 0)),
            served=int(stats.get("tmapi/store/detail_from_store", 0)),
            changes=changes_by_kind(stats),
            descriptions_reused=int(stats.get("tmapi/store/desc_from_store", 0)),
            refresh_budget=int(stats.get("tmapi/refresh/budget", 0)),
            refresh_spent=int(stats.get("tmapi/refresh/spent", 0)),
            refresh_caught=int(stats.get("tmapi/refresh/caught", 0)),
            estimated_current=stats.get("tmapi/refresh/estimated_current"),
        )


def store_of(crawler: Crawler) -> CatalogStore | None:
    return crawler.get_extension(CatalogStore)


def required_store(crawler: Crawler) -> CatalogStore:
    """The store, for a component that has nothing to do without one."""
    store = store_of(crawler)
    if store is None:
        raise NotConfigured("no TMAPI_STORE")
    return store


class NotStored(NotSafe):
    """A product record the store could not take: dropped (logged at DEBUG:
    the store's one line said why), and its request is not acknowledged."""

    def __init__(self, item_id: Any, error: StoreError):
        super().__init__(f"item {item_id} not stored: {error}", log_level="DEBUG")
