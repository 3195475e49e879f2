"""The shared crawl's scheduler: Scrapy's scheduler interface over Redis.

It implements :class:`scrapy.core.scheduler.BaseScheduler` itself, and takes
from scrapy-redis 0.9.1 what serves as it is: the connection
(:mod:`.connection`), the dupefilter's fingerprints and log
(:mod:`.dupefilter`) and the queue's base (:mod:`.queue`).  Its own
scheduler is not reused: every method of it would be replaced (and its
``request_seen`` would never be called, marking a request seen and queueing
it being one step here).  What this scheduler does that scrapy-redis's does
not:

* requests are taken under a lease (:mod:`.queue`) and acknowledged only
  when all they led to is safe (:mod:`tmapi_crawler.durable.leases`); a lease that
  is not renewed within ``TMAPI_LEASE_TIMEOUT`` (its worker died) puts the
  request back for the others, and a worker that stops cleanly puts back
  what it had not finished at once.  A killed worker thus loses nothing,
  and the duplicates it can cause are at most the requests it had in hand;
* marking a request seen and queueing it is one atomic step (a script);
* nothing is ever wiped by a worker closing (``SCHEDULER_PERSIST=False``
  would in scrapy-redis); ``scrapy cluster clear`` does it on purpose;
* it is built ``from_crawler`` and needs no ``spider`` argument anywhere;
* while Redis does not answer (:mod:`.health`) it hands out nothing, keeps
  the requests it is given (their parents stay unacknowledged until they
  are queued) and the acknowledgements it could not send, and sends both
  when Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.exceptions import RedisError
from scrapy import signals
from scrapy.core.scheduler import BaseScheduler
from scrapy.utils.misc import load_object

from tmapi_crawler.calls.gate import gate_of
from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.defaults import COMMIT_INTERVAL, DUPEFILTER_KEY, QUEUE_KEY
from tmapi_crawler.cluster.dupefilter import RedisDupeFilter
from tmapi_crawler.cluster.health import health_of
from tmapi_crawler.cluster.queue import LeasedQueue
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.durable import codec
from tmapi_crawler.durable.leases import tracker_of
from tmapi_crawler.loops import looping_call

if TYPE_CHECKING:
    from typing import Self

    from redis import Redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Requests a worker whose budget is reached looks through for one that
#: finishes a product it started, putting the others back.
BUDGET_SCAN = 64


class _Unsent(NamedTuple):
    """A request given to the scheduler while Redis did not answer."""

    request: Request
    replaces: str | None
    fingerprint: bytes | str
    parent: str | None


class LeasedScheduler(BaseScheduler):
    """The Redis queue under leases, in JSON, nothing wiped (see the module's docstring)."""

    def __init__(
        self,
        server: Redis,
        *,
        crawler: Crawler,
        queue_key: str = QUEUE_KEY,
        queue_cls: str = f"{LeasedQueue.__module__}.LeasedQueue",
        dupefilter_key: str = DUPEFILTER_KEY,
        dupefilter_cls: str = f"{RedisDupeFilter.__module__}.RedisDupeFilter",
    ):
        self.server = server
        self.queue_key = queue_key
        self.queue_cls = queue_cls
        self.dupefilter_key = dupefilter_key
        self.dupefilter_cls = dupefilter_cls
        self.spider: Spider | None = None
        self.df: RedisDupeFilter
        self.crawler = crawler
        self.stats = crawler.stats
        config = config_from_settings(crawler.settings)
        self.lease_ms = int(config.lease_timeout * 1000)
        self.leases = tracker_of(crawler)
        self.leases.enable(commit=self._tick_commit)
        self.health = health_of(crawler)
        self.health.on_back(self._back)
        self.gate = gate_of(crawler)
        self.unsent: deque[_Unsent] = deque()
        self.loop: Any = None
        self.last_renew = 0.0
        self.queue: LeasedQueue

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        server = redis_from_settings(settings)
        server.ping()
        return cls(
            server,
            crawler=crawler,
            queue_key=settings.get("SCHEDULER_QUEUE_KEY", QUEUE_KEY),
            queue_cls=settings.get("SCHEDULER_QUEUE_CLASS") or f"{LeasedQueue.__module__}.LeasedQueue",
            dupefilter_key=settings.get("SCHEDULER_DUPEFILTER_KEY", DUPEFILTER_KEY),
            dupefilter_cls=settings.get("DUPEFILTER_CLASS") or f"{RedisDupeFilter.__module__}.RedisDupeFilter",
        )

    # -- Scrapy's scheduler interface -----------------------------------------

    def open(self, spider: Spider) -> None:
        self.spider = spider
        queue_cls = load_object(self.queue_cls)
        self.queue = queue_cls(
            server=self.server,
            spider=spider,
            key=self.queue_key % {"spider": spider.name},
            serializer=codec,
            lease_ms=self.lease_ms,
        )
        self.df = load_object(self.dupefilter_cls).from_spider(spider)
        self.health.join(spider.name)
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
        self.loop = looping_call(self._tick, "Redis scheduler", self.stats)
        self.loop.start(min(COMMIT_INTERVAL, self.lease_ms / 4000), now=False)

    def close(self, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.health.lost:
            return  # writing to a Redis without the crawl would only mislead the next run
        # The pipelines are closed and the feeds still open: make what was
        # written safe, then give back what was not finished.
        try:
            self._send_unsent()
            self._commit()
            unfinished = self.leases.unfinished()
            if unfinished:
                back = self.queue.requeue(unfinished)
                logger.info("%d requests not finished here are back in the queue for the other workers", back)
        except RedisError:
            logger.warning(
                "Redis does not answer: what this worker held returns to the queue when its leases expire "
                "(TMAPI_LEASE_TIMEOUT); nothing is lost"
            )
        self.health.leave_run()

    def __len__(self) -> int:
        try:
            return len(self.queue) + len(self.unsent) if self.health.up else len(self.unsent)
        except RedisError as exc:
            self.health.failed(exc)
            return len(self.unsent)

    def has_pending_requests(self) -> bool:
        if not self.health.up or self.unsent:
            return True  # not known now: the crawl is not over
        if self.gate.budget.draining:
            return False  # this worker's budget is reached: what is queued is the others' (or the resume's)
        try:
            return len(self.queue) > 0
        except RedisError as exc:
            self.health.failed(exc)
            return True

    def enqueue_request(self, request: Request) -> bool:
        parent, replaces = self.leases.detach(request)
        fingerprint: bytes | str = b""
        if replaces is None and not request.dont_filter:
            fingerprint = self.df.request_fingerprint(request)
        unsent = _Unsent(request, replaces, fingerprint, parent)
        if self.unsent or not self.health.up:
            self.unsent.append(unsent)  # sent when Redis is back, in order
            return True
        try:
            return self._push(unsent)
        except RedisError as exc:
            self.health.failed(exc)
            self.unsent.append(unsent)
            return True

    def _push(self, unsent: _Unsent) -> bool:
        """Queue a request; its parent's output is safe once it is queued
        (or found seen before).  Raises RedisError, with nothing changed."""
        request, replaces, fingerprint, parent = unsent
        pushed = self.queue.push(request, replaces, dupefilter=self.df.key, fingerprint=fingerprint)
        if parent is not None:
            self.leases.settle(parent)
        if pushed is None:
            self.df.log(request, self.spider)
            return False
        if replaces is not None:
            self.leases.forget(replaces)
        self.stats.inc_value("scheduler/enqueued/redis")
        return True

    def _send_unsent(self) -> None:
        """Queue the requests kept while Redis did not answer (raises
        RedisError, keeping what was not sent)."""
        while self.unsent:
            unsent = self.unsent[0]
            if not self._push(unsent):
                # Seen before: dropped as Scrapy drops what enqueue_request refuses.
                self.crawler.signals.send_catch_log(
                    signal=signals.request_dropped, request=unsent.request, spider=self.spider
                )
            self.unsent.popleft()

    def next_request(self) -> Request | None:
        if not self.health.up:
            return None
        try:
            self._send_unsent()
            return self._next()
        except RedisError as exc:
            self.health.failed(exc)
            return None

    def _next(self) -> Request | None:
        passed: list[str] = []
        try:
            while len(passed) < BUDGET_SCAN:
                got = self.queue.pop()
                if got is None:
                    return None
                lease, request = got
                if request is None:
                    self.queue.ack([lease])  # unreadable: logged, dropped from the queue
                    self.stats.inc_value("tmapi/cluster/skipped")
                    continue
                if not self.gate.budget.may_hand_out(request):
                    passed.append(lease)  # this worker's budget is reached: for the others
                    continue
                self.leases.hold(lease, request)
                self.stats.inc_value("scheduler/dequeued/redis")
                return request
            return None
        finally:
            if passed:
                self.queue.requeue(passed)

    # -- housekeeping ---------------------------------------------------------

    def _tick(self) -> None:
        if not self.health.up:
            return  # the outage's own probe says when Redis is back
        try:
            if not self.health.check():
                return
            self._send_unsent()
            self._commit()
            now = time.monotonic()
            if now - self.last_renew >= self.lease_ms / 4000:
                self.last_renew = now
                self.queue.renew(self.leases.held)
                self.health.renew_run()
                back = self.queue.requeue()
                if back:
                    logger.warning(
                        "%d requests of a worker that stopped renewing its leases are back in the queue", back
                    )
                    self.stats.inc_value("tmapi/cluster/requeued", back)
        except RedisError as exc:
            self.health.failed(exc)

    def _back(self) -> None:
        """Redis answers again: renew the leases held here first (the grace
        period keeps the other workers from taking them meanwhile), then
        queue and acknowledge what was kept."""
        self.queue.renew(self.leases.held)
        self.last_renew = time.monotonic()
        self._send_unsent()
        self._commit()

    def _tick_commit(self) -> None:
        """A commit due before the timer's (the tracker calls it)."""
        if self.health.up:
            try:
                self._commit()
            except RedisError as exc:
                self.health.failed(exc)

    def _commit(self) -> None:
        acked = self.leases.commit(self.queue.ack)
        if acked:
            self.stats.inc_value("tmapi/cluster/acked", acked)
