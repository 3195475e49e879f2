"""Leases: a request taken from a durable queue is done only when all it led
to is safe.

A scheduler whose queue survives the process (Redis in distributed mode)
hands each request out under a *lease* and acknowledges it only when

* the records its callback (or errback) yielded went through the pipelines
  and the feed exports, and the feed files were flushed and fsynced (acks
  are grouped: one fsync per commit);
* the requests it yielded are in the queue;
* or it was replaced by a request of its own (a retry, a call sent again
  after 503 or 439, a call handed back when the crawl stops), which the
  queue stores in the same step that ends the lease.

:class:`LeaseTracker` counts, per lease, what is not yet safe; the scheduler
owns the queue and the acknowledgement.  A process killed at any moment
therefore loses nothing: a lease not acknowledged is delivered again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.exceptions import DropItem
from scrapy.utils.asyncio import call_later

from tmapi_crawler.compat import sync_feeds
from tmapi_crawler.durable.feeds import guard_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Self

    from scrapy.crawler import Crawler

    from tmapi_crawler.durable.feeds import FeedGuard

#: meta key: the id of the lease a request was taken under.
LEASE_META = "tmapi_lease"
#: meta key: the lease of the request whose callback yielded this request.
PARENT_META = "tmapi_parent"


class NotSafe(DropItem):
    """Raised by a pipeline for a record that did not reach where it must
    (the catalog store failed): the record is dropped, and the request it
    came from stays in hand, never acknowledged, so that a resumed crawl
    does it again."""


@dataclass(slots=True)
class _Lease:
    """A request in hand: how many of its outputs are not yet safe, whether
    its callback has finished yielding them, and how many of its records
    are already in the feed."""

    pending: int = 0
    done_yielding: bool = False
    written: int = 0
    #: A record of it was not safe (:class:`NotSafe`): never acknowledged.
    unsafe: bool = False


class LeaseTracker:
    """The extension that knows which leased requests are done.

    Off (every call a no-op) until a leasing scheduler calls :meth:`enable`.
    Spiders pass their callbacks' output through :meth:`track`; the
    scheduler calls :meth:`hold` for each request it hands out,
    :meth:`unlink` for each request it is given, and :meth:`commit` now and
    then."""

    #: Acknowledges only what the files took (FeedGuard.item_failed).
    reads_feed_outcome = True

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        #: The calls allowed in flight now: set by the call gate when the
        #: spider opens (tmapi_crawler.calls.gate.TmapiThrottle).
        self.calls_in_flight: Callable[[], float] = lambda: 1
        self.enabled = False
        self.held: dict[str, _Lease] = {}
        self.safe: list[str] = []  # leases whose outputs await the next commit
        self._commit_now: Callable[[], Any] | None = None
        self._commit_due = False
        #: A file failed to take records: nothing is acknowledged any more.
        self.frozen = False
        self.guard: FeedGuard | None = None
        crawler.signals.connect(self._opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _opened(self) -> None:
        self.guard = guard_of(self.crawler)
        if self.guard is not None:
            self.guard.listen(lambda _reason: self.freeze())

    def enable(self, commit: Callable[[], Any] | None = None) -> None:
        """Requests may be delivered more than once from now on (a lease
        that was not acknowledged comes back).  *commit*, the scheduler's,
        is called as soon as as many leases are safe as the gate lets calls
        be in flight, besides the scheduler's own timer: what a crash bills
        twice stays within about twice the calls in flight, whatever the
        rate."""
        self.enabled = True
        self._commit_now = commit
        # Told of each record only now: without a leasing scheduler there is
        # nothing to count (a receiver less for every record); and connected
        # after the feed exports, whose receiver sets FeedGuard.item_failed
        # for the record (tmapi_crawler.durable.feeds.GuardedFeedExporter).
        signals_ = self.crawler.signals
        signals_.connect(self._item_settled, signal=signals.item_scraped)
        signals_.connect(self._item_dropped, signal=signals.item_dropped)
        signals_.connect(self._item_dropped, signal=signals.item_error)

    def _commit_soon(self) -> None:
        self._commit_due = False
        if self._commit_now is not None and self.safe:
            self._commit_now()

    # -- the scheduler's side ---------------------------------------------------

    def hold(self, lease: str, request: Request) -> None:
        request.meta[LEASE_META] = lease
        self.held[lease] = _Lease()

    def detach(self, request: Request) -> tuple[str | None, str | None]:
        """Take the lease marks off a request given to the scheduler, and
        say what they were, ``(parent, replaces)``: the
        lease whose callback yielded it, and the lease it takes the place of
        (a retry of a leased request)."""
        return request.meta.pop(PARENT_META, None), request.meta.pop(LEASE_META, None)

    def forget(self, lease: str) -> None:
        """*lease* ended without an acknowledgement (it was replaced)."""
        self.held.pop(lease, None)

    def settle(self, lease: str) -> None:
        """One output of *lease* is safe."""
        state = self.held.get(lease)
        if state is not None:
            state.pending -= 1
            self._check(lease, state)

    def commit(self, ack: Callable[[list[str]], Any]) -> int:
        """Make the feeds durable, then acknowledge (with *ack*) the leases
        whose records they hold; returns how many."""
        if not self.safe or self.frozen:
            return 0
        sync_feeds(self.crawler)
        if self.frozen:  # a feed failed to sync
            return 0
        # Forgotten only once acknowledged: an *ack* that raises (Redis
        # gone) leaves them for the next commit.
        count = len(self.safe)
        ack(self.safe[:count])
        del self.safe[:count]
        return count

    def freeze(self) -> None:
        """A feed lost records (:mod:`tmapi_crawler.durable.feeds`): acknowledge
        nothing more, so that what was written since the last commit is
        done again (and, with ``JOBDIR``, cut from the feed) on resume."""
        self.frozen = True

    def unfinished(self) -> list[str]:
        """The leases still in hand, forgotten here (the scheduler gives them
        back to its queue); when a feed failed, those done but never
        acknowledged too (their records are not all in the feed)."""
        leases = list(self.held)
        self.held.clear()
        if self.frozen:
            leases += self.safe
            self.safe.clear()
        return leases

    @property
    def partly_written(self) -> bool:
        """Some lease in hand has records in the feed already: the feed's
        end is not a point where every record in it belongs to a lease that
        can be acknowledged."""
        return any(state.written for state in self.held.values())

    @property
    def busy(self) -> bool:
        """Something taken here is not acknowledged yet."""
        return bool(self.held or self.safe)

    # -- the spider's side ------------------------------------------------------

    def track(self, request: Request, output: Iterable[Any]) -> Iterable[Any]:
        """A callback's *output*, counted as what must be safe before the
        lease of *request* is acknowledged (as it is, for a request that was
        not leased)."""
        lease = request.meta.get(LEASE_META)
        state = self.held.get(lease) if lease else None
        if lease is None or state is None:
            return output
        return self._tracked(lease, state, output)

    def _tracked(self, lease: str, state: _Lease, output: Iterable[Any]) -> Iterator[Any]:
        try:
            for out in output:
                if isinstance(out, Request):
                    out.meta[PARENT_META] = lease
                if out is not None:
                    state.pending += 1
                yield out
        finally:
            state.done_yielding = True
            self._check(lease, state)

    def replace(self, request: Request, outputs: list[Any]) -> list[Any]:
        """*request*, an output of a tracked callback that is not scheduled
        (a spider middleware answered it), stands for *outputs* instead: they
        are what the lease waits for."""
        lease = request.meta.pop(PARENT_META, None)
        state = self.held.get(lease) if lease else None
        if lease is None or state is None:
            return outputs
        for out in outputs:
            if isinstance(out, Request):
                out.meta[PARENT_META] = lease
        state.pending += sum(out is not None for out in outputs) - 1
        self._check(lease, state)
        return outputs

    def _lease_of(self, response: Any) -> tuple[str | None, _Lease | None]:
        # For an errback's records, Scrapy passes the Failure as "response";
        # Scrapy sets its .request.
        request = getattr(response, "request", None)
        lease = request.meta.get(LEASE_META) if request is not None else None
        return lease, self.held.get(lease) if lease else None

    def _item_settled(self, item: Any, response: Any, **kwargs: Any) -> None:
        if self.guard is not None and self.guard.item_failed:
            return  # not in the feed: its lease stays in hand, never acknowledged
        lease, state = self._lease_of(response)
        if lease and state is not None:
            state.written += 1
            self.settle(lease)

    def _item_dropped(self, response: Any, exception: BaseException, **kwargs: Any) -> None:
        """A record that went nowhere: settled, unless it was dropped as
        :class:`NotSafe`, which keeps its lease from being acknowledged."""
        lease, state = self._lease_of(response)
        if lease and state is not None:
            if isinstance(exception, NotSafe):
                state.unsafe = True
            self.settle(lease)

    def _check(self, lease: str, state: _Lease) -> None:
        if state.unsafe:
            return  # stays in hand: given back when the crawl stops
        if state.done_yielding and state.pending <= 0:
            del self.held[lease]
            self.safe.append(lease)
            if self._commit_now is not None and not self._commit_due and len(self.safe) >= self._batch():
                self._commit_due = True
                call_later(0, self._commit_soon)  # not inside the signal or the callback that got here

    def _batch(self) -> int:
        """How many safe leases make a commit due: the calls the gate lets
        be in flight now (:attr:`calls_in_flight`, which the gate hands the
        tracker: durable/ sits below calls/ and imports nothing of it)."""
        return max(1, int(self.calls_in_flight()))


def tracker_of(crawler: Crawler) -> LeaseTracker:
    tracker = crawler.get_extension(LeaseTracker)
    if tracker is None:
        raise RuntimeError("tmapi_crawler.durable.leases.LeaseTracker is not enabled: add the TmapiAddon to ADDONS")
    return tracker
