"""The adaptive rule of the call gate: how many calls may be in flight, from
the answers (docs/behaviour.md, "Throttling").

* **Slow start**: one more call per success, doubling every round trip, but
  never beyond twice the most calls a success was sent with.
* **The ceiling**: a 503 sent with *n* calls in flight proves the account
  has at most *n - 1* places; the limit stays there.
* **Probing**: a 503 is free and answered at once, so the ceiling is tried
  one higher after :data:`PROBE_FIRST` round trips at it without a 503; a
  probe that holds for a round trip keeps the new ceiling (and the next is
  tried as soon); one that meets a 503 makes the wait before the next
  :data:`PROBE_BACKOFF` times longer, up to :data:`PROBE_MOST` round trips,
  so that a crawl of *n* calls at a ceiling *c* pays about
  log4(n / 2c) refused probes (3 for a 500-product shop at 16).  A crawl that starts from a remembered
  ceiling finds within seconds whether one more call fits; the ceiling it
  ends with is the one that filled the account, counted as the crawler
  counts (from a call's send to its answer's handling), which is what the
  next crawl starts from.

:class:`AdaptiveLimit` is the reference: the shared gate's Lua script
(:data:`tmapi_crawler.cluster.lua.RELEASE`) applies the same rule to the
state it keeps in Redis, and ``tests/test_throttle.py`` runs the same
answers through both.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Round trips at the ceiling without a 503 before one call more is tried.
PROBE_FIRST = 2
#: How much longer the wait for the next probe is after one that failed.
PROBE_BACKOFF = 4
#: The longest wait between two probes, in round trips at the ceiling.
PROBE_MOST = 64


@dataclass(slots=True)
class AdaptiveLimit:
    cap: int
    start: int
    limit: float
    ceiling: int | None = None
    #: The most calls in flight that a successful call was sent with.
    proven: int = 0
    #: Successes at the ceiling since it was last set.
    successes: int = 0
    #: Round trips at the ceiling before the next probe.
    probe_rounds: int = PROBE_FIRST
    #: The ceiling a probe raised, until it held for a round trip (or met a 503).
    probing: int | None = None

    def succeeded(self, sent_with: int) -> None:
        """A call sent with *sent_with* calls in flight succeeded."""
        if self.ceiling is None:
            self.proven = max(self.proven, sent_with)
            self.limit = min(float(self.cap), self.limit + 1, 2.0 * max(self.proven, self.start))
            return
        self.successes += 1
        if self.probing is not None and self.successes >= self.ceiling:
            self.probing = None  # a round trip at the new ceiling without a 503: it holds
            self.probe_rounds = PROBE_FIRST
        if self.successes >= self.probe_rounds * max(self.ceiling, 1) and self.ceiling < self.cap:
            self.ceiling += 1
            self.limit = float(self.ceiling)
            self.successes = 0
            self.probing = self.ceiling

    def refused(self, sent_with: int) -> bool:
        """A 503 for a call sent with *sent_with* calls in flight; whether
        the ceiling changed."""
        new = max(1, min(int(self.limit), sent_with - 1))
        if self.probing is not None and new < self.probing:
            self.probe_rounds = min(self.probe_rounds * PROBE_BACKOFF, PROBE_MOST)  # the probe failed
            self.probing = None
        changed = new != self.ceiling
        self.limit = float(new)
        self.ceiling = new
        self.successes = 0
        return changed
