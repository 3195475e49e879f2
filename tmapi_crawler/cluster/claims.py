"""Distributed mode: the media files claimed among the workers, so that each
file is downloaded once (:mod:`tmapi_crawler.media.downloads`; loaded by class path,
``TMAPI_MEDIA_CLAIMS_CLASS``, which the add-on sets with ``REDIS_URL``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy.utils.asyncio import sleep

from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.health import health_of
from tmapi_crawler.cluster.lua import UNCLAIM

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.crawler import Crawler

#: Redis key prefix of the claims (followed by the file's path in the store).
CLAIMS_KEY = "tmapi:media:claim:"


class MediaClaims:
    """Distributed mode: a worker claims a file in Redis before it downloads
    it (``SET NX`` with a timeout, in case it dies); a worker that finds the
    file claimed waits for the claim to end and then finds the file in the
    shared ``FILES_STORE``."""

    POLL = 0.1

    def __init__(self, crawler: Crawler, timeout: float):
        self.crawler = crawler
        self.server = redis_from_settings(crawler.settings)
        self._unclaim = self.server.register_script(UNCLAIM)
        self.prefix = CLAIMS_KEY
        self.timeout_ms = int(timeout * 1000)
        self.me = uuid.uuid4().hex

    async def claim(self, key: str) -> bool:
        """``True``: this worker downloads the file; ``False``: another one
        had it, and has finished (or given up) by now."""
        name = self.prefix + key
        if await self._call(lambda: self.server.set(name, self.me, nx=True, px=self.timeout_ms)):
            return True
        while await self._call(lambda: self.server.exists(name)):
            await sleep(self.POLL)
        return False

    async def release(self, key: str) -> None:
        """End this worker's claim (not one another worker took since)."""
        name = self.prefix + key
        await self._call(lambda: self._unclaim(keys=[name], args=[self.me]))

    async def _call(self, call: Callable[[], Any]) -> Any:
        """*call* in a thread; while Redis does not answer, it waits for
        Redis (:mod:`tmapi_crawler.cluster.health`), then tries again."""
        health = health_of(self.crawler)  # an extension: looked up once the crawl runs
        while True:
            if not health.up and not health.stopping:
                await health.back()
            try:
                return await asyncio.get_running_loop().run_in_executor(None, call)
            except RedisError as exc:
                if health.stopping:
                    raise
                health.failed(exc)
