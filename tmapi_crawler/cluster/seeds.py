"""Seeds pushed to Redis, followed after the command line's own.

:class:`RedisSeedsMiddleware` is a spider middleware (the add-on enables it
in distributed mode): its ``process_start`` yields what the spider's
``start()`` yields, then the seeds pushed as JSON onto
``tmapi:<spider>:seeds`` (``scrapy cluster push``), each checked like
command-line arguments (a bad one becomes a failure record), until the
cluster has had no work for ``TMAPI_IDLE_TIMEOUT`` seconds (never, with 0:
the worker is a service).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from redis.exceptions import RedisError
from scrapy.utils.asyncio import sleep

from tmapi_crawler.arguments import check_media
from tmapi_crawler.calls.gate import gate_of
from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.defaults import LEASES_KEY, QUEUE_KEY, SEED_POLL, SEEDS_KEY
from tmapi_crawler.cluster.health import health_of
from tmapi_crawler.compat import wake_engine
from tmapi_crawler.config import ConfigError, config_from_settings
from tmapi_crawler.durable.leases import tracker_of
from tmapi_crawler.records import failure_record
from tmapi_crawler.spiders.base import wait_for_room

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from typing import Self

    from scrapy.crawler import Crawler

    from tmapi_crawler.arguments import CommonArgs

logger = logging.getLogger(__name__)


class SeededSpider(Protocol):
    """What this middleware needs of a spider."""

    name: str
    args_model: ClassVar[type[CommonArgs]]

    def seed_requests(self, args: Any) -> Iterable[Any]: ...


class RedisSeedsMiddleware:
    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.stats = crawler.stats
        self.server = redis_from_settings(crawler.settings)
        self.idle_timeout = config_from_settings(crawler.settings).idle_timeout
        self.leases = tracker_of(crawler)
        self.health = health_of(crawler)
        self.gate = gate_of(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_start(self, start: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for out in start:
            yield out
        spider: Any = self.crawler.spider
        keys = {"spider": spider.name}
        seeds_key, queue_key, leases_key = SEEDS_KEY % keys, QUEUE_KEY % keys, LEASES_KEY % keys
        async for out in self._follow(spider, seeds_key, queue_key, leases_key):
            await wait_for_room(self.crawler)
            yield out

    async def _follow(
        self, spider: SeededSpider, seeds_key: str, queue_key: str, leases_key: str
    ) -> AsyncIterator[Any]:
        idle_since: float | None = None
        while not self.health.stopping and not self.gate.budget.draining:
            if not self.health.up:
                idle_since = None  # an outage is not idleness
                await self.health.back()
                continue
            try:
                seed = self._pop_seed(seeds_key)
                if seed is None:
                    pipe = self.server.pipeline(transaction=False)
                    pipe.zcard(queue_key)
                    pipe.zcard(leases_key)
                    pipe.llen(seeds_key)
                    pending, leased, seeds = pipe.execute()
            except RedisError as exc:
                self.health.failed(exc)
                continue
            if seed is not None:
                idle_since = None
                try:
                    args = spider.args_model.from_seed(seed)
                    check_media(args, self.crawler.settings)
                except ConfigError as exc:
                    yield self._bad_seed(seeds_key, seed, exc)
                    continue
                logger.info("Seed from %s: %.200r", seeds_key, seed)
                self.stats.inc_value("tmapi/cluster/seeds")
                for out in spider.seed_requests(args):
                    yield out
                continue
            if pending:
                idle_since = None
                wake_engine(self.crawler)  # other workers' requests: take some
            elif self.idle_timeout and not (leased or seeds or self.leases.busy):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= self.idle_timeout:
                    logger.info(
                        "No work anywhere in the cluster for %.0f s (TMAPI_IDLE_TIMEOUT): stopping", self.idle_timeout
                    )
                    return
            else:
                idle_since = None
            await sleep(SEED_POLL)

    def _pop_seed(self, key: str) -> Any:
        """The next seed pushed as JSON, parsed; a string for an entry that
        is not JSON; ``None`` when there is none."""
        raw = self.server.lpop(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)  # type: ignore[arg-type]
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    def _bad_seed(self, key: str, seed: Any, exc: ConfigError) -> Any:
        self.stats.inc_value("tmapi/cluster/bad_seeds")
        logger.error("Skipped a bad seed from %s: %.200r: %s", key, seed, exc)
        params = seed if isinstance(seed, dict) else {"seed": str(seed)[:200]}
        return failure_record(
            endpoint="seed",
            params=params,
            item_id=None,
            code=None,
            msg=f"bad seed: {exc}",
            attempts=0,
            source=None,
            listing=None,
        )
