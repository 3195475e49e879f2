"""Distributed mode: the crawl's one alert (:mod:`tmapi_crawler.notify.alerts`).

Each worker that may send an alert is a member of a sorted set with a
deadline it renews; when it stops it leaves its report and the set in one
step (:data:`.lua.ALERT_LEAVE`), and the last one out (the others stopped,
or died and were not renewed) gets every report and sends the alert.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.defaults import ALERT_REPORTS_KEY, ALERT_WORKERS_KEY
from tmapi_crawler.cluster.lua import ALERT_LEAVE, LUA_NOW

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

# KEYS: the workers; ARGV: this worker, ms it stays a member unless renewed.
_JOIN = LUA_NOW + "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])"


class AlertRoom:
    def __init__(self, settings: BaseSettings, spider: str, lease_ms: int):
        self.server = redis_from_settings(settings)
        self.keys = [ALERT_WORKERS_KEY % {"spider": spider}, ALERT_REPORTS_KEY % {"spider": spider}]
        self.me = uuid.uuid4().hex[:12]
        self.lease_ms = lease_ms
        self._join = self.server.register_script(_JOIN)
        self._leave = self.server.register_script(ALERT_LEAVE)

    def join(self) -> None:
        """Be (still) one of the workers that may send the alert."""
        try:
            self._join(keys=self.keys[:1], args=[self.me, self.lease_ms])
        except RedisError:
            logger.debug("Redis does not answer: the alert membership is renewed later")

    def leave(self, report: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Leave *report*; every worker's reports when this one is the last
        (``None`` when others are still crawling).  Redis away: this worker
        sends its own report, rather than none."""
        try:
            reports = self._leave(keys=self.keys, args=[self.me, json.dumps(report, ensure_ascii=False)])
        except RedisError as exc:
            logger.warning("Redis does not answer (%s): this worker sends its own alert", type(exc).__name__)
            return [report]
        if not reports:
            return None
        return [json.loads(raw) for raw in reports]
