"""Distributed mode: the refresh budget is the crawl's, shared by its workers
(``TMAPI_REFRESH_BUDGET`` as a number of calls; docs/catalog.md).

The calls spent are counted in Redis for the run of the workers crawling
together (:data:`~.defaults.RUN_REFRESH_KEY`, cleared when a new run starts),
and a worker is granted refreshes a listing page at a time, atomically: the
workers together never spend more than the budget.  A share of the listed
products (``5%``) and the default need no sharing: each worker's share is of
the pages it reads.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.defaults import RUN_REFRESH_KEY

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# KEYS: the run's refreshes spent; ARGV: the budget, the refreshes wanted.
# -> how many are granted (and counted as spent).
GRANT = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = math.min(math.max(tonumber(ARGV[1]) - spent, 0), tonumber(ARGV[2]))
if granted > 0 then redis.call('INCRBY', KEYS[1], granted) end
return granted
"""


class SharedBudget:
    def __init__(self, crawler: Crawler, budget: int):
        assert crawler.spider is not None
        self.server = redis_from_settings(crawler.settings)
        self.key = RUN_REFRESH_KEY % {"spider": crawler.spider.name}
        self.budget = budget
        self._grant = self.server.register_script(GRANT)

    def grant(self, wanted: int) -> int:
        """How many of *wanted* refreshes the crawl's budget still holds
        (none while Redis does not answer: the budget is never exceeded)."""
        try:
            return int(self._grant(keys=[self.key], args=[self.budget, wanted]))
        except RedisError as exc:
            logger.debug("Redis does not answer (%s): no refresh granted for this page", type(exc).__name__)
            return 0
