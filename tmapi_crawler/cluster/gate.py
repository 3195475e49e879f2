"""One account, one limit: the call gate shared by every worker through Redis.

The algorithm is :class:`tmapi_crawler.calls.gate.CallGate`'s (find the
account's limit from 503s and hold just under it, pause everything on 439
and probe with one call, stop after ``TMAPI_QUOTA_WAIT``), but its state
lives in Redis, changed only by two scripts, so that N workers together keep
the account's calls in flight under its limit and still fill it:

* ``tmapi:gate`` (a hash): the limit, the ceiling that 503s revealed, the
  successes since, and the 439 pause (since when, the next probe, who
  probes);
* ``tmapi:gate:holders`` (a sorted set): one member per call in flight in
  the whole cluster, with a deadline that its worker renews; a worker that
  dies frees its places when they expire.

Each call costs two script calls on the Redis server.  A call that finds no
free place waits on its worker, without busy-waiting: it is woken when a call
of its worker ends, and polls every :data:`~.defaults.GATE_POLL` seconds for places freed by
other workers.

While Redis does not answer (:mod:`.health`) no call is let through, and the
release of each call that ends meanwhile is kept and sent when Redis is back.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from tmapi_crawler.api import Outcome
from tmapi_crawler.calls.ceiling import PROBE_BACKOFF, PROBE_FIRST, PROBE_MOST
from tmapi_crawler.calls.gate import CallGate, Ticket
from tmapi_crawler.cluster.connection import redis_from_settings
from tmapi_crawler.cluster.defaults import (
    GATE_ADMISSIONS_KEY,
    GATE_HOLDERS_KEY,
    GATE_KEY,
    GATE_POLL,
    GATE_POLL_PAUSED,
)
from tmapi_crawler.cluster.health import RedisHealth
from tmapi_crawler.cluster.lua import ACQUIRE, RELEASE, RENEW
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.loops import looping_call
from tmapi_crawler.reasons import FinishReason

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

_OUTCOMES = {Outcome.CONCURRENCY: "concurrency", Outcome.QUOTA: "quota", Outcome.AUTH: "auth"}


@dataclass(frozen=True, slots=True)
class SharedTicket(Ticket):
    holder: str = ""
    #: Its number among the calls let through (their counts are in Redis).
    number: int = 0


class SharedCallGate(CallGate):
    def __init__(self, crawler: Crawler, **kwargs: Any):
        super().__init__(crawler, **kwargs)
        config = config_from_settings(crawler.settings)
        self.server = redis_from_settings(crawler.settings)
        self.holder_ms = int(config.lease_timeout * 1000)
        self.worker = uuid.uuid4().hex[:12]
        self.serial = itertools.count()
        self.holders: set[str] = set()
        self.keys = [GATE_KEY, GATE_HOLDERS_KEY, GATE_ADMISSIONS_KEY]
        self._acquire = self.server.register_script(ACQUIRE)
        self._release = self.server.register_script(RELEASE)
        self._renew = self.server.register_script(RENEW)
        self.poll_timer: Any = None
        self.renew_loop: Any = None
        #: Releases Redis did not take (it was away): sent when it is back.
        self.unreleased: list[list[str | int]] = []
        self._health: RedisHealth | None = None

    @property
    def health(self) -> RedisHealth:
        if self._health is None:  # an extension built after the gate
            found = self.crawler.get_extension(RedisHealth)
            self._health = found if found is not None else RedisHealth(self.crawler)  # a gate on its own
            self._health.on_back(self._back)
        return self._health

    async def acquire(self, request: Request | None = None) -> Ticket:
        woken = False
        while True:
            self.check_sendable(request)
            if not self.health.up:
                await self.health.back()
                continue
            holder = f"{self.worker}:{next(self.serial)}"
            try:
                granted, in_flight, probe, paused_ms, number = self._acquire(
                    keys=self.keys, args=[holder, self.holder_ms, self.cap, self.start]
                )
            except RedisError as exc:
                self.health.failed(exc)
                continue
            if paused_ms >= 0:
                self._seen_paused()
                self.check_sendable()
            elif granted and self.pause.paused:
                self._seen_resumed()
            if granted:
                self.holders.add(holder)
                self.in_flight += 1
                self.budget.count(request)
                if probe:
                    logger.info("Probing whether TMAPI answers again (paused for %.0f s)", paused_ms / 1000)
                self.wake()  # there was a free place: perhaps there is another
                return SharedTicket(in_flight, bool(probe), self.join_burst(in_flight), holder, int(number))
            # First come, first served: a new call waits behind the others; one
            # that was woken and still found no place keeps its turn.
            waiter: Deferred[None] = Deferred()
            if woken:
                self.waiters.appendleft(waiter)
            else:
                self.waiters.append(waiter)
            self._arm_poll(GATE_POLL_PAUSED if paused_ms >= 0 else GATE_POLL)
            await maybe_deferred_to_future(waiter)
            woken = True

    def release(self, ticket: Ticket, outcome: Outcome | None) -> None:
        assert isinstance(ticket, SharedTicket)
        self.in_flight -= 1
        self.holders.discard(ticket.holder)
        name = "none" if outcome is None else _OUTCOMES.get(outcome, "ok")
        sent_with = ticket.in_flight_when_sent
        if name == "ok" and not self.pause.paused:
            # As the release script counts it: what the next crawl starts at
            # (tmapi_crawler.calls.limits) when no 503 set a ceiling.
            self.rule.proven = max(self.rule.proven, sent_with)
        args: list[str | int] = [ticket.holder, name, sent_with, int(ticket.probe), self.cap, self.start]
        args += [int(self.pause.probe_first * 1000), int(self.pause.probe_max * 1000), PROBE_MOST]
        args += [ticket.number, ticket.in_flight]
        args += [PROBE_FIRST, PROBE_BACKOFF]
        if self.unreleased or not self.health.up:
            self.unreleased.append(args)
        else:
            self._send_release(args)
        self.wake()

    def _send_release(self, args: list[str | int]) -> None:
        try:
            limit, ceiling, event, interval_ms, sent_with = self._release(keys=self.keys, args=args)
        except RedisError as exc:
            self.health.failed(exc)
            self.unreleased.append(args)
            return
        if event == b"ceiling":
            logger.info(
                "TMAPI answered 503 with %d calls in flight in the cluster: at most %d from now on",
                sent_with,
                ceiling,
            )
        elif event == b"paused":
            self._seen_paused()
        elif event == b"resumed" and self.pause.paused:
            self._seen_resumed()
        self.limit = float(limit)
        self.ceiling = None if ceiling < 0 else int(ceiling)
        if interval_ms >= 0:
            self.pause.interval = interval_ms / 1000
        self.publish()

    def _back(self) -> None:
        """Redis answers again: the releases it missed, in order."""
        kept, self.unreleased = self.unreleased, []
        for i, args in enumerate(kept):
            self._send_release(args)
            if self.unreleased:  # gone again: keep the rest, in order
                self.unreleased += kept[i + 1 :]
                return
        self.wake()

    def stop(self, reason: str) -> None:
        super().stop(reason)
        if self._health is not None:
            self._health.wake()  # calls waiting for Redis: the crawl stops

    def free_places(self) -> int:
        """The places are counted in Redis: one waiting call tries."""
        return 1

    def _arm_poll(self, delay: float) -> None:
        if self.poll_timer is None:
            self.poll_timer = call_later(delay, self._poll)

    def _poll(self) -> None:
        self.poll_timer = None
        self.wake()

    # -- the 439 pause, as this worker sees it ---------------------------------

    def _seen_paused(self) -> None:
        # TMAPI_QUOTA_WAIT counts from when this worker first saw the pause,
        # not from when it began: a worker started after a top-up, while the
        # cluster's pause is still recorded, sends a probe before it gives up.
        if self.pause.begin():
            logger.warning(
                "TMAPI answered 439 (subscription expired or balance spent): all workers paused; "
                "probing with one call at growing intervals for up to %.0f s (TMAPI_QUOTA_WAIT). Top up to resume.",
                self.pause.wait,
            )
        if self.pause.expired():
            logger.error(
                "TMAPI answered 439 for %.0f s: stopping. Top up the balance (or renew the subscription), "
                "then start the workers again; the pending requests wait in Redis",
                self.pause.lasted(),
            )
            self.stop(FinishReason.QUOTA_EXHAUSTED)

    def _seen_resumed(self) -> None:
        logger.info("TMAPI answers again after %.0f s of 439: resuming", self.pause.end())

    # -- housekeeping ---------------------------------------------------------

    def spider_opened(self) -> None:
        super().spider_opened()
        self.renew_loop = looping_call(self._renew_holders, "gate renewal", self.stats)
        self.renew_loop.start(max(0.25, self.holder_ms / 4000), now=False)

    def _renew_holders(self) -> None:
        if self.holders and self.health.up:
            try:
                self._renew(keys=[GATE_HOLDERS_KEY], args=[self.holder_ms, *self.holders])
            except RedisError as exc:
                self.health.failed(exc)

    def spider_closed(self) -> None:
        if self.renew_loop is not None and self.renew_loop.running:
            self.renew_loop.stop()
        if self.poll_timer is not None:
            self.poll_timer.cancel()
            self.poll_timer = None
        if self.holders:
            with contextlib.suppress(RedisError):  # else they expire (TMAPI_LEASE_TIMEOUT)
                self.server.zrem(GATE_HOLDERS_KEY, *self.holders)
            self.holders.clear()
        super().spider_closed()
