"""The refresh decision: which calls the catalog store answers, and which
stored products a crawl fetches again (docs/catalog.md, "Freshness per
call").  A detail is fetched when the product is new, stored in another
language or its listing entry changed; a product whose entry looks unchanged
is a candidate of the refresh planner (:mod:`.freshness`), which spends the
budget by value (or, with ``TMAPI_REFRESH_POLICY=age``, each once its
jittered ``TMAPI_DETAIL_MAX_AGE`` is past)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmapi_crawler.store.changes import listing_signature
from tmapi_crawler.store.freshness import RefreshPlanner
from tmapi_crawler.store.watch import read_watch

if TYPE_CHECKING:
    from datetime import datetime

    from scrapy import Request
    from scrapy.statscollectors import StatsCollector

    from tmapi_crawler.config import TmapiConfig
    from tmapi_crawler.store.lookup import Stored

logger = logging.getLogger(__name__)

#: Products remembered at most as having no description to give (about the
#: descriptions in flight).
DESC_DUE_MAX = 10_000


def age_share(item_id: int) -> float:
    """A product's share of ``TMAPI_DETAIL_MAX_AGE`` (and of the description's),
    from 0.5 to 1, the same on every run and every worker (a hash of its id):
    the details a first crawl fetched together are fetched again over the
    second half of the period, not all on one day."""
    return 0.5 + 0.5 * ((item_id * 2654435761) % 2**32) / 2**32


class RefreshDecision:
    """The decision for one crawl (see the module's docstring)."""

    def __init__(self, config: TmapiConfig, stats: StatsCollector):
        self.config = config
        self.stats = stats
        #: Products whose description the store cannot give (found when their
        #: detail was looked up): their description call needs no lookup.
        self._desc_due: set[int] = set()
        #: The products refreshed by the planner (their changes that matter are "caught").
        self.refreshing: set[int] = set()
        #: Which stored products this crawl refreshes (tmapi_crawler.store.freshness).
        self.planner = RefreshPlanner(
            budget=config.refresh_budget,
            policy=config.refresh_policy,
            max_age=config.detail_max_age,
            watch=read_watch(Path(config.watch)) if config.watch else frozenset(),
            watch_max_age=config.watch_max_age,
        )

    def fresh_detail(
        self, stored: Stored | None, language: str | None, listing: dict[str, Any] | None, now: datetime
    ) -> str | None:
        """``None`` when the stored detail can be used, else why it cannot:
        ``new`` (not stored), ``language`` (stored in another one),
        ``listing`` (the listing entry's title or price fields differ from
        the stored entry's), ``age`` (older than ``TMAPI_DETAIL_MAX_AGE``)."""
        if stored is None:
            return "new"
        if language is not None and language != stored.language:
            return "language"
        if listing is not None and listing_signature(listing) != stored.listing_sig:
            return "listing"
        if listing is not None and self.config.refresh_policy != "age":
            return None  # a candidate: the refresh planner decides (StoreSpiderMiddleware)
        if not self._young(stored.detail_age(now), self.config.detail_max_age, stored.item_id):
            return "age"
        return None

    def fresh_desc(self, stored: Stored | None, now: datetime) -> bool:
        """Whether the stored description can be used."""
        return (
            stored is not None
            and stored.description is not None
            and self._young(stored.desc_age(now), self.config.desc_max_age, stored.item_id)
        )

    def note_detail_fetch(self, request: Request, stored: Stored | None, reason: str, now: datetime) -> None:
        """*request*'s detail is to be fetched (for *reason*): counted under
        ``tmapi/store/detail_fetched/<reason>``, and noted when the store has
        no description to give for it (:meth:`pop_desc_due`)."""
        self.stats.inc_value(f"tmapi/store/detail_fetched/{reason}")
        if request.cb_kwargs.get("opts", {}).get("follow") == "detail+desc" and not self.fresh_desc(stored, now):
            if len(self._desc_due) >= DESC_DUE_MAX:
                self._desc_due.clear()  # details whose description never came (failed): looked up again
            self._desc_due.add(request.cb_kwargs["item_id"])

    def pop_desc_due(self, item_id: int) -> bool:
        """Whether *item_id*'s detail lookup found no description to give;
        the note is taken away as it is read (the description's call asks once)."""
        if item_id in self._desc_due:
            self._desc_due.discard(item_id)
            return True
        return False

    @staticmethod
    def _young(age: float | None, most: float, item_id: int) -> bool:
        """Whether a stored answer of this *age* is still good: under its
        product's share of the max age, between half of it and all of it
        (:func:`age_share`), so that products fetched together come due on
        different days."""
        return age is not None and most > 0 and age <= most * age_share(item_id)

    def publish(self) -> None:
        """What the planner spent and bought, in the stats (the summary's
        line, the crawls table); one warning when watched products waited."""
        planner, stats = self.planner, self.stats
        if self.config.refresh_policy == "age":
            # The age rule of earlier versions: what it spent, for comparison.
            aged = int(stats.get_value("tmapi/store/detail_fetched/age", 0) or 0)
            stats.set_value("tmapi/refresh/spent", aged)
            stats.set_value("tmapi/refresh/budget", aged)
            return
        if not (planner.eligible or planner.watch or planner.spent_before):
            return  # a resume whose listing pages were all read before still reports what was left
        stats.set_value("tmapi/refresh/budget", planner.budget)
        stats.set_value("tmapi/refresh/spent", planner.spent)
        stats.set_value("tmapi/refresh/watched", planner.watched)
        stats.set_value("tmapi/refresh/eligible", planner.eligible)
        if planner.estimated_current is not None:
            stats.set_value("tmapi/refresh/estimated_current", round(planner.estimated_current, 4))
        if planner.waited:
            stats.set_value("tmapi/refresh/watched_waited", planner.waited)
            logger.warning(
                "%d watched products were due but waited: the refresh budget (%d calls) did not hold them; "
                "TMAPI_REFRESH_BUDGET=%d would",
                planner.waited,
                planner.budget,
                planner.spent + planner.waited,
            )
