"""The Redis dupefilter: the set of requests seen, shared by every worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy_redis.dupefilter import RFPDupeFilter

from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.defaults import DUPEFILTER_KEY

if TYPE_CHECKING:
    from typing import Self

    from redis import Redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler


class RedisDupeFilter(RFPDupeFilter):
    """scrapy-redis's dupefilter with Scrapy's own request fingerprints (raw
    20-byte digests, half the memory of hex), never cleared by a worker
    closing."""

    def __init__(self, server: Redis, key: str, debug: bool = False, *, crawler: Crawler | None = None):
        super().__init__(server, key, debug)
        self.fingerprinter = crawler.request_fingerprinter if crawler is not None else None

    @classmethod
    def from_spider(cls, spider: Spider) -> Self:
        # scrapy-redis's scheduler builds its dupefilter from the spider.
        settings = spider.crawler.settings
        key = settings.get("SCHEDULER_DUPEFILTER_KEY", DUPEFILTER_KEY) % {"spider": spider.name}
        return cls(redis_from_settings(settings), key, settings.getbool("DUPEFILTER_DEBUG"), crawler=spider.crawler)

    def request_fingerprint(self, request: Request) -> bytes | str:
        if self.fingerprinter is None:
            return str(super().request_fingerprint(request))
        return bytes(self.fingerprinter.fingerprint(request))

    def close(self, reason: str = "") -> None:
        """Keep the fingerprints: other workers share them."""
