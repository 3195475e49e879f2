"""What a worker does when Redis does not answer, or answers without the crawl.

An outage of Redis is a pause, not a failure (docs/distributed.md):

* the first Redis call that fails (:meth:`RedisHealth.failed`) logs one
  line; from then on no API call is sent (the shared gate waits in
  :meth:`RedisHealth.back`), and each component keeps what it could not
  send: the scheduler its acknowledgements and the requests to queue, the
  gate its releases.  Nothing becomes a failure record;
* Redis is tried again with backoff; when it answers, a grace key stops
  every worker from taking back another's leases for one lease timeout, each
  worker renews its own, sends what it kept (:meth:`RedisHealth.on_back`),
  logs one line and goes on;
* after ``TMAPI_REDIS_OUTAGE_TIMEOUT`` seconds the worker stops with the
  finish reason :data:`REDIS_UNAVAILABLE`; what it held is still leased in
  Redis and returns to the queue, so the same command resumes.

The crawl's marker (:data:`~.defaults.CRAWL_KEY`), an id set by the first
worker, tells when Redis answers but lost the crawl (restarted without
persistence, flushed, another server): every worker then stops at once with
:data:`REDIS_STATE_LOST` rather than crawl on from a half-empty queue.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy import signals
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from tmapi_crawler.calls.gate import gate_of
from tmapi_crawler.cluster.connection import redis_from_settings, safe_url
from tmapi_crawler.cluster.defaults import (
    CRAWL_KEY,
    GRACE_KEY,
    OUTAGE_PROBE_FIRST,
    OUTAGE_PROBE_MAX,
    RUN_KEY,
    RUN_REFRESH_KEY,
    RUN_TOTALS_KEY,
    RUN_WORKERS_KEY,
)
from tmapi_crawler.cluster.lua import RENEW, RUN_JOIN, RUN_LEAVE
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.extensions import CRAWL_ID_STAT
from tmapi_crawler.notify.monitors import LAST_WORKER, RUN_TOTALS
from tmapi_crawler.reasons import FinishReason
from tmapi_crawler.records import now_precise

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    from redis import Redis
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Finish reason: Redis did not answer for TMAPI_REDIS_OUTAGE_TIMEOUT seconds.
REDIS_UNAVAILABLE = FinishReason.REDIS_UNAVAILABLE
#: Finish reason: Redis answers, but without this crawl's state.
REDIS_STATE_LOST = FinishReason.REDIS_STATE_LOST


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe(exc: BaseException) -> str:
    """A Redis error in a few words (no URL: it may hold a password)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


class RedisHealth:
    """The extension that knows whether Redis answers (see the module's
    docstring); the add-on enables it in distributed mode."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        config = config_from_settings(crawler.settings)
        self.timeout = config.redis_outage_timeout
        self.lease_ms = int(config.lease_timeout * 1000)
        self.probe_max = min(OUTAGE_PROBE_MAX, max(OUTAGE_PROBE_FIRST, config.lease_timeout / 4))
        self.url = safe_url(str(crawler.settings.get("REDIS_URL")))
        self.server: Redis = redis_from_settings(crawler.settings)
        self.down_since: float | None = None
        self.lost = False
        self.stopping = False
        self.crawl_key = ""
        self.grace_key = ""
        self.crawl_id: bytes | None = None
        self.run_id = ""
        self.run_keys: list[str] = []
        self.me = uuid.uuid4().hex[:12]
        self._run_join = self.server.register_script(RUN_JOIN)
        self._run_leave = self.server.register_script(RUN_LEAVE)
        self._renew = self.server.register_script(RENEW)
        self.probe_delay = OUTAGE_PROBE_FIRST
        self.probe_timer: Any = None
        self.waiters: list[Deferred[None]] = []
        self.callbacks: list[Callable[[], None]] = []
        crawler.signals.connect(self._closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    @property
    def up(self) -> bool:
        """Whether Redis answered the last call and still holds the crawl."""
        return self.down_since is None and not self.lost

    def join(self, spider: str) -> None:
        """Join (or start) the crawl of *spider*: its marker is set by the
        first worker and remembered by every one; and the run of the
        workers crawling it now (:attr:`run_id`)."""
        names = {"spider": spider}
        self.crawl_key, self.grace_key = CRAWL_KEY % names, GRACE_KEY % names
        self.run_keys = [RUN_WORKERS_KEY % names, RUN_KEY % names, RUN_TOTALS_KEY % names, RUN_REFRESH_KEY % names]
        marker = json.dumps({"crawl": uuid.uuid4().hex, "started_at": now_precise()})
        self.server.set(self.crawl_key, marker, nx=True)
        self.crawl_id = self.server.get(self.crawl_key)  # type: ignore[assignment]
        run = self._run_join(keys=self.run_keys, args=[self.me, self.lease_ms, uuid.uuid4().hex])
        self.run_id = run.decode() if isinstance(run, bytes) else str(run)
        # A run of workers is one crawl (every worker adds to its crawls row).
        self.stats.set_value(CRAWL_ID_STAT, self.run_id)

    def renew_run(self) -> None:
        """Still one of the run's workers (raises RedisError)."""
        self._renew(keys=self.run_keys[:1], args=[self.lease_ms, self.me])

    def leave_run(self) -> None:
        """This worker stops: its counts of :data:`RUN_TOTALS` go to the
        run's, and the last one out ends the run and puts the run's totals in
        its stats (``tmapi/run/<name>``), where the monitors judge the
        crawl by them (``tmapi/run/last_worker`` says which worker did)."""
        counts = [value for key in RUN_TOTALS for value in (key, int(self.stats.get_value(f"tmapi/{key}", 0) or 0))]
        try:
            totals = self._run_leave(keys=self.run_keys, args=[self.me, *counts])
        except RedisError:
            return  # it expires; the monitors judge nothing they cannot know
        self.stats.set_value(LAST_WORKER, 1 if totals else 0)
        if totals:
            pairs = iter(totals)
            for key, value in zip(pairs, pairs, strict=True):
                self.stats.set_value(f"tmapi/run/{_text(key)}", int(value))

    def on_back(self, callback: Callable[[], None]) -> None:
        """Call *callback* when Redis answers again after an outage (it
        sends what was kept; a Redis error in it is a new outage)."""
        self.callbacks.append(callback)

    def check(self) -> bool:
        """Whether Redis still holds the crawl (one read); stops the worker
        when it does not.  Raises RedisError when Redis does not answer."""
        if self.crawl_id is None or self.lost:
            return not self.lost
        if self.server.get(self.crawl_key) != self.crawl_id:
            self._state_lost()
            return False
        return True

    # -- an outage -------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """A Redis call failed: the outage starts (once)."""
        if self.down_since is not None or self.lost or self.stopping:
            return
        self.down_since = time.monotonic()
        self.stats.inc_value("tmapi/redis/outages")
        logger.warning(
            "Redis at %s does not answer (%s): no API call is sent and nothing this worker holds is given up; "
            "trying again for up to %.0f s (TMAPI_REDIS_OUTAGE_TIMEOUT)",
            self.url,
            describe(exc),
            self.timeout,
        )
        self.probe_delay = OUTAGE_PROBE_FIRST
        self._arm()

    async def back(self) -> None:
        """Wait until Redis answers again, or the worker stops."""
        if self.up or self.stopping:
            return
        waiter: Deferred[None] = Deferred()
        self.waiters.append(waiter)
        await maybe_deferred_to_future(waiter)

    def wake(self) -> None:
        """Let every call waiting in :meth:`back` go on (to find the crawl
        stopping, or Redis back)."""
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _arm(self) -> None:
        if self.probe_timer is None and not self.stopping:
            self.probe_timer = call_later(self.probe_delay, self._probe)

    def _probe(self) -> None:
        self.probe_timer = None
        if self.down_since is None or self.stopping:
            return
        down_for = time.monotonic() - self.down_since
        try:
            self.server.ping()
            if not self.check():
                return
            # Nobody takes back a lease for one lease timeout: each worker
            # renews its own first (the grace key).
            self.server.set(self.grace_key, 1, px=self.lease_ms)
        except RedisError:
            if down_for >= self.timeout:
                self._give_up(down_for)
                return
            self.probe_delay = min(self.probe_delay * 2, self.probe_max)
            self._arm()
            return
        self.down_since = None
        total = self.stats.get_value("tmapi/redis/down_seconds", 0.0)
        self.stats.set_value("tmapi/redis/down_seconds", round(total + down_for, 3))
        logger.info("Redis at %s answers again after %.0f s: resuming", self.url, down_for)
        for callback in self.callbacks:
            try:
                callback()
            except RedisError as exc:
                self.failed(exc)  # gone again: what was not sent is kept
                break
        self.wake()

    def _give_up(self, down_for: float) -> None:
        logger.error(
            "Redis at %s did not answer for %.0f s (TMAPI_REDIS_OUTAGE_TIMEOUT): stopping. Bring Redis back "
            "(with its append-only file), then run the same command again: what this worker held returns "
            "to the queue",
            self.url,
            down_for,
        )
        self._stop(REDIS_UNAVAILABLE)

    def _state_lost(self) -> None:
        self.lost = True
        self.stats.set_value("tmapi/redis/state_lost", 1)
        logger.error(
            "Redis at %s no longer holds this crawl (restarted without its append-only file, flushed, or another "
            "server): stopping. Run Redis with appendonly yes; then scrapy cluster clear %s and start the crawl "
            "again (the feeds keep what was written)",
            self.url,
            self.crawl_key.removesuffix(":crawl"),
        )
        self._stop(REDIS_STATE_LOST)

    def _stop(self, reason: str) -> None:
        self.stopping = True
        gate_of(self.crawler).stop(reason)
        self.wake()

    def _closed(self) -> None:
        self.stopping = True
        if self.probe_timer is not None:
            self.probe_timer.cancel()
            self.probe_timer = None
        if self.down_since is not None:
            total = self.stats.get_value("tmapi/redis/down_seconds", 0.0)
            self.stats.set_value("tmapi/redis/down_seconds", round(total + time.monotonic() - self.down_since, 3))
        self.wake()


def health_of(crawler: Crawler) -> RedisHealth:
    health = crawler.get_extension(RedisHealth)
    if health is None:
        raise RuntimeError("tmapi_crawler.cluster.health.RedisHealth is not enabled: add the TmapiAddon to ADDONS")
    return health
