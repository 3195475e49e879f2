"""Admission of API calls: the account's concurrency limit, the 439 pause,
the budget, and stopping (docs/behaviour.md, "Throttling").

Every API call passes :meth:`CallGate.acquire` in the download handler, at
the last moment before it is sent, and :meth:`CallGate.release` with the
answer's outcome when it is back, so the count of calls in flight is exact.
How many may be in flight is the adaptive rule's
(:mod:`tmapi_crawler.calls.ceiling`); the limit a crawl finds is where the
next one starts (:mod:`tmapi_crawler.calls.limits`).  A call refused because the crawl is
stopping raises :class:`CrawlStopping`, and is handed back to the scheduler
(so that ``JOBDIR`` keeps it for the resume).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.core.scheduler import Scheduler
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.misc import load_object
from twisted.internet.defer import Deferred

from tmapi_crawler.api import DETAIL_ENDPOINTS, Endpoint, Outcome, calls_to_finish, endpoint_of
from tmapi_crawler.calls.ceiling import AdaptiveLimit
from tmapi_crawler.calls.limits import Remembered, keep, recall
from tmapi_crawler.compat import engine_closing
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.durable.feeds import guard_of
from tmapi_crawler.durable.leases import LeaseTracker
from tmapi_crawler.loops import looping_call
from tmapi_crawler.reasons import FinishReason
from tmapi_crawler.records import now_iso

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler

    from tmapi_crawler.calls.limits import LimitMemory

logger = logging.getLogger(__name__)

#: Calls in flight at the start when TMAPI_CONCURRENCY is not set.
START = 4
#: The most calls in flight when TMAPI_CONCURRENCY is not set.
DEFAULT_CAP = 64
#: Seconds between two checks that the engine is not closing.
SHUTDOWN_POLL = 0.5


#: The finish reason of a crawl that reached TMAPI_MAX_CALLS.
BUDGET_EXHAUSTED = FinishReason.BUDGET_EXHAUSTED
#: meta keys (their value: the gate's run id, so that a request kept from an
#: earlier run claims nothing): the product was started by this crawl, and
#: the place of its description is kept in the budget.
STARTED_META = "tmapi_started"
RESERVED_META = "tmapi_reserved"


class CrawlStopping(Exception):
    """The crawl is stopping (bad token, no balance, budget, shutdown): the
    call was not sent."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"not sent: the crawl is stopping ({reason})")


#: Calls let through within this many seconds of each other leave as one
#: burst, over several connections, and may reach the account in any order.
BURST_WINDOW = 0.002


@dataclass(slots=True)
class Burst:
    """Calls sent together: the most that were in flight among them."""

    started: float
    peak: int = 0


@dataclass(frozen=True, slots=True)
class Ticket:
    """A call let through: how many were in flight with it, the burst it
    left in, whether it is the probe of a 439 pause."""

    in_flight: int
    probe: bool
    burst: Burst

    @property
    def in_flight_when_sent(self) -> int:
        """What a 503 for this call proves the limit is below.  Not its own
        count: a call sent third in a burst can reach the account after the
        fourth, and its 503 would then put the ceiling one too low for good."""
        return self.burst.peak


class CallGate:
    def __init__(
        self,
        crawler: Crawler,
        *,
        start: int,
        cap: int,
        max_calls: int = 0,
        quota_wait: float = 600.0,
        probe_first: float = 5.0,
        probe_max: float = 60.0,
    ):
        self.crawler = crawler
        self.stats = crawler.stats
        self.cap = cap
        self.start = min(start, cap)
        #: Slow start, the ceiling and its probes (tmapi_crawler.calls.ceiling).
        self.rule = AdaptiveLimit(cap=cap, start=self.start, limit=float(self.start))
        self.in_flight = 0
        self.burst: Burst | None = None
        self.sent = 0
        self.max_calls = max_calls
        #: Descriptions of started products whose place the budget keeps.
        self.reserved = 0
        #: The budget is reached: only started products are finished.
        self.draining = False
        self.run_id = uuid.uuid4().hex[:12]
        self.waiters: deque[Deferred[None]] = deque()
        self.stop_reason: str | None = None
        # 439
        self.quota_wait = quota_wait
        self.probe_first = probe_first
        self.probe_max = probe_max
        self.paused_since: float | None = None
        self.probe_interval = probe_first
        self.probe_due = False
        self.probe_out = False
        self.probe_timer: Any = None
        self.shutdown_poll: Any = None
        #: When this crawl's last 439 pause began (remembered for the next).
        self.quota_paused_at: str | None = None
        self._memory: tuple[LimitMemory, str] | None = None
        self._publish()

    # -- the adaptive limit (tmapi_crawler.calls.ceiling) ----------------------------

    @property
    def limit(self) -> float:
        return self.rule.limit

    @limit.setter
    def limit(self, value: float) -> None:
        self.rule.limit = value

    @property
    def ceiling(self) -> int | None:
        return self.rule.ceiling

    @ceiling.setter
    def ceiling(self, value: int | None) -> None:
        self.rule.ceiling = value

    @property
    def proven(self) -> int:
        return self.rule.proven

    @proven.setter
    def proven(self, value: int) -> None:
        self.rule.proven = value

    # -- the limit remembered across crawls (tmapi_crawler.calls.limits) -------------

    def recall(self) -> None:
        """Start where the last crawl of this account ended: at the limit it
        proved (slow start goes on from there), or at the ceiling its 503s
        revealed (held there, probed upward as usual)."""
        found = recall(self.crawler.settings)
        if found is None:
            return
        memory, account, remembered = found
        self._memory = (memory, account)
        if remembered is None:
            return
        self.ceiling = None if remembered.ceiling is None else min(remembered.ceiling, self.cap)
        self.start = min(self.cap, remembered.limit if self.ceiling is None else self.ceiling)
        self.limit = float(self.start)
        self.proven = self.start
        self.stats.set_value("tmapi/throttle/remembered", self.start)
        self._publish()
        logger.info(
            "Starting at %d calls in flight (%s), as the last crawl of this account found on %s "
            "(remembered in %s; TMAPI_CONCURRENCY sets it instead)",
            self.start,
            "the ceiling its 503s showed" if self.ceiling is not None else "proved without a 503",
            remembered.saved_at or "an unknown date",
            memory.where,
        )
        if remembered.quota_paused_at:
            logger.info("The last crawl of this account met a 439 pause on %s", remembered.quota_paused_at)

    def remember(self) -> None:
        """Keep what this crawl found, for the next (when the crawl sent calls)."""
        if self._memory is None or not self.proven:
            return
        limit = self.ceiling if self.ceiling is not None else max(self.proven, self.start)
        remembered = Remembered(
            limit=limit, ceiling=self.ceiling, quota_paused_at=self.quota_paused_at, saved_at=now_iso()
        )
        keep(*self._memory, remembered)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        config = config_from_settings(crawler.settings)
        cap = config.concurrency or DEFAULT_CAP
        gate = cls(
            crawler,
            start=config.concurrency or START,
            cap=cap,
            max_calls=config.max_calls,
            quota_wait=config.quota_wait,
            probe_first=config.quota_probe,
            probe_max=config.quota_probe_max,
        )
        gate.recall()
        crawler.signals.connect(gate.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(gate.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(gate.spider_idle, signal=signals.spider_idle)
        return gate

    # -- admission ------------------------------------------------------------

    def _may_go(self) -> bool:
        if self.paused_since is not None:
            return self.probe_due and not self.probe_out
        return self.in_flight < int(self.limit)

    async def acquire(self, request: Request | None = None) -> Ticket:
        """Wait for a free place for *request*.  Raises
        :class:`CrawlStopping` when the call must not be sent."""
        # Once the budget is reached, a call that would start a product
        # leaves at once (handed back), without waiting for a place.
        while self.stop_reason is None and not self._may_go() and not (self.draining and not self._fits(request)):
            waiter: Deferred[None] = Deferred()
            self.waiters.append(waiter)
            await maybe_deferred_to_future(waiter)
        self._may_send(request)
        probe = self.paused_since is not None
        if probe:
            self.probe_out, self.probe_due = True, False
            paused = time.monotonic() - (self.paused_since or 0.0)
            logger.info("Probing whether TMAPI answers again (paused for %.0f s)", paused)
        self.in_flight += 1
        self._count(request)
        return Ticket(self.in_flight, probe, self._burst(self.in_flight))

    def _burst(self, in_flight: int) -> Burst:
        """The burst a call let through now leaves in, *in_flight* counted."""
        now = time.monotonic()
        if self.burst is None or now - self.burst.started > BURST_WINDOW:
            self.burst = Burst(now)
        self.burst.peak = max(self.burst.peak, in_flight)
        return self.burst

    def _may_send(self, request: Request | None = None) -> None:
        """Raise :class:`CrawlStopping` when the crawl is stopping, or when
        the budget has no room for *request* (no new product then)."""
        if self.stop_reason is not None:
            raise CrawlStopping(self.stop_reason)
        if not self._fits(request):
            self._budget_reached()
            raise CrawlStopping(BUDGET_EXHAUSTED)

    # -- the budget -----------------------------------------------------------

    def _fits(self, request: Request | None) -> bool:
        """Whether the budget lets *request* be sent: always for a call of
        a product this crawl started; else when the calls it needs, with
        the descriptions whose place is kept, fit in TMAPI_MAX_CALLS."""
        if not self.max_calls:
            return True
        if request is not None and request.meta.get(STARTED_META) == self.run_id:
            return True
        need = calls_to_finish(request) if request is not None else 1
        return self.sent + self.reserved + need <= self.max_calls

    def _count(self, request: Request | None) -> None:
        """A call let through: counted, and a detail that starts a product
        marks it started (its description's place kept)."""
        self.sent += 1
        if not self.max_calls or request is None:
            return
        meta, endpoint = request.meta, endpoint_of(request)
        if meta.get(STARTED_META) == self.run_id:
            if endpoint is Endpoint.ITEM_DESC and meta.pop(RESERVED_META, None) == self.run_id:
                self.reserved -= 1
        elif endpoint in DETAIL_ENDPOINTS:
            meta[STARTED_META] = self.run_id
            if calls_to_finish(request) == 2:
                meta[RESERVED_META] = self.run_id
                self.reserved += 1

    def unreserve(self, request: Request | None) -> None:
        """*request*'s product ended before its description was sent (it
        failed, or the store answered it): its place is free again."""
        if request is not None and request.meta.pop(RESERVED_META, None) == self.run_id:
            self.reserved -= 1

    def may_hand_out(self, request: Request) -> bool:
        """Whether a scheduler should hand *request* out now: once the
        budget is reached, only what finishes a started product."""
        return not self.draining or self._fits(request)

    def _budget_reached(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.stats.set_value("tmapi/budget/reached_at", self.sent)
        logger.info(
            "TMAPI_MAX_CALLS=%d: %d calls sent, %d more kept for the descriptions of products started; no new "
            "product is started, and the crawl stops once those are written. What was not sent is kept for a "
            "resume (JOBDIR)",
            self.max_calls,
            self.sent,
            self.reserved,
        )
        self._wake()

    def spider_idle(self) -> None:
        """Nothing left to finish once the budget was reached: stop with
        its finish reason (not "finished": work is left)."""
        if self.draining and self.stop_reason is None:
            self.stop(BUDGET_EXHAUSTED)
            raise DontCloseSpider

    def release(self, ticket: Ticket, outcome: Outcome | None) -> None:
        """The call is back: with the API's *outcome*, or ``None`` when it
        never got an answer (a timeout, a lost connection)."""
        self.in_flight -= 1
        if ticket.probe:
            self.probe_out = False
        if outcome is Outcome.CONCURRENCY:
            self._concurrency_exceeded(ticket.in_flight_when_sent)
        elif outcome is Outcome.QUOTA:
            self._quota_exceeded(ticket.probe)
        elif outcome is not None and outcome is not Outcome.AUTH:
            # Any other answer means the account took the call; while paused,
            # only the probe's answer counts (the others left before the 439).
            if ticket.probe:
                self._resume()
            if self.paused_since is None:
                self._grow(ticket.in_flight_when_sent)
        elif ticket.probe:
            self._arm_probe()  # the probe told nothing: another one, as late
        self._wake()

    def _wake(self) -> None:
        """Wake as many waiting calls as there are free places (all of them
        when stopping, so that they can be handed back, and once the budget
        is reached, so that those that start no product are handed back:
        a call woken that does not leave waits again)."""
        if self.stop_reason is not None or self.draining:
            free = len(self.waiters)
        elif self.paused_since is not None:
            free = 1 if self._may_go() else 0
        else:
            free = int(self.limit) - self.in_flight
        while free > 0 and self.waiters:
            self.waiters.popleft().callback(None)
            free -= 1

    # -- concurrency ----------------------------------------------------------

    def _grow(self, used: int) -> None:
        """A call sent with *used* calls in flight succeeded."""
        before = (self.limit, self.ceiling)
        self.rule.succeeded(used)
        if (self.limit, self.ceiling) != before:
            self._publish()

    def _concurrency_exceeded(self, in_flight_when_sent: int) -> None:
        # The call was refused while in_flight_when_sent - 1 others of ours
        # were out: the account has at most that many places.
        if self.rule.refused(in_flight_when_sent):
            logger.info(
                "TMAPI answered 503 with %d calls in flight: at most %d from now on",
                in_flight_when_sent,
                self.ceiling,
            )
        self._publish()

    def _publish(self) -> None:
        self.stats.set_value("tmapi/throttle/limit", int(self.limit))
        if self.ceiling is not None:
            self.stats.set_value("tmapi/throttle/ceiling", self.ceiling)

    # -- 439 ------------------------------------------------------------------

    def _quota_exceeded(self, probe: bool) -> None:
        now = time.monotonic()
        if self.paused_since is None:
            self.paused_since = now
            self.quota_paused_at = now_iso()
            self.probe_interval = self.probe_first
            self.stats.inc_value("tmapi/throttle/pauses")
            logger.warning(
                "TMAPI answered 439 (subscription expired or balance spent): all calls paused; "
                "probing with one call at growing intervals for up to %.0f s (TMAPI_QUOTA_WAIT). Top up to resume.",
                self.quota_wait,
            )
        elif probe:
            self.probe_interval = min(self.probe_interval * 2, self.probe_max)
        else:
            return  # a call sent before the pause: it waits like the others
        if now - self.paused_since >= self.quota_wait:
            logger.error(
                "TMAPI answered 439 for %.0f s: stopping. Top up the balance (or renew the subscription), "
                "then run the same command again; with -s JOBDIR=... it resumes where it stopped",
                now - self.paused_since,
            )
            self.stop(FinishReason.QUOTA_EXHAUSTED)
            return
        self._arm_probe()

    def _arm_probe(self) -> None:
        self.probe_due = False
        self._cancel_probe_timer()
        self.probe_timer = call_later(self.probe_interval, self._probe_due)

    def _probe_due(self) -> None:
        self.probe_timer = None
        self.probe_due = True
        self._wake()

    def _resume(self) -> None:
        assert self.paused_since is not None
        paused = time.monotonic() - self.paused_since
        self._add_paused(paused)
        logger.info("TMAPI answers again after %.0f s of 439: resuming", paused)
        self.paused_since = None
        self.probe_out = self.probe_due = False
        self._cancel_probe_timer()

    def _add_paused(self, seconds: float) -> None:
        total = self.stats.get_value("tmapi/throttle/paused_seconds", 0.0)
        self.stats.set_value("tmapi/throttle/paused_seconds", round(total + seconds, 3))

    def _cancel_probe_timer(self) -> None:
        if self.probe_timer is not None:
            self.probe_timer.cancel()
            self.probe_timer = None

    def _stop_poll(self) -> None:
        if self.shutdown_poll is not None:
            if self.shutdown_poll.running:
                self.shutdown_poll.stop()
            self.shutdown_poll = None

    def spider_opened(self) -> None:
        self.shutdown_poll = looping_call(self._check_engine, "shutdown check", self.stats)
        self.shutdown_poll.start(SHUTDOWN_POLL, now=False)

    def _check_engine(self) -> None:
        """Ctrl-C (or any other close) makes the engine wait for the calls in
        progress, without a signal that reaches us first: look for it, so
        that the calls waiting here are handed back instead of being sent."""
        if engine_closing(self.crawler):
            self.stop(FinishReason.SHUTDOWN)

    # -- stopping -------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Send nothing more; close the spider with *reason* (unless the
        engine is already stopping); hand the waiting calls back."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self._cancel_probe_timer()
        self._stop_poll()
        try:
            engine = self.crawler.engine
        except RuntimeError:  # not crawling: a component on its own
            engine = None
        if engine is not None and engine.running and engine.spider is not None and reason != FinishReason.SHUTDOWN:
            deferred_from_coro(engine.close_spider_async(reason=reason))
        self._wake()

    def spider_closed(self) -> None:
        if self.paused_since is not None:
            self._add_paused(time.monotonic() - self.paused_since)
        self._cancel_probe_timer()
        self._stop_poll()
        self.remember()


class TmapiThrottle:
    """The extension that owns the crawl's gate, of the class
    ``TMAPI_GATE_CLASS`` (the add-on sets the Redis one in distributed mode);
    the download handler and the middleware find it with :func:`gate_of`."""

    def __init__(self, crawler: Crawler):
        gate_cls: type[CallGate] = load_object(config_from_settings(crawler.settings).gate_class)
        self.gate = gate_cls.from_crawler(crawler)
        self.crawler = crawler
        crawler.signals.connect(self._opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _opened(self) -> None:
        guard = guard_of(self.crawler)
        if guard is not None:
            guard.listen(self.gate.stop)  # a file that fails stops the crawl
        tracker = self.crawler.get_extension(LeaseTracker)
        if tracker is not None:  # it commits as many leases as calls may be in flight
            tracker.calls_in_flight = lambda: self.gate.limit


def gate_of(crawler: Crawler) -> CallGate:
    ext = crawler.get_extension(TmapiThrottle)
    if ext is None:
        raise RuntimeError("tmapi_crawler.calls.gate.TmapiThrottle is not enabled: add the TmapiAddon to ADDONS")
    return ext.gate


class BudgetScheduler(Scheduler):
    """Scrapy's own scheduler (the add-on's choice when there is no
    ``JOBDIR`` and no ``REDIS_URL``) that, once the budget is reached, hands
    out only what finishes a started product; the rest is left (there is no
    resume without ``JOBDIR``)."""

    def next_request(self) -> Request | None:
        assert self.crawler is not None  # built from_crawler
        assert self.stats is not None
        gate = gate_of(self.crawler)
        while (request := super().next_request()) is not None:
            if gate.may_hand_out(request):
                return request
            self.stats.inc_value("tmapi/budget/not_sent")
        return None
