"""How often a product changes in a way that matters, from its own history
(docs/catalog.md, "Freshness per call").

A change that matters: a SKU sold out or back in stock, a SKU's price, SKUs
added or removed (a stock count that falls without reaching 0 moves with
every sale and is not one).  The store fetches a product's detail now and
then, at intervals that vary; each fetch says only *whether* such a change
happened since the one before, not how many.  Treating each "changed" as one
change underestimates the rate of a product fetched rarely; this module uses
the estimator of Cho and Garcia-Molina ("Estimating frequency of change",
ACM TOIT 2003) for irregular intervals: with changes a Poisson process of
rate ``r``, an interval of ``t`` seconds saw a change with probability
``1 - exp(-r t)``, and the rate is the one that makes the history most
likely.  A product with little history is shrunk toward its shop's rate (a
Gamma prior worth :data:`PRIOR_SECONDS` of observation at that rate), so
that a new product starts where its shop is and its own history takes over
as it grows.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from tmapi_crawler.store.changes import Before, State

#: The change kinds that matter (store.changes' kinds; ``stock`` only when a
#: SKU's stock reaches 0 or leaves it: :func:`matters`).
MATTERING = frozenset({"price", "sold_out", "back_in_stock", "sku_added", "sku_removed"})
#: How much observation the shop's rate is worth to a product's estimate,
#: in TMAPI_DETAIL_MAX_AGE (a week: three and a half days).
PRIOR_AGES = 0.5
#: Where no shop has a history yet: a change that matters a max age.
DEFAULT_RATE = 1 / (7 * 86400.0)
#: The intervals of a product's history that are kept (the newest).
HISTORY = 16
#: The range a rate is looked for in, in changes per max age: from one in a
#: thousand max ages to a thousand a max age.
RATE_RANGE = (1e-3, 1e3)


def matters(changes: Iterable[dict[str, Any]]) -> bool:
    """Whether *changes* (one product's change records of one fetch) hold a
    change that matters."""
    for change in changes:
        kind = change.get("change")
        if kind in MATTERING:
            return True
        if kind == "stock" and (_zero(change.get("old")) or _zero(change.get("new"))):
            return True
    return False


def _zero(value: Any) -> bool:
    try:
        return value is not None and int(value) == 0
    except (TypeError, ValueError):
        return False


def estimate_rate(
    history: Sequence[tuple[float, bool]],
    prior_rate: float = DEFAULT_RATE,
    prior_seconds: float = PRIOR_AGES * 7 * 86400.0,
    max_age: float = 7 * 86400.0,
) -> float:
    """The rate (changes that matter a second) that makes *history* most
    likely, ``(interval in seconds, whether a change was seen)`` each, with a
    Gamma prior of mean *prior_rate* worth *prior_seconds* of observation:
    the root of

        sum over changed intervals of t e^(-r t) / (1 - e^(-r t))
          - sum over unchanged intervals of t  + (a - 1) / r - b  =  0

    with ``a = 1 + prior_rate * prior_seconds`` and ``b = prior_seconds``
    (the derivative of the log posterior, which falls as ``r`` grows: found
    by bisection on ``log r``)."""
    seen = [(t, changed) for t, changed in history if t > 0]
    alpha, beta = 1 + prior_rate * prior_seconds, prior_seconds
    if not seen:
        return prior_rate
    unchanged = sum(t for t, changed in seen if not changed)
    changed = [t for t, c in seen if c]

    def slope(rate: float) -> float:
        total = (alpha - 1) / rate - beta - unchanged
        for t in changed:
            x = rate * t
            total += t / math.expm1(x) if x < 700 else 0.0  # t e^-x / (1 - e^-x)
        return total

    scale = max(max_age, 1.0)
    low, high = math.log(RATE_RANGE[0] / scale), math.log(RATE_RANGE[1] / scale)
    if slope(math.exp(low)) <= 0:
        return math.exp(low)
    if slope(math.exp(high)) >= 0:
        return math.exp(high)
    for _ in range(40):
        middle = (low + high) / 2
        if slope(math.exp(middle)) > 0:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def stale_probability(rate: float, age: float) -> float:
    """The chance that a product of *rate* changed in a way that matters in
    the *age* seconds since it was fetched."""
    return -math.expm1(-rate * max(age, 0.0))


def parse_history(text: str | None) -> list[tuple[float, bool]]:
    """A history as the store keeps it: ``"3600:1 86400:0 ..."``."""
    found = []
    for part in (text or "").split():
        seconds, _, changed = part.partition(":")
        try:
            found.append((float(seconds), changed == "1"))
        except ValueError:
            continue
    return found


def format_history(history: Sequence[tuple[float, bool]]) -> str:
    return " ".join(f"{t:.0f}:{int(changed)}" for t, changed in history[-HISTORY:])


def _count(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(float(value))
    except (TypeError, ValueError):
        return None


def listing_counters(listing: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """``(orders, units)`` a listing entry counts for its product: a shop
    listing's ``sale_info.orders_count_30days`` and ``sale_quantity_30days``;
    a category listing's ``sales_count`` (units, which stand for orders too)."""
    if not isinstance(listing, dict):
        return None, None
    sale = listing.get("sale_info")
    if isinstance(sale, dict) and ("orders_count_30days" in sale or "sale_quantity_30days" in sale):
        return _count(sale.get("orders_count_30days")), _count(sale.get("sale_quantity_30days"))
    units = _count(listing.get("sales_count"))
    return units, units


def _seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


@dataclass(slots=True)
class _Row:
    item_id: int
    shop: str | None
    orders: int | None
    units: int | None
    min_stock: int | None
    history: list[tuple[float, bool]]
    old_rate: float | None
    fetched_again: bool


class RefreshColumns(NamedTuple):
    """A fetched product's columns of the refresh policy, written with its
    row (the INSERT of :class:`tmapi_crawler.store.write.ProductRow`)."""

    refresh_history: str | None
    refresh_rate: float | None
    orders_seen: int | None
    units_seen: int | None
    min_stock: int | None


class RefreshRows:
    """What a batch of fetched products tells the refresh policy, written
    with the batch (:func:`tmapi_crawler.store.write.write`): each product's
    :class:`RefreshColumns` in its row, and one statement for their shops'
    rates."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []

    def add(
        self, record: dict[str, Any], state: State, shop: str | None, before: Before | None, changes: list[Any]
    ) -> None:
        """*record* was fetched (*state* what it is now, *before* what the
        store had, *changes* what the diff found)."""
        orders, units = listing_counters(record.get("listing"))
        stocks = [sku.stock for sku in state.skus.values() if sku.stock]
        history: list[tuple[float, bool]] = []
        old_rate = None
        if before is not None:
            history = parse_history(before.refresh_history)
            interval = _seconds(str(record["detail_fetched_at"]), before.detail_fetched_at)
            history.append((interval, matters(changes)))
            old_rate = before.refresh_rate
        self.rows.append(
            _Row(int(record["item_id"]), shop, orders, units, min(stocks) if stocks else None, history, old_rate,
                 before is not None)
        )  # fmt: skip

    def write_rates(self, cur: Any, dialect: Any, result: Any, max_age: float) -> list[RefreshColumns]:
        """Write the shops' rates; return each row's columns, in the order
        the rows were added, for its product's INSERT (*max_age*:
        TMAPI_DETAIL_MAX_AGE, the scale of rates)."""
        shops = sorted({row.shop for row in self.rows if row.shop and row.fetched_again})
        priors: dict[str, float] = {}
        if shops:
            found = cur.execute(
                dialect.sql(
                    f"SELECT shop, rate_sum, products FROM shop_rates WHERE shop IN ({','.join('?' * len(shops))})"  # noqa: S608
                ),
                shops,
            ).fetchall()
            priors = {str(shop): float(total) / n for shop, total, n in found if n}
        default = 1 / max(max_age, 1.0)
        columns: list[RefreshColumns] = []
        deltas: dict[str, tuple[float, int]] = {}
        for row in self.rows:
            rate = None
            if row.fetched_again:
                prior = priors.get(row.shop or "", default)
                rate = estimate_rate(row.history, prior, PRIOR_AGES * max_age, max_age)
                if row.history[-1][1]:
                    result.mattered.append(row.item_id)
                if row.shop:
                    total, n = deltas.get(row.shop, (0.0, 0))
                    deltas[row.shop] = (total + rate - float(row.old_rate or 0.0), n + (row.old_rate is None))
            history = format_history(row.history) if row.history else None
            columns.append(RefreshColumns(history, rate, row.orders, row.units, row.min_stock))
        dialect.insert_rows(
            cur,
            "shop_rates",
            ("shop", "rate_sum", "products"),
            [(shop, total, n) for shop, (total, n) in sorted(deltas.items())],
            " ON CONFLICT (shop) DO UPDATE SET rate_sum = shop_rates.rate_sum + excluded.rate_sum, "
            "products = shop_rates.products + excluded.products",
        )
        return columns


# -- choosing what to refresh ------------------------------------------------------------

#: ``TMAPI_REFRESH_POLICY``: by the value of a refresh (the default), the
#: oldest first, or the age rule of earlier versions (each product once its
#: jittered ``TMAPI_DETAIL_MAX_AGE`` is past; no budget).
POLICIES = ("value", "oldest", "age")
#: The chance that one order moved a product's SKUs in a way that matters,
#: when its stock is not known (each order a draw).
ORDER_CHANGE = 0.05
#: The most values a crawl keeps to place a product among those seen.
VALUES_KEPT = 4096
DAY = 86400.0


def parse_budget(value: Any) -> int | float | None:
    """``TMAPI_REFRESH_BUDGET``: ``None`` (unset: what the max age implies),
    a number of calls, or a share of the products listed (``"5%"`` -> 0.05);
    raises ValueError."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if text.endswith("%"):
        share = float(text[:-1]) / 100
        if not 0 <= share <= 1:
            raise ValueError("a share must be from 0% to 100%")
        return share
    if not text.isdigit():
        raise ValueError("give a number of calls (500) or a share of the products listed (5%)")
    return int(text)


@dataclass(slots=True)
class Candidate:
    """A stored product a listing names, whose entry looks unchanged."""

    item_id: int
    value: float
    stale: float
    importance: float
    age: float
    watched_due: bool = False


class RefreshPlanner:
    """Which stored products a crawl refreshes (docs/catalog.md, "Freshness
    per call"): a listing page's candidates are placed among the values seen
    so far in the crawl, and those in the top share the budget leaves are
    fetched again; watched products that are due come first."""

    def __init__(
        self,
        *,
        budget: int | float | None,
        policy: str = "value",
        max_age: float = 7 * DAY,
        watch: frozenset[int] = frozenset(),
        watch_max_age: float = 3600.0,
        shop_rates: dict[str, float] | None = None,
        listing_reads: dict[str, str] | None = None,
    ):
        self.budget_setting = budget
        self.policy = policy
        self.max_age = max_age
        self.watch = watch
        self.watch_max_age = watch_max_age
        self.shop_rates = shop_rates or {}
        self.listing_reads = listing_reads or {}
        self.values: list[float] = []
        self.spent = 0
        #: What earlier runs of this crawl spent (a JOBDIR resume): a number
        #: of calls is the crawl's, not each run's.
        self.spent_before = 0
        #: Distributed mode: ``grant(n)`` -> how many of *n* refreshes the
        #: crawl's budget still holds (tmapi_crawler.cluster.budget).
        self.grant: Callable[[int], int] | None = None
        self.watched = 0
        self.waited = 0
        #: Stored products seen whose entry looks unchanged, and the budget
        #: the default and a share give them so far.
        self.eligible = 0
        self.allowed = 0.0
        #: Importance of the products seen, and of those current after this crawl.
        self.weight = 0.0
        self.current_weight = 0.0

    @property
    def budget(self) -> int:
        """The calls this crawl may spend on refreshes (so far: a share or the
        default grows with the products listed)."""
        if isinstance(self.budget_setting, int):
            return max(0, self.budget_setting - self.spent_before)
        return math.ceil(self.allowed - 1e-9)

    def share_of(self, listing_key: str | None, now: datetime) -> float:
        """The share of a listing's candidates the budget gives."""
        if isinstance(self.budget_setting, float):
            return self.budget_setting
        last = self.listing_reads.get(listing_key or "")
        elapsed = (now - datetime.fromisoformat(last)).total_seconds() if last else DAY
        return min(1.0, max(elapsed, 0.0) / self.max_age) if self.max_age > 0 else 1.0

    def candidate(self, stored: Any, listing: dict[str, Any] | None, now: datetime) -> Candidate:
        """The value of refreshing *stored* (a :class:`~tmapi_crawler.store.lookup.Stored`)."""
        age = max(0.0, stored.detail_age(now))
        orders, units = listing_counters(listing)
        rate = stored.refresh_rate or self.shop_rates.get(stored.shop or "", 1 / max(self.max_age, 1.0))
        fresh = 1 - stale_probability(rate, age)
        if orders is not None and stored.orders_seen is not None and orders > stored.orders_seen:
            # Orders since the fetch: each may have sold a SKU out...
            fresh *= math.exp(-ORDER_CHANGE * (orders - stored.orders_seen))
        if units is not None and stored.units_seen is not None and stored.min_stock:
            # ... and units sold against the smallest stock seen: 3 left of a SKU that sells 10 a day are gone.
            sold = max(0, units - stored.units_seen)
            fresh *= max(0.0, 1 - sold / stored.min_stock)
        stale = 1 - fresh
        importance = 1.0 + float(orders or 0)
        if self.policy == "oldest":
            value = age
        else:
            # Nothing waits for ever: the value grows with the age, past the max age too.
            value = importance * stale + age / (4 * self.max_age) if self.max_age > 0 else importance * stale
        watched_due = stored.item_id in self.watch and age >= self.watch_max_age
        return Candidate(stored.item_id, value, stale, importance, age, watched_due)

    def choose(self, candidates: list[Candidate], share: float, expected_left: int = 0) -> set[int]:
        """The item ids of *candidates* (one listing page's) to fetch again:
        watched products due first, then those whose value is in the top
        *share* of the crawl's, while the budget lasts."""
        self.eligible += len(candidates)
        if not isinstance(self.budget_setting, int):
            self.allowed += share * len(candidates)
        elif expected_left > 0:
            # A number of calls, spread over the products still to come.
            share = min(1.0, max(0, self.budget - self.spent) / max(1, expected_left + len(candidates)))
        for c in candidates:
            bisect.insort(self.values, c.value)
        if len(self.values) > VALUES_KEPT:
            self.values = self.values[::2]
        wanted = []
        for c in sorted(candidates, key=lambda c: (not c.watched_due, -c.value)):
            self.weight += c.importance
            rank = bisect.bisect_left(self.values, c.value) / max(1, len(self.values))
            if c.watched_due or (share > 0 and rank >= 1 - share):
                wanted.append(c)
        granted = min(len(wanted), max(0, self.budget - self.spent))
        if self.grant is not None and granted:
            granted = self.grant(granted)  # distributed mode: the crawl's budget, shared by its workers
        chosen = {c.item_id for c in wanted[:granted]}
        for c in candidates:
            if c.item_id in chosen:
                self.spent += 1
                self.watched += c.watched_due
                self.current_weight += c.importance
            else:
                self.waited += c.watched_due
                self.current_weight += c.importance * (1 - c.stale)
        return chosen

    def fetched(self, importance: float) -> None:
        """A product fetched for another reason (new, its entry changed):
        current after this crawl."""
        self.weight += importance
        self.current_weight += importance

    @property
    def estimated_current(self) -> float | None:
        """The share of orders (weighted by the listings' counters) whose
        product is current after this crawl, as the store estimates it."""
        return self.current_weight / self.weight if self.weight else None
