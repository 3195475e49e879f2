"""The leased JSON queue: scrapy-redis's queue interface over three keys.

* the pending ids: a sorted set, ordered by priority, then age;
* the requests: a hash, id -> JSON (:mod:`tmapi_crawler.durable.codec`, never pickle);
* the leases: a sorted set, id -> deadline (ms, Redis clock).

scrapy-redis 0.9.1 pops a request and forgets it; here a popped request
stays in Redis under a lease until it is acknowledged (:mod:`tmapi_crawler.durable.leases`),
or put back when its lease expires.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy_redis.queue import Base

from tmapi_crawler.cluster.defaults import DATA_KEY, GRACE_KEY, LEASES_KEY, SEQ_KEY
from tmapi_crawler.cluster.lua import ACK, POP, PUSH, RENEW, REQUEUE
from tmapi_crawler.durable import codec

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis import Redis
    from scrapy import Request, Spider

logger = logging.getLogger(__name__)


class LeasedQueue(Base):
    """scrapy-redis's queue interface over three keys: the pending ids (a
    sorted set: priority, then age), the requests (a hash, JSON), and the
    leases (a sorted set: deadline).  ``serializer`` is
    :mod:`tmapi_crawler.durable.codec`: JSON, never pickle."""

    def __init__(self, server: Redis, spider: Spider, key: str, serializer: Any = None, lease_ms: int = 60_000):
        super().__init__(server, spider, key, serializer or codec)
        names = {"spider": spider.name}
        self.data_key = DATA_KEY % names
        self.leases_key = LEASES_KEY % names
        self.seq_key = SEQ_KEY % names
        self.grace_key = GRACE_KEY % names
        self.lease_ms = lease_ms
        self._push = server.register_script(PUSH)
        self._pop = server.register_script(POP)
        self._requeue = server.register_script(REQUEUE)
        self._renew = server.register_script(RENEW)
        self._ack = server.register_script(ACK)

    def _encode_request(self, request: Request) -> bytes:
        return codec.encode_request(request, self.spider)

    def _decode_request(self, encoded_request: bytes) -> Request:
        return codec.decode_request(encoded_request, self.spider)

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
        expired (its worker died; none within a grace period after an outage
        of Redis)."""
        keys = [self.leases_key, self.key, self.data_key, self.grace_key]
        return int(self._requeue(keys=keys, args=list(leases)))

    def ack(self, leases: Iterable[str]) -> None:
        ids = list(leases)
        if ids:
            self._ack(keys=[self.leases_key, self.key, self.data_key], args=ids)
