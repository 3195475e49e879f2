"""A catalog that lives (``--living``; docs/sandbox.md, "A living catalog"):
what the refresh policy of the catalog store is measured against.

The generated products have a popularity of their own (a few sell a lot,
most hardly at all); each simulated day, orders come in for them, take stock
from their SKUs and move the listing's counters (a shop listing's
``orders_count_30days`` and ``sale_quantity_30days``, a category's
``sales_count``); a SKU whose stock runs out is restocked some days later;
prices move, some only on a SKU that is not the cheapest, so that the
listing does not show it.  The clock is simulated: it moves one day per
``POST /__admin/advance`` and stands still in between, so that a test or a
benchmark runs weeks in seconds; ``GET /__admin/truth`` says what every
product's SKUs really are (in stock or not, at what price) for measuring
how stale a store is.

Everything is drawn from the catalog's seed and the day: the same seed gives
the same world.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Days an order counter looks back (``orders_count_30days``).
WINDOW_DAYS = 30
#: Days a SKU that ran out waits to be restocked, at the least and the most.
RESTOCK_DAYS = (2, 7)
#: The chance, each day, that a product's seller reprices one of its SKUs.
REPRICE_PER_DAY = 0.02


@dataclass(slots=True)
class LivingSku:
    stock: int
    price_cents: int
    #: The day it is restocked (it sold out), or ``None``.
    restock_on: int | None = None


@dataclass(slots=True)
class LivingProduct:
    #: Orders a day, on average.
    popularity: float
    skus: list[LivingSku]
    #: Orders and units of the last WINDOW_DAYS days, newest last.
    orders: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW_DAYS))
    units: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW_DAYS))

    @property
    def orders_30d(self) -> int:
        return sum(self.orders)

    @property
    def units_30d(self) -> int:
        return sum(self.units)

    @property
    def cheapest_cents(self) -> int:
        return min(sku.price_cents for sku in self.skus)


class LivingWorld:
    """The living state of a catalog's generated products (made the first
    time each is asked for, from the seed, so that it costs nothing for a
    product no one lists)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.day = 0
        self.products: dict[int, LivingProduct] = {}

    def product(self, item_id: int, skus: int, base_cents: int) -> LivingProduct:
        """*item_id*'s state, with *skus* SKUs priced from *base_cents*."""
        found = self.products.get(item_id)
        if found is not None:
            return found
        rng = random.Random(f"{self.seed}:living:{item_id}")
        popularity = math.exp(rng.gauss(-1.2, 1.6))  # log-normal: a few sell most
        made = LivingProduct(
            popularity=popularity,
            skus=[LivingSku(stock=rng.randint(3, 400), price_cents=base_cents + rng.randint(0, 3) * base_cents // 20)
                  for _ in range(skus)],
        )  # fmt: skip
        # The days before the first one: counters that already mean something.
        for _ in range(WINDOW_DAYS):
            orders = _poisson(rng, popularity)
            made.orders.append(orders)
            made.units.append(sum(rng.randint(1, 6) for _ in range(orders)))
        self.products[item_id] = made
        return made

    def advance(self) -> int:
        """One simulated day: orders, sell-outs, restocks, price moves."""
        self.day += 1
        for item_id, product in self.products.items():
            rng = random.Random(f"{self.seed}:day:{self.day}:{item_id}")
            for sku in product.skus:
                if sku.restock_on is not None and sku.restock_on <= self.day:
                    sku.stock, sku.restock_on = rng.randint(20, 400), None
            orders = _poisson(rng, product.popularity)
            units = 0
            for _ in range(orders):
                open_skus = [sku for sku in product.skus if sku.stock > 0]
                if not open_skus:
                    break
                sku = rng.choice(open_skus)
                taken = min(sku.stock, rng.randint(1, 6))
                sku.stock -= taken
                units += taken
                if sku.stock == 0:
                    sku.restock_on = self.day + rng.randint(*RESTOCK_DAYS)
            product.orders.append(orders)
            product.units.append(units)
            if rng.random() < REPRICE_PER_DAY:
                sku = rng.choice(product.skus)  # often not the cheapest: the listing may not show it
                sku.price_cents = max(100, sku.price_cents * rng.randint(85, 115) // 100)
        return self.day

    def truth(self, skuids: Any) -> dict[str, Any]:
        """What each product's SKUs are now: ``{item_id: {"orders": orders of
        the last 30 days, "skus": {skuid: [in stock, price]}}}``; *skuids*
        gives a product's SKU ids in the order of its ``skus``."""
        return {
            "day": self.day,
            "products": {
                str(item_id): {
                    "orders": product.orders_30d,
                    "skus": {
                        skuid: [sku.stock > 0, _price(sku.price_cents)]
                        for skuid, sku in zip(skuids(item_id), product.skus, strict=True)
                    },
                }
                for item_id, product in self.products.items()
            },
        }


def _price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's, for the small means of a day's orders; a
    normal one for large means)."""
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
