"""The 439 pause (docs/behaviour.md, "Throttling"): the account's balance is
spent or its subscription expired, so every call waits; one call at a time
probes, at growing intervals, whether TMAPI answers again, and the crawl
stops after ``TMAPI_QUOTA_WAIT`` seconds of it.

:class:`QuotaPause` keeps the pause's state and its probe timer; the gate
decides from it what may leave (one probe when one is due) and stops the
crawl when the pause has lasted too long.  The shared gate keeps the
cluster's pause in Redis and uses this one for what its worker sees.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from scrapy.utils.asyncio import call_later

from tmapi_crawler.records import now_iso

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.statscollectors import StatsCollector


class QuotaPause:
    def __init__(
        self,
        stats: StatsCollector,
        *,
        wait: float,
        probe_first: float,
        probe_max: float,
        on_probe_due: Callable[[], None],
    ):
        self.stats = stats
        #: TMAPI_QUOTA_WAIT, TMAPI_QUOTA_PROBE, TMAPI_QUOTA_PROBE_MAX.
        self.wait = wait
        self.probe_first = probe_first
        self.probe_max = probe_max
        #: Called when a probe may leave (the gate wakes a waiting call).
        self.on_probe_due = on_probe_due
        #: When the pause began (monotonic), ``None`` while not paused.
        self.since: float | None = None
        #: When this crawl's last pause began (remembered for the next crawl).
        self.began_at: str | None = None
        #: Seconds before the next probe.
        self.interval = probe_first
        self.probe_due = False
        self.probe_out = False
        self._timer: Any = None

    @property
    def paused(self) -> bool:
        return self.since is not None

    def may_probe(self) -> bool:
        """Whether a probe may leave now (one due, none out)."""
        return self.probe_due and not self.probe_out

    def probe_sent(self) -> float:
        """A probe left; how long the pause has lasted."""
        self.probe_out, self.probe_due = True, False
        return self.lasted()

    def probe_back(self) -> None:
        """The probe's answer (or its failure) is back."""
        self.probe_out = False

    def begin(self) -> bool:
        """A 439: the pause begins, ``True``, unless it had begun."""
        if self.since is not None:
            return False
        self.since = time.monotonic()
        self.began_at = now_iso()
        self.interval = self.probe_first
        self.stats.inc_value("tmapi/throttle/pauses")
        return True

    def lasted(self) -> float:
        """Seconds since the pause began (0 when not paused)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def expired(self) -> bool:
        """Whether the pause has lasted ``TMAPI_QUOTA_WAIT``: time to stop."""
        return self.since is not None and self.lasted() >= self.wait

    def back_off(self) -> None:
        """A probe met a 439 again: the next one waits twice as long."""
        self.interval = min(self.interval * 2, self.probe_max)

    def arm(self) -> None:
        """The next probe, :attr:`interval` seconds from now."""
        self.probe_due = False
        self._cancel_timer()
        self._timer = call_later(self.interval, self._due)

    def _due(self) -> None:
        self._timer = None
        self.probe_due = True
        self.on_probe_due()

    def end(self) -> float:
        """TMAPI answers again: the pause is over; how long it lasted
        (added to ``tmapi/throttle/paused_seconds``)."""
        lasted = self.lasted()
        self._add_paused(lasted)
        self.since = None
        self.probe_out = self.probe_due = False
        self._cancel_timer()
        return lasted

    def close(self) -> None:
        """The crawl is over: no probe, and a pause still on counted."""
        if self.since is not None:
            self._add_paused(self.lasted())
            self.since = None
        self._cancel_timer()

    def cancel(self) -> None:
        """The crawl stops: no probe will leave."""
        self._cancel_timer()

    def _add_paused(self, seconds: float) -> None:
        total = self.stats.get_value("tmapi/throttle/paused_seconds", 0.0)
        self.stats.set_value("tmapi/throttle/paused_seconds", round(total + seconds, 3))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
