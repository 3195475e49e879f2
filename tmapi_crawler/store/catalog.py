"""The catalog read out: every stored product as its record (``scrapy
export``), the change records of a period (``scrapy catalog changes``, the
alerts), the titles an alert names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tmapi_crawler.records import assemble_product
from tmapi_crawler.store.dialect import iso

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    from tmapi_crawler.store.db import CatalogDB


def titles(db: CatalogDB, item_ids: Sequence[int]) -> dict[int, tuple[str, dict[str, str | None]]]:
    """Each product's title and its SKUs' option names (``props_names``),
    for what an alert says of a change (two queries)."""
    if not item_ids:
        return {}
    marks = ",".join("?" * len(item_ids))
    products = db.query(f"SELECT item_id, title FROM products WHERE item_id IN ({marks})", item_ids)  # noqa: S608
    found: dict[int, tuple[str, dict[str, str | None]]] = {item_id: (title, {}) for item_id, title in products}
    for item_id, skuid, props in db.query(
        f"SELECT item_id, skuid, props_names FROM skus WHERE item_id IN ({marks})",  # noqa: S608
        item_ids,
    ):
        if item_id in found:
            found[item_id][1][skuid] = props
    return found


def products(db: CatalogDB, *, delisted: bool = False, changed_since: str | None = None) -> Generator[dict[str, Any]]:
    """Every stored product as a product record (those delisted too when
    asked, with ``delisted_at``), by item id; with *changed_since*, only
    those with a change detected then or later, delisted ones included
    (the daily update of a shop)."""
    conditions: list[str] = []
    params: list[Any] = []
    if changed_since is not None:
        delisted = True
        conditions.append("item_id IN (SELECT item_id FROM changes WHERE detected_at >= ?)")
        params.append(changed_since)
    if not delisted:
        conditions.append("delisted_at IS NULL")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (
        "SELECT item_id, detail, description, listing, source, language, detail_fetched_at, "  # noqa: S608
        f"desc_fetched_at, delisted_at FROM products{where} ORDER BY item_id"
    )
    for row in db.stream(sql, params):
        item_id, detail, desc, listing, source, language, detail_at, desc_at, delisted_at = row
        described = orjson.loads(desc) if desc else {}
        record: dict[str, Any] = dict(
            assemble_product(
                item_id,
                orjson.loads(detail),
                listing=orjson.loads(listing) if listing else None,
                source=orjson.loads(source) if source else None,
                language=language,
                detail_fetched_at=iso(detail_at),
                crawled_at=iso(detail_at),
                desc_fetched_at=iso(desc_at),
                detail_imgs=described.get("detail_imgs"),
                detail_html=described.get("detail_html"),
            )
        )
        if delisted:
            record["delisted_at"] = iso(delisted_at)
        yield record


def changes(
    db: CatalogDB, since: str, *, until: str | None = None, item_ids: Sequence[int] = (), kinds: Sequence[str] = ()
) -> Generator[dict[str, Any]]:
    """The stored changes detected at or after *since* (and before
    *until*), oldest first."""
    where, params = ["detected_at >= ?"], list[Any]([since])
    if until is not None:
        where.append("detected_at < ?")
        params.append(until)
    if item_ids:
        where.append(f"item_id IN ({','.join('?' * len(item_ids))})")
        params.extend(item_ids)
    if kinds:
        where.append(f"change IN ({','.join('?' * len(kinds))})")
        params.extend(kinds)
    sql = (
        "SELECT change, item_id, skuid, field, old, new, detected_at, source FROM changes "  # noqa: S608
        f"WHERE {' AND '.join(where)} ORDER BY detected_at, id"
    )
    for change, item, skuid, fld, old, new, at, source in db.stream(sql, params):
        yield {
            "change": change,
            "item_id": item,
            "skuid": skuid,
            "field": fld,
            "old": _typed(fld, old),
            "new": _typed(fld, new),
            "detected_at": iso(at),
            "source": orjson.loads(source) if source else None,
        }


def _typed(field_name: str | None, value: str | None) -> Any:
    """A change's old or new value as the change record writes it: stock as a
    number, the rest as text."""
    if value is not None and field_name == "stock":
        try:
            return int(value)
        except ValueError:
            return value
    return value
