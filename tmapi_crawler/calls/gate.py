"""Admission of API calls (docs/behaviour.md, "Throttling").

Every API call passes :meth:`CallGate.acquire` in the download handler, at
the last moment before it is sent, and :meth:`CallGate.release` with the
answer's outcome when it is back, so the count of calls in flight is exact.
The gate decides what leaves and when, from its parts:

* how many calls may be in flight: the adaptive rule
  (:class:`~tmapi_crawler.calls.ceiling.AdaptiveLimit`), started where the
  last crawl of the account ended (:class:`~tmapi_crawler.calls.limits.LimitKeeper`);
* ``TMAPI_MAX_CALLS``: :class:`~tmapi_crawler.calls.budget.CallBudget`;
* the 439 pause and its probes: :class:`~tmapi_crawler.calls.pause.QuotaPause`;
* stopping: a call refused because the crawl is stopping raises
  :class:`CrawlStopping`, and is handed back to the scheduler (so that
  ``JOBDIR`` keeps it for the resume).

The shared gate (:mod:`tmapi_crawler.cluster.gate`) is this gate with the
limit and the pause kept in Redis for every worker.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.core.scheduler import Scheduler
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.misc import load_object
from twisted.internet.defer import Deferred

from tmapi_crawler.api import Outcome
from tmapi_crawler.calls.budget import CallBudget
from tmapi_crawler.calls.ceiling import AdaptiveLimit
from tmapi_crawler.calls.limits import LimitKeeper
from tmapi_crawler.calls.pause import QuotaPause
from tmapi_crawler.compat import engine_closing
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.durable.feeds import guard_of
from tmapi_crawler.durable.leases import LeaseTracker
from tmapi_crawler.loops import looping_call
from tmapi_crawler.reasons import FinishReason

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Calls in flight at the start when TMAPI_CONCURRENCY is not set.
START = 4
#: The most calls in flight when TMAPI_CONCURRENCY is not set.
DEFAULT_CAP = 64
#: Seconds between two checks that the engine is not closing.
SHUTDOWN_POLL = 0.5
#: Calls let through within this many seconds of each other leave as one
#: burst, over several connections, and may reach the account in any order.
BURST_WINDOW = 0.002


class CrawlStopping(Exception):
    """The crawl is stopping (bad token, no balance, budget, shutdown): the
    call was not sent."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"not sent: the crawl is stopping ({reason})")


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
        self.rule = AdaptiveLimit(cap=cap, start=min(start, cap), limit=float(min(start, cap)))
        self.budget = CallBudget(max_calls, crawler.stats)
        self.pause = QuotaPause(
            crawler.stats, wait=quota_wait, probe_first=probe_first, probe_max=probe_max, on_probe_due=self.wake
        )
        #: Where the limit found is kept for the next crawl (:meth:`recall`).
        self.keeper: LimitKeeper | None = None
        self.in_flight = 0
        self.burst: Burst | None = None
        self.waiters: deque[Deferred[None]] = deque()
        self.stop_reason: str | None = None
        self.shutdown_poll: Any = None
        self.publish()

    # -- the adaptive limit (tmapi_crawler.calls.ceiling) ----------------------------

    @property
    def start(self) -> int:
        return self.rule.start

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

    def recall(self) -> None:
        """Start where the last crawl of this account ended
        (:class:`~tmapi_crawler.calls.limits.LimitKeeper`)."""
        self.keeper = LimitKeeper.recall(self.crawler.settings, self.rule, self.stats)
        self.publish()

    def remember(self) -> None:
        """Keep what this crawl found, for the next (when the crawl sent calls)."""
        if self.keeper is not None:
            self.keeper.keep(self.rule, self.pause.began_at)

    def publish(self) -> None:
        """The limit (and the ceiling) in the stats."""
        self.stats.set_value("tmapi/throttle/limit", int(self.limit))
        if self.ceiling is not None:
            self.stats.set_value("tmapi/throttle/ceiling", self.ceiling)

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
        if self.pause.paused:
            return self.pause.may_probe()
        return self.in_flight < int(self.limit)

    async def acquire(self, request: Request | None = None) -> Ticket:
        """Wait for a free place for *request*.  Raises
        :class:`CrawlStopping` when the call must not be sent."""
        # Once the budget is reached, a call that would start a product
        # leaves at once (handed back), without waiting for a place.
        while (
            self.stop_reason is None
            and not self._may_go()
            and not (self.budget.draining and not self.budget.fits(request))
        ):
            waiter: Deferred[None] = Deferred()
            self.waiters.append(waiter)
            await maybe_deferred_to_future(waiter)
        self.check_sendable(request)
        probe = self.pause.paused
        if probe:
            logger.info("Probing whether TMAPI answers again (paused for %.0f s)", self.pause.probe_sent())
        self.in_flight += 1
        self.budget.count(request)
        return Ticket(self.in_flight, probe, self.join_burst(self.in_flight))

    def join_burst(self, in_flight: int) -> Burst:
        """The burst a call let through now leaves in, *in_flight* counted."""
        now = time.monotonic()
        if self.burst is None or now - self.burst.started > BURST_WINDOW:
            self.burst = Burst(now)
        self.burst.peak = max(self.burst.peak, in_flight)
        return self.burst

    def check_sendable(self, request: Request | None = None) -> None:
        """Raise :class:`CrawlStopping` when the crawl is stopping, or when
        the budget has no room for *request* (no new product then)."""
        if self.stop_reason is not None:
            raise CrawlStopping(self.stop_reason)
        if not self.budget.fits(request):
            if self.budget.reach():
                self.wake()
            raise CrawlStopping(FinishReason.BUDGET_EXHAUSTED)

    def spider_idle(self) -> None:
        """Nothing left to finish once the budget was reached: stop with
        its finish reason (not "finished": work is left)."""
        if self.budget.draining and self.stop_reason is None:
            self.stop(FinishReason.BUDGET_EXHAUSTED)
            raise DontCloseSpider

    def release(self, ticket: Ticket, outcome: Outcome | None) -> None:
        """The call is back: with the API's *outcome*, or ``None`` when it
        never got an answer (a timeout, a lost connection)."""
        self.in_flight -= 1
        if ticket.probe:
            self.pause.probe_back()
        if outcome is Outcome.CONCURRENCY:
            self._concurrency_exceeded(ticket.in_flight_when_sent)
        elif outcome is Outcome.QUOTA:
            self._quota_exceeded(ticket.probe)
        elif outcome is not None and outcome is not Outcome.AUTH:
            # Any other answer means the account took the call; while paused,
            # only the probe's answer counts (the others left before the 439).
            if ticket.probe:
                logger.info("TMAPI answers again after %.0f s of 439: resuming", self.pause.end())
            if not self.pause.paused:
                self._grow(ticket.in_flight_when_sent)
        elif ticket.probe:
            self.pause.arm()  # the probe told nothing: another one, as late
        self.wake()

    def wake(self) -> None:
        """Wake as many waiting calls as there are free places (all of them
        when stopping, so that they can be handed back, and once the budget
        is reached, so that those that start no product are handed back:
        a call woken that does not leave waits again)."""
        free = len(self.waiters) if self.stop_reason is not None or self.budget.draining else self.free_places()
        while free > 0 and self.waiters:
            self.waiters.popleft().callback(None)
            free -= 1

    def free_places(self) -> int:
        """How many waiting calls may leave now (a probe while paused)."""
        if self.pause.paused:
            return 1 if self._may_go() else 0
        return int(self.limit) - self.in_flight

    # -- concurrency ----------------------------------------------------------

    def _grow(self, used: int) -> None:
        """A call sent with *used* calls in flight succeeded."""
        before = (self.limit, self.ceiling)
        self.rule.succeeded(used)
        if (self.limit, self.ceiling) != before:
            self.publish()

    def _concurrency_exceeded(self, in_flight_when_sent: int) -> None:
        # The call was refused while in_flight_when_sent - 1 others of ours
        # were out: the account has at most that many places.
        if self.rule.refused(in_flight_when_sent):
            logger.info(
                "TMAPI answered 503 with %d calls in flight: at most %d from now on",
                in_flight_when_sent,
                self.ceiling,
            )
        self.publish()

    # -- 439 (tmapi_crawler.calls.pause) ---------------------------------------

    def _quota_exceeded(self, probe: bool) -> None:
        if self.pause.begin():
            logger.warning(
                "TMAPI answered 439 (subscription expired or balance spent): all calls paused; "
                "probing with one call at growing intervals for up to %.0f s (TMAPI_QUOTA_WAIT). Top up to resume.",
                self.pause.wait,
            )
        elif probe:
            self.pause.back_off()
        else:
            return  # a call sent before the pause: it waits like the others
        if self.pause.expired():
            logger.error(
                "TMAPI answered 439 for %.0f s: stopping. Top up the balance (or renew the subscription), "
                "then run the same command again; with -s JOBDIR=... it resumes where it stopped",
                self.pause.lasted(),
            )
            self.stop(FinishReason.QUOTA_EXHAUSTED)
            return
        self.pause.arm()

    # -- stopping -------------------------------------------------------------

    def spider_opened(self) -> None:
        self.shutdown_poll = looping_call(self._check_engine, "shutdown check", self.stats)
        self.shutdown_poll.start(SHUTDOWN_POLL, now=False)

    def _check_engine(self) -> None:
        """Ctrl-C (or any other close) makes the engine wait for the calls in
        progress, without a signal that reaches us first: look for it, so
        that the calls waiting here are handed back instead of being sent."""
        if engine_closing(self.crawler):
            self.stop(FinishReason.SHUTDOWN)

    def _stop_poll(self) -> None:
        if self.shutdown_poll is not None:
            if self.shutdown_poll.running:
                self.shutdown_poll.stop()
            self.shutdown_poll = None

    def stop(self, reason: str) -> None:
        """Send nothing more; close the spider with *reason* (unless the
        engine is already stopping); hand the waiting calls back."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.pause.cancel()
        self._stop_poll()
        try:
            engine = self.crawler.engine
        except RuntimeError:  # not crawling: a component on its own
            engine = None
        if engine is not None and engine.running and engine.spider is not None and reason != FinishReason.SHUTDOWN:
            deferred_from_coro(engine.close_spider_async(reason=reason))
        self.wake()

    def spider_closed(self) -> None:
        self.pause.close()
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
            if gate.budget.may_hand_out(request):
                return request
            self.stats.inc_value("tmapi/budget/not_sent")
        return None
