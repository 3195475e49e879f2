"""What the store's history says over a period, for the report
(``scrapy catalog report``): every figure comes from one query that the
database aggregates or streams, so that memory stays flat whatever the
store's size (a million change rows: docs/performance.md).

All times are ISO 8601 strings in UTC, as the store compares them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson

from tmapi_crawler.store.dialect import iso

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tmapi_crawler.store.db import CatalogDB

#: Products listed at most per kind in the report (then their number).
LIST_MOST = 200
#: Crawls listed at most.
RUNS_MOST = 200


@dataclass(frozen=True, slots=True)
class Period:
    since: str | None = None
    until: str | None = None

    def where(self, column: str) -> tuple[str, list[Any]]:
        parts, params = ["1 = 1"], list[Any]()
        if self.since is not None:
            parts.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            parts.append(f"{column} < ?")
            params.append(self.until)
        return " AND ".join(parts), params


@dataclass(slots=True)
class Mover:
    """A product whose price moved most: its largest move among its SKUs,
    from the first price of the period to the last."""

    item_id: int
    relative: float
    title: str = ""
    series: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


@dataclass(slots=True)
class Listed:
    """Products of one kind of change in the period (at most LIST_MOST)."""

    kind: str
    count: int
    products: list[tuple[int, str, str]]  # item_id, title, when


def _number(value: Any) -> float | None:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return float(number) if number.is_finite() else None


class History:
    def __init__(self, db: CatalogDB):
        self.db = db
        self.day = db.dialect.day

    def runs(self, period: Period) -> list[dict[str, Any]]:
        where, params = period.where("started_at")
        rows = self.db.query(
            "SELECT id, spider, seed, started_at, finished_at, finish_reason, workers, products, calls, served, "  # noqa: S608
            "changes, refresh_budget, refresh_spent, refresh_caught, estimated_current, descriptions_reused "
            f"FROM crawls WHERE {where} ORDER BY started_at DESC LIMIT {RUNS_MOST}",
            params,
        )
        return [
            {
                "id": row[0],
                "spider": row[1],
                "seed": orjson.loads(row[2]) if row[2] else None,
                "started_at": iso(row[3]),
                "finished_at": iso(row[4]),
                "finish_reason": row[5],
                "workers": row[6],
                "products": row[7],
                "calls": row[8],
                "served": row[9],
                "changes": orjson.loads(row[10]),
                "refresh_budget": row[11],
                "refresh_spent": row[12],
                "refresh_caught": row[13],
                "estimated_current": row[14],
                "descriptions_reused": row[15] or 0,
            }
            for row in rows
        ]

    def per_day(self, period: Period) -> dict[str, dict[str, int]]:
        """Changes per day and kind (``{day: {kind: count}}``), counted by
        the database."""
        where, params = period.where("detected_at")
        day = self.day.format("detected_at")
        rows = self.db.query(
            f"SELECT {day} AS day, change, COUNT(*) FROM changes WHERE {where} GROUP BY day, change ORDER BY day",  # noqa: S608
            params,
        )
        days: dict[str, dict[str, int]] = {}
        for when, kind, count in rows:
            days.setdefault(str(when), {})[kind] = int(count)
        return days

    def movers(self, period: Period, top: int) -> list[Mover]:
        """The *top* products whose price moved most in the period (the
        database picks each SKU's first and last price; the heap keeps the
        largest moves only)."""
        where, params = period.where("detected_at")
        sql = f"""
            WITH p AS (
              SELECT item_id, skuid, old, new,
                ROW_NUMBER() OVER (PARTITION BY item_id, skuid ORDER BY detected_at, id) AS first_rank,
                ROW_NUMBER() OVER (PARTITION BY item_id, skuid ORDER BY detected_at DESC, id DESC) AS last_rank
              FROM changes WHERE change = 'price' AND {where}
            )
            SELECT item_id, MAX(CASE WHEN first_rank = 1 THEN old END), MAX(CASE WHEN last_rank = 1 THEN new END)
            FROM p GROUP BY item_id, skuid ORDER BY item_id
        """  # noqa: S608
        heap: list[tuple[float, int, float]] = []  # the largest moves: (|move|, item, move)

        def keep(item_id: int, move: float) -> None:
            entry = (abs(move), item_id, move)
            if len(heap) < top:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)

        current: tuple[int, float] | None = None  # the product being read, its largest move so far
        for item_id, first, last in self.db.stream(sql, params):
            old, new = _number(first), _number(last)
            if current is not None and current[0] != item_id:
                keep(*current)
                current = None
            if old and new is not None:
                move = (new - old) / old
                if current is None or abs(move) > abs(current[1]):
                    current = (item_id, move)
        if current is not None:
            keep(*current)
        movers = [Mover(item_id, move) for _, item_id, move in sorted(heap, reverse=True)]
        self._fill(movers)
        return movers

    def product(self, item_id: int) -> Mover | None:
        """One product's page: its SKUs' price and stock over time."""
        found = self.db.query("SELECT item_id FROM products WHERE item_id = ?", [item_id])
        if not found:
            return None
        mover = Mover(item_id, 0.0)
        self._fill([mover], stock=True)
        return mover

    def _fill(self, movers: Sequence[Mover], stock: bool = False) -> None:
        """Each product's title and its SKUs' series: from the first price
        the store saw (the old value of its first change, at the product's
        first sight) through each change to the price it has now."""
        if not movers:
            return
        ids = [m.item_id for m in movers]
        marks = ",".join("?" * len(ids))
        by_id = {m.item_id: m for m in movers}
        first_seen: dict[int, str] = {}
        for item_id, title, seen in self.db.query(
            f"SELECT item_id, title, first_seen_at FROM products WHERE item_id IN ({marks})",  # noqa: S608
            ids,
        ):
            by_id[item_id].title = title
            first_seen[item_id] = str(iso(seen))
        fields = ("price", "stock") if stock else ("price",)
        for item_id, skuid, fld, old, new, at in self.db.stream(
            "SELECT item_id, skuid, field, old, new, detected_at FROM changes "  # noqa: S608
            f"WHERE item_id IN ({marks}) AND change IN ({','.join('?' * len(fields))}) AND skuid IS NOT NULL "
            "ORDER BY detected_at, id",
            [*ids, *fields],
        ):
            name = skuid if fld == "price" else f"{skuid} stock"
            series = by_id[item_id].series.setdefault(name, [])
            if not series and _number(old) is not None:
                series.append((first_seen[item_id], float(_number(old) or 0)))
            if _number(new) is not None:
                series.append((str(iso(at)), float(_number(new) or 0)))
        for item_id, skuid, price, sku_stock, updated in self.db.query(
            f"SELECT item_id, skuid, price, stock, updated_at FROM skus WHERE item_id IN ({marks}) ORDER BY skuid",  # noqa: S608
            ids,
        ):
            now = str(iso(updated))
            values = [(skuid, price)] + ([(f"{skuid} stock", sku_stock)] if stock else [])
            for name, value in values:
                number = _number(value)
                if number is None:
                    continue
                series = by_id[item_id].series.setdefault(name, [(first_seen[item_id], number)])
                if series[-1][0] < now:
                    series.append((now, number))

    def listed(self, kind: str, period: Period) -> Listed:
        where, params = period.where("c.detected_at")
        sql = f"SELECT COUNT(DISTINCT c.item_id) FROM changes c WHERE c.change = ? AND {where}"  # noqa: S608
        count = self.db.query(sql, [kind, *params])
        rows = self.db.query(
            "SELECT c.item_id, p.title, MAX(c.detected_at) AS at FROM changes c "  # noqa: S608
            f"LEFT JOIN products p ON p.item_id = c.item_id WHERE c.change = ? AND {where} "
            f"GROUP BY c.item_id, p.title ORDER BY at DESC LIMIT {LIST_MOST}",
            [kind, *params],
        )
        return Listed(kind, int(count[0][0]), [(item_id, title or "", str(iso(at))) for item_id, title, at in rows])
