"""What counts as a change, without a database: the listing fields that say a
product's detail must be fetched again, a product's state (title, price and
stock per SKU), and the change records between two states.

Pure functions over plain values; :mod:`tmapi_crawler.store.db` stores the
states and the changes, :mod:`tmapi_crawler.store.extension` decides the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, get_args

import orjson

from tmapi_crawler.records import ChangeKind, sku_price

#: The listing fields whose change means the product's detail changed: the
#: title and every price field.  Shop listings (``shop_items``) send
#: ``price`` and ``price_info`` with ``drop_ship_price``, ``wholesale_price``,
#: ``origin_price`` and ``agent_price``; category listings
#: (``category_items``) send ``price`` (often empty) and ``price_info`` with
#: ``sale_price``, ``show_price`` and ``origin_price``.  Sales counters
#: (``sale_info``, ``sales_count``), ranks, shop ratings and images change
#: every day without the product changing, and do not count.
SIGNATURE_FIELDS = ("title", "price", "price_info")

#: The kinds of change record.
CHANGE_KINDS: tuple[str, ...] = get_args(ChangeKind)


def listing_signature(entry: dict[str, Any] | None) -> str | None:
    """The listing entry's title and price fields as one canonical string
    (``None`` without an entry: a product named by the ``item`` spider)."""
    if entry is None:
        return None
    picked = {name: entry.get(name) for name in SIGNATURE_FIELDS}
    return orjson.dumps(picked, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(slots=True)
class Sku:
    """A SKU as the store keeps it: price as the API wrote it, stock."""

    props: str | None
    price: str | None
    stock: int | None


@dataclass(slots=True)
class State:
    """What changes are computed from: the product's title, its SKUs (a
    product without SKUs is one SKU with id ``""``) and its total stock."""

    title: str
    language: str
    stock: int | None
    skus: dict[str, Sku] = field(default_factory=dict)

    @property
    def sold_out(self) -> bool:
        return self.stock is not None and self.stock <= 0


@dataclass(slots=True)
class Before:
    """What the store had of a product before a write: its state, when its
    detail and description were fetched, and what the refresh policy knew
    (its history of changes that matter, the rate estimated from it)."""

    state: State
    detail_fetched_at: str
    desc_fetched_at: str | None
    refresh_history: str | None
    refresh_rate: float | None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _price(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def state_of(detail: dict[str, Any], language: str) -> State:
    """The state of a product from its ``item_detail`` data (or its record)."""
    skus: dict[str, Sku] = {}
    for sku in detail.get("skus") or ():
        if not isinstance(sku, dict) or sku.get("skuid") in (None, ""):
            continue
        skus[str(sku["skuid"])] = Sku(
            props=sku.get("props_names") if isinstance(sku.get("props_names"), str) else None,
            price=_price(sku_price(detail, sku)),
            stock=_int(sku.get("stock")),
        )
    total = _int(detail.get("stock"))
    if not skus:
        info = detail.get("price_info")
        skus[""] = Sku(props=None, price=_price(info.get("price") if isinstance(info, dict) else None), stock=total)
    if total is None and skus:
        stocks = [s.stock for s in skus.values()]
        total = sum(s for s in stocks if s is not None) if any(s is not None for s in stocks) else None
    return State(title=str(detail.get("title") or ""), language=language, stock=total, skus=skus)


def _same_price(old: str | None, new: str | None) -> bool:
    if old == new:
        return True
    try:
        return old is not None and new is not None and Decimal(old) == Decimal(new)
    except InvalidOperation:
        return False


def change_record(
    change: str,
    item_id: int,
    *,
    detected_at: str,
    source: dict[str, Any] | None,
    skuid: str | None = None,
    field: str | None = None,
    old: Any = None,
    new: Any = None,
) -> dict[str, Any]:
    return {
        "change": change,
        "item_id": item_id,
        "skuid": skuid or None,
        "field": field,
        "old": old,
        "new": new,
        "detected_at": detected_at,
        "source": source,
    }


def diff(
    item_id: int,
    old: State | None,
    new: State,
    *,
    detected_at: str,
    source: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The change records from *old* to *new* (``new`` when there is no
    *old*).  A title is compared only between answers in one language."""

    def record(change: str, **fields: Any) -> dict[str, Any]:
        return change_record(change, item_id, detected_at=detected_at, source=source, **fields)

    if old is None:
        return [record("new", field="title", new=new.title)]
    out: list[dict[str, Any]] = []
    if old.language == new.language and old.title != new.title:
        out.append(record("title", field="title", old=old.title, new=new.title))
    for skuid, sku in new.skus.items():
        before = old.skus.get(skuid)
        if before is None:
            out.append(record("sku_added", skuid=skuid, field="props_names", new=sku.props))
            continue
        if not _same_price(before.price, sku.price):
            out.append(record("price", skuid=skuid, field="price", old=before.price, new=sku.price))
        if before.stock != sku.stock:
            out.append(record("stock", skuid=skuid, field="stock", old=before.stock, new=sku.stock))
    for skuid, sku in old.skus.items():
        if skuid not in new.skus:
            out.append(record("sku_removed", skuid=skuid, field="props_names", old=sku.props))
    if not old.sold_out and new.sold_out:
        out.append(record("sold_out", field="stock", old=old.stock, new=new.stock))
    elif old.sold_out and not new.sold_out:
        out.append(record("back_in_stock", field="stock", old=old.stock, new=new.stock))
    return out
