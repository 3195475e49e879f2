"""The shared crawl: a scrapy-redis scheduler whose queue is JSON and leased.

scrapy-redis 0.9.1 pops a request and forgets it, so a worker killed with
requests in hand loses them.  Here a request that a worker takes stays in
Redis under a *lease* (a deadline the worker renews while it works), and is
acknowledged only when all it led to is safe:

* the records its callback (or errback) yielded went through the pipelines
  and the feed exports, and the feed files were flushed and fsynced (acks are
  grouped: one fsync per :data:`COMMIT_INTERVAL`);
* the requests it yielded are in the Redis queue;
* or it was replaced by a request of its own (a retry, a call sent again
  after 503 or 439, a call handed back when the crawl stops), which goes into
  the queue in the same atomic step that ends the lease.

A lease that is not renewed within ``TMAPI_LEASE_TIMEOUT`` (the worker died)
puts the request back in the queue for the others; a worker that stops
cleanly puts back what it had not finished at once.  A killed worker thus
loses nothing, and the duplicates it can cause are at most the requests it
had in hand.

Nothing is ever wiped by a worker closing (scrapy-redis's
``SCHEDULER_PERSIST=False`` would); ``scrapy cluster clear`` does it on
purpose.  Time is Redis's own (``TIME`` inside the scripts), so the workers'
clocks do not matter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.extensions.feedexport import FeedExporter
from scrapy.utils.asyncio import create_looping_call, sleep
from scrapy.utils.misc import load_object
from scrapy_redis.dupefilter import RFPDupeFilter
from scrapy_redis.queue import Base
from scrapy_redis.scheduler import Scheduler

from tmapi_crawler.cluster import DATA_KEY, LEASES_KEY, QUEUE_KEY, SEEDS_KEY, SEQ_KEY, codec
from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.config import ConfigError, config_from_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator
    from typing import Self

    from redis import Redis
    from scrapy import Spider
    from scrapy.crawler import Crawler

    from tmapi_crawler.spiders.base import TmapiSpider

logger = logging.getLogger(__name__)

#: meta key: the id of the lease a request was taken under.
LEASE_META = "tmapi_lease"
#: meta key: the lease of the request whose callback yielded this request.
PARENT_META = "tmapi_parent"
#: Seconds between two group commits (fsync of the feeds, then acks).
COMMIT_INTERVAL = 0.5
#: Seconds between two looks for seeds and for work of other workers.
SEED_POLL = 0.2

#: Lua: ``now``, Redis's own clock in milliseconds (the workers' clocks do not matter).
LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: queue, data, seq, leases, dupefilter; ARGV: payload, priority, lease
# it replaces ('' for none), fingerprint ('' not to filter).  Marking the
# request seen and queueing it is one step: a worker killed between the two
# would leave a request seen but never queued, lost to the worker that redoes
# its parent.  -> the new id, or false for a request seen before.
PUSH = """
if ARGV[4] ~= '' and redis.call('SADD', KEYS[5], ARGV[4]) == 0 then return false end
local id = string.format('%016d', redis.call('INCR', KEYS[3]))
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('ZADD', KEYS[1], -tonumber(ARGV[2]), id)
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return id
"""

# KEYS: queue, data, leases; ARGV: lease ms.  The highest priority, then the oldest.
POP = (
    LUA_NOW
    + """
local ids = redis.call('ZRANGE', KEYS[1], 0, 0)
if #ids == 0 then return false end
local id = ids[1]
redis.call('ZREM', KEYS[1], id)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), id)
return {id, redis.call('HGET', KEYS[2], id)}
"""
)

# KEYS: leases, queue, data; ARGV: ids to put back, or none: every expired lease.
REQUEUE = (
    LUA_NOW
    + """
local ids = ARGV
if #ids == 0 then ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000) end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local payload = redis.call('HGET', KEYS[3], id)
    if payload then
      local ok, req = pcall(cjson.decode, payload)
      local prio = 0
      if ok and type(req) == 'table' and tonumber(req['priority']) then prio = tonumber(req['priority']) end
      redis.call('ZADD', KEYS[2], -prio, id)
      n = n + 1
    end
  end
end
return n
"""
)

# KEYS: leases; ARGV: lease ms, ids.  Only leases still held are renewed.
RENEW = (
    LUA_NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""
)

# KEYS: leases, queue, data; ARGV: ids done.
ACK = """
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #ARGV
"""


class LeasedQueue(Base):
    """scrapy-redis's queue interface over three keys: the pending ids (a
    sorted set: priority, then age), the requests (a hash, JSON), and the
    leases (a sorted set: deadline).  ``serializer`` is
    :mod:`tmapi_crawler.cluster.codec`: JSON, never pickle."""

    def __init__(self, server: Redis, spider: Spider, key: str, serializer: Any = None, lease_ms: int = 60_000):
        super().__init__(server, spider, key, serializer or codec)
        names = {"spider": spider.name}
        self.data_key = DATA_KEY % names
        self.leases_key = LEASES_KEY % names
        self.seq_key = SEQ_KEY % names
        self.lease_ms = lease_ms
        self._push = server.register_script(PUSH)
        self._pop = server.register_script(POP)
        self._requeue = server.register_script(REQUEUE)
        self._renew = server.register_script(RENEW)
        self._ack = server.register_script(ACK)

    def __len__(self) -> int:
        return int(self.server.zcard(self.key))

    def leased(self) -> int:
        return int(self.server.zcard(self.leases_key))

    def push(
        self, request: Request, replaces: str | None = None, *, dupefilter: str = "", fingerprint: bytes | str = b""
    ) -> str | None:
        """Queue *request* (ending the lease it *replaces*, if any); with a
        *fingerprint*, only if the *dupefilter* set has not seen it (``None``
        then)."""
        payload = self._encode_request(request)
        keys = [self.key, self.data_key, self.seq_key, self.leases_key, dupefilter or self.key]
        got = self._push(keys=keys, args=[payload, request.priority, replaces or "", fingerprint])
        return str(got, "ascii") if got else None

    def pop(self, timeout: int = 0) -> tuple[str, Request | None] | None:
        """The next request under a new lease, as ``(lease id, request)``;
        the request is ``None`` when its entry could not be read."""
        got = self._pop(keys=[self.key, self.data_key, self.leases_key], args=[self.lease_ms])
        if not got:
            return None
        lease = str(got[0], "ascii")
        if got[1] is None:
            logger.error("Skipped a request in Redis that is not one of ours: %r has no request", lease)
            return lease, None
        try:
            return lease, self._decode_request(got[1])
        except (codec.CodecError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error("Skipped a request in Redis that is not one of ours (%s): %.200r", exc, got[1])
            return lease, None

    def renew(self, leases: Iterable[str]) -> None:
        ids = list(leases)
        if ids:
            self._renew(keys=[self.leases_key], args=[self.lease_ms, *ids])

    def requeue(self, leases: Iterable[str] = ()) -> int:
        """Put *leases* back in the queue, or, with none, every lease that
        expired (its worker died)."""
        return int(self._requeue(keys=[self.leases_key, self.key, self.data_key], args=list(leases)))

    def ack(self, leases: Iterable[str]) -> None:
        ids = list(leases)
        if ids:
            self._ack(keys=[self.leases_key, self.key, self.data_key], args=ids)


class RedisDupeFilter(RFPDupeFilter):
    """scrapy-redis's dupefilter with Scrapy's own request fingerprints (raw
    20-byte digests, half the memory of hex), never cleared by a worker
    closing."""

    def __init__(self, server: Redis, key: str, debug: bool = False, *, crawler: Crawler | None = None):
        super().__init__(server, key, debug)
        self.fingerprinter = crawler.request_fingerprinter if crawler is not None else None

    @classmethod
    def from_spider(cls, spider: Spider) -> Self:
        from tmapi_crawler.cluster import DUPEFILTER_KEY

        settings = spider.crawler.settings
        key = settings.get("SCHEDULER_DUPEFILTER_KEY", DUPEFILTER_KEY) % {"spider": spider.name}
        return cls(redis_from_settings(settings), key, settings.getbool("DUPEFILTER_DEBUG"), crawler=spider.crawler)

    def request_fingerprint(self, request: Request) -> bytes | str:
        if self.fingerprinter is None:
            return str(super().request_fingerprint(request))
        return bytes(self.fingerprinter.fingerprint(request))

    def close(self, reason: str = "") -> None:
        """Keep the fingerprints: other workers share them."""


@dataclass(slots=True)
class _Lease:
    """A request in hand: how many of its outputs are not yet safe, and
    whether its callback has finished yielding them."""

    pending: int = 0
    done_yielding: bool = False


class LeasedScheduler(Scheduler):
    """scrapy-redis's scheduler with leases, JSON, seeds, and nothing wiped."""

    def __init__(self, server: Redis, *, crawler: Crawler, **kwargs: Any):
        super().__init__(server, persist=True, **kwargs)
        self.crawler = crawler
        self.stats = crawler.stats
        config = config_from_settings(crawler.settings)
        self.lease_ms = int(config.lease_timeout * 1000)
        self.idle_timeout = config.idle_timeout
        self.held: dict[str, _Lease] = {}
        self.safe: list[str] = []  # leases whose outputs await the next commit
        self.loop: Any = None
        self.last_renew = 0.0
        self.queue: LeasedQueue
        crawler.signals.connect(self._item_settled, signal=signals.item_scraped)
        crawler.signals.connect(self._item_settled, signal=signals.item_dropped)
        crawler.signals.connect(self._item_settled, signal=signals.item_error)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        from tmapi_crawler.cluster import DUPEFILTER_KEY

        settings = crawler.settings
        server = redis_from_settings(settings)
        server.ping()
        return cls(
            server,
            crawler=crawler,
            queue_key=settings.get("SCHEDULER_QUEUE_KEY", QUEUE_KEY),
            queue_cls=settings.get("SCHEDULER_QUEUE_CLASS") or f"{LeasedQueue.__module__}.LeasedQueue",
            dupefilter_key=settings.get("SCHEDULER_DUPEFILTER_KEY", DUPEFILTER_KEY),
            dupefilter_cls=settings.get("DUPEFILTER_CLASS"),
            serializer=codec,
        )

    # -- Scrapy's scheduler interface -----------------------------------------

    def open(self, spider: Spider) -> None:
        self.spider = spider
        queue_cls = load_object(self.queue_cls)
        self.queue = queue_cls(
            server=self.server,
            spider=spider,
            key=self.queue_key % {"spider": spider.name},
            serializer=self.serializer,
            lease_ms=self.lease_ms,
        )
        self.df = load_object(self.dupefilter_cls).from_spider(spider)
        self.seeds_key = SEEDS_KEY % {"spider": spider.name}
        back = self.queue.requeue()
        if back:
            logger.info("%d requests of workers that died are back in the queue", back)
        pending = len(self.queue)
        if pending:
            logger.info(
                "Joining a crawl in Redis: %d requests pending, %d in other workers' hands",
                pending,
                self.queue.leased(),
            )
        spider.cluster = self  # type: ignore[attr-defined]
        self.loop = create_looping_call(self._tick)
        self.loop.start(min(COMMIT_INTERVAL, self.lease_ms / 4000), now=False)

    def close(self, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        # The pipelines are closed and the feeds still open: make what was
        # written safe, then give back what was not finished.
        self._commit()
        unfinished = list(self.held)
        if unfinished:
            back = self.queue.requeue(unfinished)
            logger.info("%d requests not finished here are back in the queue for the other workers", back)
        self.held.clear()

    def __len__(self) -> int:
        return len(self.queue)

    def has_pending_requests(self) -> bool:
        return len(self.queue) > 0

    def enqueue_request(self, request: Request) -> bool:
        parent = request.meta.pop(PARENT_META, None)
        replaces = request.meta.pop(LEASE_META, None)
        try:
            fingerprint: bytes | str = b""
            if replaces is None and not request.dont_filter:
                fingerprint = self.df.request_fingerprint(request)
            if self.queue.push(request, replaces, dupefilter=self.df.key, fingerprint=fingerprint) is None:
                self.df.log(request, self.spider)
                return False
            if replaces is not None:
                self.held.pop(replaces, None)
            self.stats.inc_value("scheduler/enqueued/redis")
            return True
        finally:
            if parent is not None:
                self._settle(parent)

    def next_request(self) -> Request | None:
        while True:
            got = self.queue.pop()
            if got is None:
                return None
            lease, request = got
            if request is None:
                self.queue.ack([lease])  # unreadable: logged, dropped from the queue
                self.stats.inc_value("tmapi/cluster/skipped")
                continue
            request.meta[LEASE_META] = lease
            self.held[lease] = _Lease()
            self.stats.inc_value("scheduler/dequeued/redis")
            return request

    # -- what a leased request led to ----------------------------------------

    def track(self, request: Request, output: Iterable[Any]) -> Iterator[Any]:
        """Pass a callback's *output* through, counting what must be safe
        before the lease of *request* is acknowledged."""
        lease = request.meta.get(LEASE_META)
        state = self.held.get(lease) if lease else None
        if lease is None or state is None:
            yield from output
            return
        try:
            for out in output:
                if isinstance(out, Request):
                    out.meta[PARENT_META] = lease
                if out is not None:
                    state.pending += 1
                yield out
        finally:
            state.done_yielding = True
            self._check(lease, state)

    def _item_settled(self, item: Any, response: Any, **kwargs: Any) -> None:
        request = getattr(response, "request", None)
        lease = request.meta.get(LEASE_META) if request is not None else None
        if lease:
            self._settle(lease)

    def _settle(self, lease: str) -> None:
        state = self.held.get(lease)
        if state is not None:
            state.pending -= 1
            self._check(lease, state)

    def _check(self, lease: str, state: _Lease) -> None:
        if state.done_yielding and state.pending <= 0:
            del self.held[lease]
            self.safe.append(lease)

    # -- housekeeping ---------------------------------------------------------

    def _tick(self) -> None:
        self._commit()
        now = time.monotonic()
        if now - self.last_renew >= self.lease_ms / 4000:
            self.last_renew = now
            self.queue.renew(self.held)
            back = self.queue.requeue()
            if back:
                logger.warning("%d requests of a worker that stopped renewing its leases are back in the queue", back)
                self.stats.inc_value("tmapi/cluster/requeued", back)

    def _commit(self) -> None:
        """Make the feeds durable, then acknowledge the leases whose records
        they hold."""
        if not self.safe:
            return
        safe, self.safe = self.safe, []
        sync_feeds(self.crawler)
        self.queue.ack(safe)
        self.stats.inc_value("tmapi/cluster/acked", len(safe))

    # -- cluster-wide state ---------------------------------------------------

    def pop_seed(self) -> Any:
        """The next seed pushed as JSON, parsed; a string for an entry that
        is not JSON; ``None`` when there is none."""
        raw = self.server.lpop(self.seeds_key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    async def follow_seeds(self, spider: TmapiSpider) -> AsyncIterator[Any]:
        """What ``start()`` yields after the command line's seeds: the seeds
        pushed to Redis (a bad one becomes a failure record), until the
        cluster has had no work for ``TMAPI_IDLE_TIMEOUT`` seconds (never, with
        0: the worker is a service)."""
        idle_since: float | None = None
        while True:
            seed = self.pop_seed()
            if seed is not None:
                idle_since = None
                try:
                    args = spider.seed_args(seed)
                except ConfigError as exc:
                    self.stats.inc_value("tmapi/cluster/bad_seeds")
                    logger.error("Skipped a bad seed from %s: %.200r: %s", self.seeds_key, seed, exc)
                    params = seed if isinstance(seed, dict) else {"seed": str(seed)[:200]}
                    yield spider.failure(None, None, f"bad seed: {exc}", endpoint="seed", params=params)
                    continue
                logger.info("Seed from %s: %.200r", self.seeds_key, seed)
                self.stats.inc_value("tmapi/cluster/seeds")
                for out in spider.seed_requests(args):
                    yield out
                continue
            if self.has_pending_requests():
                idle_since = None
                wake_engine(self.crawler)  # other workers' requests: take some
            elif self.idle_timeout and self.cluster_idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= self.idle_timeout:
                    logger.info(
                        "No work anywhere in the cluster for %.0f s (TMAPI_IDLE_TIMEOUT): stopping", self.idle_timeout
                    )
                    return
            else:
                idle_since = None
            await sleep(SEED_POLL)

    def cluster_idle(self) -> bool:
        """No request pending or in anybody's hands, and no seed waiting."""
        pipe = self.server.pipeline(transaction=False)
        pipe.zcard(self.queue.key)
        pipe.zcard(self.queue.leases_key)
        pipe.llen(self.seeds_key)
        return not any(pipe.execute()) and not self.held and not self.safe


def sync_feeds(crawler: Crawler) -> None:
    """Flush and fsync every feed file this crawl is writing (a feed on
    remote storage is uploaded only when the crawl closes: see the README)."""
    exporter = crawler.get_extension(FeedExporter)
    for slot in getattr(exporter, "slots", ()):
        file = getattr(slot, "file", None)
        if file is None or getattr(file, "closed", True):
            continue
        file.flush()
        with contextlib.suppress(OSError, AttributeError, ValueError):  # a pipe: flushed is all it can be
            os.fsync(file.fileno())


def wake_engine(crawler: Crawler) -> None:
    """Have the engine ask the scheduler for requests now rather than at its
    next 5 s heartbeat: work that other workers put in Redis comes with no
    signal to this process.  Scrapy has no public call for it."""
    slot = getattr(crawler.engine, "_slot", None)
    if slot is not None and slot.closing is None:
        slot.nextcall.schedule()
