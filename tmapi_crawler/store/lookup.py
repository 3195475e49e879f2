"""What the store has of listed products, for the refresh decision: each
product's stored answers and what the refresh policy knows of it
(:func:`lookup`, one query for many), each shop's rate and each listing's
last read (read once a crawl)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from tmapi_crawler.store.dialect import iso

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tmapi_crawler.store.db import CatalogDB


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store has of a product, for the refresh decision."""

    item_id: int
    detail: bytes
    detail_fetched_at: str
    description: bytes | None
    desc_fetched_at: str | None
    listing_sig: str | None
    language: str
    #: The stored answers, parsed as they were read (a store that is read
    #: is checked whole: a damaged row makes no record).
    detail_data: dict[str, Any] | None = None
    desc_data: dict[str, Any] | None = None
    #: What the refresh policy knows (schema 5): the shop, the estimated rate
    #: of changes that matter (``None``: no history yet), the listing's order
    #: and unit counters and the smallest SKU stock when it was fetched.
    shop: str | None = None
    refresh_rate: float | None = None
    orders_seen: int | None = None
    units_seen: int | None = None
    min_stock: int | None = None

    def detail_age(self, now: datetime) -> float:
        return (now - datetime.fromisoformat(self.detail_fetched_at)).total_seconds()

    def desc_age(self, now: datetime) -> float | None:
        if self.desc_fetched_at is None:
            return None
        return (now - datetime.fromisoformat(self.desc_fetched_at)).total_seconds()


def _stored(
    item_id: Any, detail: Any, detail_at: Any, desc: Any, desc_at: Any, sig: Any, language: Any, *refresh: Any
) -> Stored:
    """A product's row as :class:`Stored`, each value checked (raises
    ValueError, TypeError or a JSON error for a row that is damaged)."""
    if not isinstance(item_id, int) or (sig is not None and not isinstance(sig, str)) or not isinstance(language, str):
        raise TypeError("a column holds a value of the wrong type")
    shop, rate, orders, units, min_stock = refresh or (None, None, None, None, None)
    if not all(v is None or isinstance(v, (int, float)) for v in (rate, orders, units, min_stock)):
        raise TypeError("a refresh column holds a value of the wrong type")
    detail, desc = bytes(detail), bytes(desc) if desc is not None else None
    detail_data, desc_data = orjson.loads(detail), orjson.loads(desc) if desc is not None else None
    if not isinstance(detail_data, dict) or (desc is not None and not isinstance(desc_data, dict)):
        raise TypeError("a stored answer is not a JSON object")
    return Stored(
        item_id=item_id,
        detail=detail,
        detail_fetched_at=str(iso(detail_at)),
        description=desc,
        desc_fetched_at=iso(desc_at),
        listing_sig=sig,
        language=language,
        detail_data=detail_data,
        desc_data=desc_data,
        shop=shop if isinstance(shop, str) else None,
        refresh_rate=None if rate is None else float(rate),
        orders_seen=None if orders is None else int(orders),
        units_seen=None if units is None else int(units),
        min_stock=None if min_stock is None else int(min_stock),
    )


def lookup(db: CatalogDB, item_ids: Sequence[int]) -> dict[int, Stored]:
    """What the store has of each of *item_ids* (one query).  Every row is
    read whole here, its stored answers parsed: a row that does not read
    back (a damaged store) raises :class:`StoreDamaged`, and no record is
    made of it."""
    utf8 = db.dialect.utf8
    rows = db.query(
        f"SELECT item_id, {utf8.format('detail')}, detail_fetched_at, {utf8.format('description')}, "  # noqa: S608
        "desc_fetched_at, listing_sig, language, shop, refresh_rate, orders_seen, units_seen, min_stock "
        f"FROM products WHERE item_id IN ({','.join('?' * len(item_ids))})",
        item_ids,
        binary=True,  # the stored answers as they are
    )
    found = {}
    for row in rows:
        try:
            stored = _stored(*row)
        except (ValueError, TypeError, AttributeError) as exc:  # orjson's JSONDecodeError is a ValueError
            raise db.damaged(f"product {row[0]!r}: {type(exc).__name__}: {exc}") from None
        found[stored.item_id] = stored
    return found


def shop_rates(db: CatalogDB) -> dict[str, float]:
    """Each shop's rate of changes that matter (the mean of its products'
    estimates): the prior of a product with no history."""
    return {
        str(shop): float(rate_sum) / products
        for shop, rate_sum, products in db.query("SELECT shop, rate_sum, products FROM shop_rates")
        if products
    }


def listing_reads(db: CatalogDB) -> dict[str, str]:
    """When each listing's last read started: the default refresh budget
    spends what the time since then implies."""
    return {str(key): str(iso(at)) for key, at in db.query("SELECT listing_key, started_at FROM listing_reads")}
