"""The Redis connection, through scrapy-redis's helper (``REDIS_URL``,
``REDIS_PARAMS``): ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs, with
a user and password in the URL when the server asks for them."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from scrapy_redis.connection import get_redis_from_settings

from tmapi_crawler.config import shown

if TYPE_CHECKING:
    from redis import Redis
    from scrapy.settings import BaseSettings

SCHEMES = ("redis", "rediss", "unix")


def redis_from_settings(settings: BaseSettings) -> Redis:
    """The client for ``REDIS_URL``.  Its calls are tried once more at once
    (a connection that went stale when Redis restarted), not ten times with
    backoff as redis-py's default does: the calls run on the reactor, and a
    worker handles an outage itself (:mod:`.health`).  ``REDIS_PARAMS``'s
    own ``retry`` wins."""
    server: Redis = get_redis_from_settings(settings)
    if "retry" not in settings.getdict("REDIS_PARAMS"):
        server.set_retry(Retry(NoBackoff(), 1))
    return server


def safe_url(url: str) -> str:
    """*url* with its password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def check_redis(settings: BaseSettings) -> str | None:
    """``None`` when Redis at ``REDIS_URL`` answers, else one line that says
    what is wrong and what to do."""
    url = str(settings.get("REDIS_URL"))
    if urlsplit(url).scheme not in SCHEMES:
        return f"REDIS_URL={shown(safe_url(url))} is not a Redis URL: use redis://host:6379/0 (rediss:// for TLS)"
    try:
        redis_from_settings(settings).ping()
    except RedisError as exc:
        return f"cannot reach Redis at {safe_url(url)} ({exc}); start redis-server or fix REDIS_URL"
    except ValueError as exc:
        return f"REDIS_URL={shown(safe_url(url))} is not valid ({exc})"
    return None
