"""Products written: one transaction for a batch of product records and
listing pages (:func:`write`), so that a product is never half-written (its
row, its SKUs and its changes land together or not at all).  A product is
compared with what was stored (:mod:`.changes`), and what the refresh policy
learns from it is written with it (:mod:`.freshness`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from tmapi_crawler.records import RECORD_FIELDS, decimal_of
from tmapi_crawler.store.changes import Before, Sku, State, diff, listing_signature, state_of
from tmapi_crawler.store.dialect import iso, json_text
from tmapi_crawler.store.freshness import RefreshColumns, RefreshRows
from tmapi_crawler.store.listings import write_pages

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from tmapi_crawler.store.db import CatalogDB
    from tmapi_crawler.store.dialect import Dialect
    from tmapi_crawler.store.listings import PageNote

#: Change rows deleted in one transaction when old ones are pruned.
PRUNE_BATCH = 5000


class ProductRow(NamedTuple):
    """A row of ``products`` as a crawl writes it: the INSERT's columns are
    these fields, by name, and the refresh policy's
    (:class:`~tmapi_crawler.store.freshness.RefreshColumns`); ``delisted_at``
    is cleared."""

    item_id: int
    title: str | None
    language: str
    shop: str | None
    price: str | None
    stock: int | None
    sold_out: bool
    listing_sig: str | None
    listing: str | None
    source: str | None
    detail: str
    detail_fetched_at: str | None
    description: str | None
    desc_fetched_at: str | None
    first_seen_at: str | None


@dataclass(slots=True)
class WriteResult:
    """What a batch did: the change records it stored, and how many
    products it wrote."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0
    #: The products fetched again whose fetch found a change that matters.
    mattered: list[int] = field(default_factory=list)


def _detail_of(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in RECORD_FIELDS}


def _shop(detail: dict[str, Any]) -> str | None:
    info = detail.get("shop_info")
    if isinstance(info, dict):
        for key in ("seller_member_id", "seller_login_id", "login_id"):
            if isinstance(info.get(key), str) and info[key]:
                return str(info[key])
    return None


def _price_of(detail: dict[str, Any]) -> str | None:
    info = detail.get("price_info")
    price = info.get("price") if isinstance(info, dict) else None
    return _number(str(price)) if price not in (None, "") else None


def _number(value: str | None) -> str | None:
    """A price for a NUMERIC column, or ``None`` when it is not one: the
    records' rule (:func:`tmapi_crawler.records.decimal_of`: finite, 0 or
    more), so that ``"nan"`` or ``"-1"`` is no price in the store either."""
    return value if decimal_of(value) is not None else None


def write(db: CatalogDB, records: Sequence[dict[str, Any]], pages: Sequence[PageNote] = ()) -> WriteResult:
    """Store a batch of product records and listing pages in one
    transaction: the products fetched anew (their detail or their
    description is newer than the stored one), their SKUs and the changes
    from the stored state; then the listing pages, and the ``delisted``
    changes of a listing read completely."""
    result = WriteResult()
    with db.transaction() as cur:
        if records:
            _write_products(db, cur, records, result)
        if pages:
            delisted = write_pages(cur, db.dialect, pages)
            _insert_changes(cur, db.dialect, delisted)
            result.changes += delisted
    return result


def _old_states(cur: Any, dialect: Dialect, ids: list[int]) -> dict[int, Before]:
    marks = ",".join("?" * len(ids))
    rows = cur.execute(
        dialect.sql(
            "SELECT item_id, title, language, stock, detail_fetched_at, desc_fetched_at, "  # noqa: S608
            f"refresh_history, refresh_rate FROM products WHERE item_id IN ({marks})"
        ),
        ids,
    ).fetchall()
    old = {
        item_id: Before(State(title, language, stock), str(iso(detail_at)), iso(desc_at), history, rate)
        for item_id, title, language, stock, detail_at, desc_at, history, rate in rows
    }
    if old:
        found = list(old)
        sku_rows = cur.execute(
            dialect.sql(
                "SELECT item_id, skuid, props_names, price, stock FROM skus "  # noqa: S608
                f"WHERE item_id IN ({','.join('?' * len(found))})"
            ),
            found,
        ).fetchall()
        for item_id, skuid, props, price, stock in sku_rows:
            old[item_id].state.skus[skuid] = Sku(props, None if price is None else str(price), stock)
    return old


def _write_products(db: CatalogDB, cur: Any, records: Sequence[dict[str, Any]], result: WriteResult) -> None:
    """The batch's records, a run of distinct products at a time (a
    product twice in a batch is compared with what the first wrote)."""
    run: list[dict[str, Any]] = []
    ids: set[int] = set()
    for record in records:
        item_id = int(record["item_id"])
        if item_id in ids:
            _write_run(db, cur, run, result)
            run, ids = [], set()
        run.append(record)
        ids.add(item_id)
    if run:
        _write_run(db, cur, run, result)


#: The products INSERT: a product fetched again replaces its row, but for
#: what this fetch did not read (the listing entry, the description).  Its
#: columns are a :class:`ProductRow`'s and then a
#: :class:`~tmapi_crawler.store.freshness.RefreshColumns`'.
_PRODUCT_COLUMNS = (*ProductRow._fields, *RefreshColumns._fields)
_ON_PRODUCT = (
    " ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, language = excluded.language, "
    "shop = excluded.shop, price = excluded.price, stock = excluded.stock, "
    "sold_out = excluded.sold_out, "
    "listing_sig = COALESCE(excluded.listing_sig, products.listing_sig), "
    "listing = COALESCE(excluded.listing, products.listing), source = excluded.source, "
    "detail = excluded.detail, detail_fetched_at = excluded.detail_fetched_at, "
    "description = COALESCE(excluded.description, products.description), "
    "desc_fetched_at = COALESCE(excluded.desc_fetched_at, products.desc_fetched_at), "
    "delisted_at = NULL, " + ", ".join(f"{name} = excluded.{name}" for name in RefreshColumns._fields)
)


def _write_run(db: CatalogDB, cur: Any, records: Sequence[dict[str, Any]], result: WriteResult) -> None:
    """Records of distinct products: a statement a table for them all
    (:meth:`~tmapi_crawler.store.dialect.Dialect.insert_rows`), whatever
    their number."""
    sql = db.dialect.sql
    old = _old_states(cur, db.dialect, sorted(int(r["item_id"]) for r in records))
    products: list[ProductRow] = []
    skus: list[tuple[Any, ...]] = []
    descriptions: list[tuple[Any, ...]] = []
    changes: list[dict[str, Any]] = []
    refresh = RefreshRows()
    for record in records:
        item_id = int(record["item_id"])
        before = old.get(item_id)
        detail_at, desc_at = record.get("detail_fetched_at"), record.get("desc_fetched_at")
        detail_new = before is None or detail_at != before.detail_fetched_at
        desc_new = desc_at is not None and (before is None or desc_at != before.desc_fetched_at)
        if not detail_new and not desc_new:
            continue  # answered from the store: nothing new
        result.written += 1
        description = (
            json_text({"detail_imgs": record.get("detail_imgs"), "detail_html": record.get("detail_html")})
            if desc_new
            else None
        )
        if not detail_new:
            descriptions.append((description, desc_at, item_id))
            continue
        detail = _detail_of(record)
        state = state_of(detail, record["language"])
        shop = _shop(detail)
        products.append(
            ProductRow(
                item_id=item_id,
                title=state.title,
                language=record["language"],
                shop=shop,
                price=_price_of(detail),
                stock=state.stock,
                sold_out=state.sold_out,
                listing_sig=listing_signature(record.get("listing")),
                listing=json_text(record.get("listing")),
                source=json_text(record.get("source")),
                detail=orjson.dumps(detail).decode(),
                detail_fetched_at=detail_at,
                description=description,
                desc_fetched_at=desc_at if desc_new else None,
                first_seen_at=detail_at,
            )
        )
        skus += [
            (item_id, skuid, sku.props, _number(sku.price), sku.stock, detail_at) for skuid, sku in state.skus.items()
        ]
        found = diff(
            item_id, before.state if before else None, state, detected_at=str(detail_at), source=record.get("source")
        )
        changes += found
        refresh.add(record, state, shop, before, found)
    if products:
        # The refresh policy's columns first (they need the shops' rates), then each row whole: one statement.
        columns = refresh.write_rates(cur, db.dialect, result, db.max_age)
        rows = [(*row, *refresh_columns) for row, refresh_columns in zip(products, columns, strict=True)]
        db.dialect.insert_rows(cur, "products", _PRODUCT_COLUMNS, rows, _ON_PRODUCT)
        written = [row.item_id for row in products if row.item_id in old]
        if written:
            cur.execute(
                sql(f"DELETE FROM skus WHERE item_id IN ({','.join('?' * len(written))})"),  # noqa: S608
                written,
            )
    db.dialect.insert_rows(cur, "skus", ("item_id", "skuid", "props_names", "price", "stock", "updated_at"), skus)
    if descriptions:
        cur.executemany(sql("UPDATE products SET description = ?, desc_fetched_at = ? WHERE item_id = ?"), descriptions)
    _insert_changes(cur, db.dialect, changes)
    result.changes += changes


_CHANGE_COLUMNS = ("detected_at", "item_id", "skuid", "change", "field", "old", "new", "source")


def insert_changes(db: CatalogDB, changes: Iterable[dict[str, Any]]) -> None:
    """Change records stored as they are, in one transaction (the
    benchmarks fill a store with a year of history this way)."""
    with db.transaction() as cur:
        _insert_changes(cur, db.dialect, changes)


def _insert_changes(cur: Any, dialect: Dialect, changes: Iterable[dict[str, Any]]) -> None:
    rows = [
        (
            c["detected_at"],
            c["item_id"],
            c["skuid"],
            c["change"],
            c["field"],
            None if c["old"] is None else str(c["old"]),
            None if c["new"] is None else str(c["new"]),
            json_text(c["source"]),
        )
        for c in changes
    ]
    dialect.insert_rows(cur, "changes", _CHANGE_COLUMNS, rows)


def prune_changes(db: CatalogDB, before: str, batch: int = PRUNE_BATCH) -> int:
    """Delete one batch of change rows detected before *before* (one short
    transaction: the writers of a crawl are not held up); how many."""
    with db.transaction() as cur:
        deleted = cur.execute(
            db.dialect.sql(
                "DELETE FROM changes WHERE id IN "  # noqa: S608
                f"(SELECT id FROM changes WHERE detected_at < ? ORDER BY detected_at LIMIT {int(batch)})"
            ),
            (before,),
        ).rowcount
    return int(deleted)
