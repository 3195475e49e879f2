"""The ``crawls`` table: one row per crawl (in distributed mode, per run of
workers, each adding its part), for the report and the summary's history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tmapi_crawler.store.dialect import iso, json_text

if TYPE_CHECKING:
    from tmapi_crawler.store.db import CatalogDB


@dataclass(frozen=True, slots=True)
class CrawlRow:
    """A crawl (or one worker's part of it) as the ``crawls`` table adds it."""

    id: str
    spider: str
    seed: Any
    started_at: str
    finished_at: str
    reason: str
    products: int
    calls: int
    served: int
    changes: dict[str, int]
    #: Refreshes (schema 5): the budget, the calls spent, the changes that
    #: matter they caught, the estimated share of orders current after it.
    #: Descriptions answered by the store (schema 5): with ``served``, the calls saved.
    descriptions_reused: int = 0
    refresh_budget: int = 0
    refresh_spent: int = 0
    refresh_caught: int = 0
    estimated_current: float | None = None


def record_crawl(db: CatalogDB, crawl: CrawlRow) -> None:
    """Add a crawl (or a worker's part of it) to ``crawls``: the numbers
    of the workers of one crawl add up, under the row's lock.

    The row is made first, empty, when it is not there (``ON CONFLICT DO
    NOTHING``), and only then read under its lock: two workers ending
    together would otherwise both find no row, and the second one's
    ``INSERT`` fail on the first one's, its part of the crawl lost."""
    sql = db.dialect.sql
    with db.transaction() as cur:
        cur.execute(
            sql(
                "INSERT INTO crawls (id, spider, seed, started_at, finished_at, finish_reason, workers, "
                "products, calls, served, changes) VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, '{}') "
                "ON CONFLICT (id) DO NOTHING"
            ),
            (crawl.id, crawl.spider, json_text(crawl.seed), crawl.started_at, crawl.finished_at, crawl.reason),
        )
        row = cur.execute(
            sql(
                "SELECT seed, started_at, finished_at, finish_reason, workers, products, calls, served, changes "  # noqa: S608
                f"FROM crawls WHERE id = ?{db.dialect.lock}"
            ),
            (crawl.id,),
        ).fetchone()
        seed, started, finished, reason, workers, products, calls, served, changes = row
        kinds = orjson.loads(changes)
        for kind, count in crawl.changes.items():
            kinds[kind] = kinds.get(kind, 0) + count
        reasons = sorted({*reason.split(", "), crawl.reason})
        # The refresh figures: a worker's add to the others'.
        cur.execute(
            sql(
                "UPDATE crawls SET seed = ?, started_at = ?, finished_at = ?, finish_reason = ?, workers = ?, "
                "products = ?, calls = ?, served = ?, changes = ?, "
                "descriptions_reused = COALESCE(descriptions_reused, 0) + ?, "
                "refresh_budget = COALESCE(refresh_budget, 0) + ?, "
                "refresh_spent = COALESCE(refresh_spent, 0) + ?, refresh_caught = COALESCE(refresh_caught, 0) + ?, "
                "estimated_current = COALESCE(?, estimated_current) WHERE id = ?"
            ),
            (seed or json_text(crawl.seed), min(str(iso(started)), str(iso(crawl.started_at))),
             max(str(iso(finished)), str(iso(crawl.finished_at))), ", ".join(reasons), workers + 1,
             products + crawl.products, calls + crawl.calls, served + crawl.served, json_text(kinds),
             crawl.descriptions_reused, crawl.refresh_budget, crawl.refresh_spent, crawl.refresh_caught,
             crawl.estimated_current, crawl.id),
        )  # fmt: skip


# -- reading it out ---------------------------------------------------------------------
