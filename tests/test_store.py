"""The catalog store: recurring crawls that bill only what changed, and say
what changed.  Real SQLite files in temporary directories and a real
PostgreSQL cluster (a throwaway ``initdb``); the sandbox over HTTP, whose
catalog changes between two crawls (``/__admin/revise``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import sqlite3
import subprocess
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import signals
from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import TOKEN, PostgresServer, SandboxProcess, crawl, needs, read_jsonl, run_scrapy, starts_process
from tmapi_crawler.records import ChangeItem, validate
from tmapi_crawler.store.changes import diff, listing_signature, state_of
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.dialect import SQLITE, iso
from tmapi_crawler.store.extension import BATCH_WAIT, FLUSH_INTERVAL, write_now
from tmapi_crawler.store.ledger import CrawlRow, record_crawl
from tmapi_crawler.store.listings import PageNote
from tmapi_crawler.store.lookup import lookup
from tmapi_crawler.store.schema import SCHEMA_VERSION
from tmapi_crawler.store.url import StoreError, parse_store_url
from tmapi_crawler.store.write import insert_changes, write

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

SHOP = "b2b-sandbox0000"
PRODUCTS, PAGES = 60, 3


@starts_process(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: a SQLite file, or a new database on the test cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.sqlite")
    url: str = request.getfixturevalue("postgres")
    return url


def calls(sb: SandboxProcess) -> dict[str, int]:
    stats = sb.stats()
    return {"total": stats["calls"], **stats["calls_per_endpoint"]}


async def store_crawl(sb: SandboxProcess, tmp_path: Path, store: str, run: str, spider: str = "shop", **kw: Any):
    settings = {
        "TMAPI_STORE": store,
        "TMAPI_CHANGES_FILE": str(tmp_path / f"changes-{run}.jsonl"),
        "TMAPI_FAILURES_FILE": str(tmp_path / f"failures-{run}.jsonl"),
        "FEEDS": {str(tmp_path / f"products-{run}.jsonl"): {"format": "jsonlines", "overwrite": True}},
        **kw.pop("settings", {}),
    }
    if spider == "shop":
        kw.setdefault("member_id", SHOP)
    sb.reset()
    result = await crawl(spider, sb, tmp_path, settings, **kw)
    result.extra["changes"] = read_jsonl(tmp_path / f"changes-{run}.jsonl")
    result.extra["calls"] = calls(sb)
    return result


# -- what counts as a change ------------------------------------------------------------


def _detail(**over: Any) -> dict[str, Any]:
    detail = {
        "title": "Jacket",
        "price_info": {"price": "25.90"},
        "stock": 15,
        "skus": [
            {"skuid": "1", "sale_price": "25.90", "stock": 10, "props_names": "colour:red"},
            {"skuid": "2", "sale_price": "27.00", "stock": 5, "props_names": "colour:blue"},
        ],
    }
    detail.update(over)
    return detail


def _changes(old: dict[str, Any] | None, new: dict[str, Any], language: str = "en") -> list[tuple[Any, ...]]:
    before = state_of(old, "en") if old is not None else None
    found = diff(7, before, state_of(new, language), detected_at="2026-11-23T00:00:00.000000Z", source=None)
    for change in found:
        assert validate(ChangeItem(change)) is None, change
    return [(c["change"], c["skuid"], c["old"], c["new"]) for c in found]


def test_a_product_first_seen_is_new_and_an_unchanged_one_has_no_change():
    assert _changes(None, _detail()) == [("new", None, None, "Jacket")]
    assert _changes(_detail(), _detail()) == []
    # The same price written otherwise is the same price.
    same = _detail(skus=[{**s, "sale_price": s["sale_price"].rstrip("0")} for s in _detail()["skus"]])
    assert _changes(_detail(), same) == []


def test_price_and_stock_per_sku_title_and_skus_added_or_removed():
    new = _detail(
        title="Warm jacket",
        skus=[
            {"skuid": "1", "sale_price": "23.50", "stock": 7, "props_names": "colour:red"},
            {"skuid": "3", "sale_price": "30.00", "stock": 1, "props_names": "colour:green"},
        ],
        stock=8,
    )
    assert sorted(_changes(_detail(), new), key=str) == sorted(
        [
            ("title", None, "Jacket", "Warm jacket"),
            ("price", "1", "25.90", "23.50"),
            ("stock", "1", 10, 7),
            ("sku_added", "3", None, "colour:green"),
            ("sku_removed", "2", "colour:blue", None),
        ],
        key=str,
    )
    # A title in another language is not a change of title.
    assert _changes(_detail(), _detail(title="夹克"), language="zh") == []


def test_sold_out_and_back_in_stock_are_the_product_s():
    empty = _detail(stock=0, skus=[{**s, "stock": 0} for s in _detail()["skus"]])
    assert ("sold_out", None, 15, 0) in _changes(_detail(), empty)
    assert ("back_in_stock", None, 0, 15) in _changes(empty, _detail())
    # A product without SKUs is one SKU of its own.
    bare = {"title": "Mug", "price_info": {"price": "3.00"}, "stock": 4}
    assert _changes(bare, {**bare, "price_info": {"price": "2.50"}}) == [("price", None, "3.00", "2.50")]


def test_the_listing_signature_is_title_and_price_fields_not_sales():
    entry = {"item_id": "1", "title": "Jacket", "price": "3.90", "price_info": {"wholesale_price": "3.90"}}
    busier = {**entry, "sale_info": {"sale_quantity_90days": "999"}, "sales_count": "5", "primary_rank_score": "3"}
    assert listing_signature(entry) == listing_signature(busier)
    assert listing_signature(entry) != listing_signature({**entry, "price_info": {"wholesale_price": "3.50"}})
    assert listing_signature(entry) != listing_signature({**entry, "title": "Jacket!"})
    assert listing_signature(None) is None


def test_store_urls():
    assert parse_store_url("catalog.sqlite").target == "catalog.sqlite"
    assert parse_store_url("sqlite:///rel/catalog.sqlite").target == "rel/catalog.sqlite"
    assert parse_store_url("sqlite:////abs/catalog.sqlite").target == "/abs/catalog.sqlite"
    pg = parse_store_url("postgres://me:s3cret@db.example:5433/shop")
    assert (pg.kind, pg.display) == ("postgresql", "postgresql://me@db.example:5433/shop")
    for bad in ("", "mysql://me:s3cret@h/db", "postgresql://me:s3cret@h", "postgresql://h:notaport/db", "sqlite://"):
        with pytest.raises(StoreError) as info:
            parse_store_url(bad)
        assert "s3cret" not in str(info.value)
        assert "\n" not in str(info.value)


# -- the database ----------------------------------------------------------------------


def _record(item_id: int, at: str, **over: Any) -> dict[str, Any]:
    return {
        "item_id": item_id,
        **_detail(**over),
        "detail_imgs": ["a.jpg"],
        "detail_html": "<p/>",
        "detail_fetched_at": at,
        "desc_fetched_at": at,
        "listing": {"item_id": str(item_id), "title": "Jacket", "price": "25.90"},
        "source": {"spider": "shop", "member_id": SHOP, "page": 1, "position": 0},
        "language": "en",
        "crawled_at": at,
    }


def test_a_batch_is_one_transaction_never_a_half_written_product(store):
    url = parse_store_url(store)
    db = CatalogDB(url)
    try:
        first = write(db, [_record(1, "2026-11-20T00:00:00.000000Z")])
        assert [c["change"] for c in first.changes] == ["new"]
        # The second product of a batch cannot be stored (an id out of the
        # database's range): nothing of the batch is, not even the first
        # product's new SKUs.
        bad = _record(2**70, "2026-11-21T00:00:00.000000Z")
        changed = _record(1, "2026-11-21T00:00:00.000000Z", skus=[{"skuid": "9", "sale_price": "1.00", "stock": 1}])
        with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's own error
            write(db, [changed, bad])
        assert db.query("SELECT COUNT(*) FROM products")[0][0] == 1
        assert sorted(r[0] for r in db.query("SELECT skuid FROM skus")) == ["1", "2"]
        assert db.query("SELECT COUNT(*) FROM changes")[0][0] == 1
        stored = lookup(db, [1]).get(1)
        assert stored is not None and stored.detail_fetched_at == "2026-11-20T00:00:00.000000Z"
        # The same record again is no write and no change.
        assert write(db, [_record(1, "2026-11-20T00:00:00.000000Z")]).written == 0
    finally:
        db.close()


def test_a_batch_is_a_few_statements_and_every_value_reads_back_as_written(store):
    """Many rows a statement (``executemany`` ran one a row, and the driver
    let the GIL go for each): SQLite's in runs of a power of two under its
    parameter limit, PostgreSQL's as one JSON parameter; texts, prices,
    counts, flags, NULLs and the largest id read back as they were given."""
    db = CatalogDB(parse_store_url(store))
    statements: list[str] = []
    if db.url.kind == "sqlite":
        db.dialect = dataclasses.replace(SQLITE, max_params=6 * 64)  # 64 SKU rows a statement at most
        db.conn.set_trace_callback(statements.append)
    at = "2026-11-20T00:00:00.000000Z"
    title = '夹克 "引号" \\ \' %s {}'
    skus = [
        {"skuid": "a", "sale_price": "25.90", "stock": 0, "props_names": "颜色:红"},
        {"skuid": "b", "sale_price": "1000000.05", "stock": None, "props_names": None},
        {"skuid": "c", "sale_price": "nan", "stock": 7, "props_names": "尺码:L"},
    ]
    records = [_record(n, at, title=f"{title}{n}", skus=skus) for n in range(1, 151)]
    records.append(_record(2**63 - 1, at, stock=None))  # the stock of its SKUs then
    try:
        result = write(db, records)
        assert result.written == 151
        assert [c["change"] for c in result.changes] == ["new"] * 151
        rows = db.query("SELECT item_id, title, price, stock, sold_out, delisted_at FROM products ORDER BY item_id")
        assert [(r[0], r[1], str(r[2]), r[3], bool(r[4]), r[5]) for r in rows[:1] + rows[-1:]] == [
            (1, f"{title}1", "25.90", 15, False, None),
            (2**63 - 1, "Jacket", "25.90", 15, False, None),
        ]
        stored = db.query("SELECT item_id, skuid, props_names, price, stock FROM skus ORDER BY item_id, skuid")
        assert len(stored) == 150 * 3 + 2
        assert [(r[1], r[2], None if r[3] is None else str(r[3]), r[4]) for r in stored[:3]] == [
            ("a", "颜色:红", "25.90", 0),
            ("b", None, "1000000.05", None),
            ("c", "尺码:L", "25.90", 7),  # "nan" is no price: the product's
        ]
        assert db.query("SELECT COUNT(*) FROM changes")[0][0] == 151
        assert lookup(db, [2**63 - 1])[2**63 - 1].detail_fetched_at == at
        if statements:  # 452 SKU rows in runs of at most 64: 7 x 64 + 4
            assert sum(s.startswith("INSERT INTO skus") for s in statements) == 8
    finally:
        db.close()


def test_records_that_keep_coming_wait_for_a_full_batch_or_a_second():
    """The writer takes a batch not yet full when records stop coming (the
    crawl's end, a pause: one look without a new record) or once it has
    waited BATCH_WAIT; while they keep coming it lets the batch fill, where
    it once wrote whatever waited (batches of some 20 records at full speed).
    The crawl's first records are written at the first look."""
    looks_in_a_wait = round(BATCH_WAIT / FLUSH_INTERVAL)
    assert write_now(0, 0, 0)  # listing pages alone: at once
    assert write_now(37, 37, 1)  # no record since the last look
    assert not write_now(37, 12, 1)  # still coming
    assert not write_now(180, 150, looks_in_a_wait - 1)
    assert write_now(180, 150, looks_in_a_wait)  # waited BATCH_WAIT
    assert write_now(37, 12, 1, first=True)  # the crawl's first records: a store that cannot take them says so now
    assert BATCH_WAIT <= 1.0 and looks_in_a_wait > 1


def test_a_stored_time_reads_back_as_the_records_write_it():
    """UTC, microseconds, ``Z``: as SQLite keeps it (returned as it is), or
    from an offset, no fraction or PostgreSQL's ``datetime``."""
    assert iso("2026-11-20T00:00:00.000000Z") == "2026-11-20T00:00:00.000000Z"
    assert iso("2026-11-20T08:00:00+08:00") == "2026-11-20T00:00:00.000000Z"
    assert iso("2026-11-20T00:00:00.5+00:00") == "2026-11-20T00:00:00.500000Z"
    assert iso(datetime(2026, 11, 20, 1, 2, 3, 4, tzinfo=UTC)) == "2026-11-20T01:02:03.000004Z"
    with pytest.raises(ValueError):  # noqa: PT011 - fromisoformat's
        iso("٢٠٢٦-١١-٢٠T00:00:00.000000Z")  # digits, but not ASCII ones: not taken as they are
    assert iso(None) is None


def _drop_schema_5(cur: Any, *, crawls: bool = True) -> None:
    """What schema 5 added, gone (a store of an older version)."""
    columns: dict[str, tuple[str, ...]] = {
        "products": ("refresh_history", "refresh_rate", "orders_seen", "units_seen", "min_stock")
    }
    if crawls:
        columns["crawls"] = (
            "descriptions_reused",
            "refresh_budget",
            "refresh_spent",
            "refresh_caught",
            "estimated_current",
        )
    for table, names in columns.items():
        for name in names:
            cur.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
    cur.execute("DROP TABLE shop_rates")


def _set_version(url: Any, version: int) -> None:
    """Write another schema version into a store, as another release would."""
    if url.kind == "sqlite":
        with contextlib.closing(sqlite3.connect(url.target)) as conn, conn:
            conn.execute("UPDATE tmapi_schema SET version = ?", (version,))
        return
    import psycopg

    with psycopg.connect(url.target, autocommit=True) as pg:
        pg.execute("UPDATE tmapi_schema SET version = %s", (version,))


def test_another_schema_version_or_a_foreign_table_is_refused_in_one_line(store):
    url = parse_store_url(store)
    CatalogDB(url).close()
    _set_version(url, SCHEMA_VERSION + 1)
    with pytest.raises(
        StoreError, match=rf"schema version \d+, newer than this tmapi_crawler's \({SCHEMA_VERSION}\): upgrade"
    ):
        CatalogDB(url)
    _set_version(url, 0)  # older than any migration this release has
    with pytest.raises(StoreError, match="schema version 0, which this tmapi_crawler cannot migrate"):
        CatalogDB(url)
    if url.kind == "sqlite":
        other = Path(store).with_name("other.sqlite")
        with contextlib.closing(sqlite3.connect(other)) as conn:
            conn.execute("CREATE TABLE products (id INTEGER)")
        with pytest.raises(StoreError, match="products table that tmapi_crawler did not create"):
            CatalogDB(parse_store_url(str(other)))


def test_a_store_of_schema_1_gets_its_crawls_table(store):
    url = parse_store_url(store)
    CatalogDB(url).close()
    db = CatalogDB(url)
    try:
        with db.transaction() as cur:  # as schema 1 was
            _drop_schema_5(cur, crawls=False)
            cur.execute("DROP TABLE crawls")
            cur.execute("DROP TABLE account_limits")
            cur.execute("DROP INDEX changes_by_kind")
            cur.execute("ALTER TABLE listing_reads DROP COLUMN pages_read")
            cur.execute("UPDATE tmapi_schema SET version = 1")
    finally:
        db.close()
    with pytest.raises(StoreError, match="has schema version 1: run a crawl with it once to migrate it"):
        CatalogDB(url, create=False)
    db = CatalogDB(url)  # as a crawl opens it
    try:
        assert db.query("SELECT version FROM tmapi_schema") == [(SCHEMA_VERSION,)]
        assert db.query("SELECT COUNT(*) FROM crawls") == [(0,)]
        assert db.query("SELECT COUNT(*) FROM account_limits") == [(0,)]
    finally:
        db.close()


def _together(url: Any, workers: int, rounds: int, work: Any) -> None:
    """*workers* threads, each with a connection of its own, call
    ``work(db, worker, round)`` at the same moment, *rounds* times; none fails."""
    dbs = [CatalogDB(url) for _ in range(workers)]
    failed: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def run(n: int) -> None:
        for turn in range(rounds):
            barrier.wait()
            try:
                work(dbs[n], n, turn)
            except Exception as exc:  # the test's finding
                failed.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for db in dbs:
        db.close()
    assert failed == []


def test_workers_ending_together_each_add_their_part_of_the_crawl(store):
    """The workers of one run end at the same moment: each one's part is in
    the crawl's row (none found the row missing and then failed to make it)."""
    url = parse_store_url(store)
    CatalogDB(url).close()

    def end(db: CatalogDB, n: int, turn: int) -> None:
        record_crawl(db, CrawlRow(id=f"run-{turn}", spider="shop", seed=None, reason="finished" if n else "shutdown",
                                  started_at=f"2026-12-0{1 + n}T00:00:00.000000Z",
                                  finished_at=f"2026-12-0{1 + n}T01:00:00.000000Z",
                                  products=10 + n, calls=20, served=1, changes={"new": 1, f"w{n}": 1}))  # fmt: skip

    _together(url, 4, 10, end)
    db = CatalogDB(url, create=False)
    try:
        rows = db.query("SELECT workers, products, calls, served, finish_reason, changes, started_at, finished_at "
                        "FROM crawls ORDER BY id")  # fmt: skip
    finally:
        db.close()
    assert len(rows) == 10
    for row in rows:
        assert row[:5] == (4, 46, 80, 4, "finished, shutdown")
        assert json.loads(row[5]) == {"new": 4, "w0": 1, "w1": 1, "w2": 1, "w3": 1}
        assert (iso(row[6]), iso(row[7])) == ("2026-12-01T00:00:00.000000Z", "2026-12-04T01:00:00.000000Z")


def test_two_workers_reading_a_listing_for_the_first_time_both_count(store):
    """Two workers write the first pages of a listing never read before at
    the same moment (no row yet to lock): neither takes the other's page
    away, and the read completes."""
    url = parse_store_url(store)
    CatalogDB(url).close()

    def page(db: CatalogDB, n: int, turn: int) -> None:
        key = f"shop_items?member_id=x{turn}"
        write(db, [], [PageNote(key, "r1", 1, [1, 2], 2) if n == 0 else PageNote(key, "r1", 2, [3])])

    _together(url, 2, 10, page)
    db = CatalogDB(url, create=False)
    try:
        reads = db.query("SELECT completed_at IS NOT NULL, pages_read FROM listing_reads")
        members = db.query("SELECT COUNT(*) FROM listing_members")
    finally:
        db.close()
    assert sorted(reads) == [(True, 2)] * 10
    assert members == [(30,)]


def test_delisted_only_when_the_same_listing_was_read_completely(store):
    db = CatalogDB(parse_store_url(store))
    try:
        write(db, [_record(i, "2026-11-20T00:00:00.000000Z") for i in (1, 2, 3, 4)])
        key = "shop_items?member_id=x"

        def read(read_id: str, pages: list[PageNote]) -> list[int]:
            changes = write(
                db, [], [PageNote(key, read_id, n.page, n.item_ids, n.pages_total, n.failed) for n in pages]
            )
            return [c["item_id"] for c in changes.changes if c["change"] == "delisted"]

        assert read("r1", [PageNote(key, "", 1, [1, 2], 2), PageNote(key, "", 2, [3, 4])]) == []
        # Pages in any order, from any worker: 4 is gone once both are read.
        assert read("r2", [PageNote(key, "", 2, [3])]) == []
        assert read("r2", [PageNote(key, "", 1, [1, 2], 2)]) == [4]
        # A failed page: the read is not complete, nothing is delisted.
        assert read("r3", [PageNote(key, "", 1, [1], 2), PageNote(key, "", 2, [], failed=True)]) == []
        # The number of pages unknown (a category cut short by max_pages): neither.
        assert read("r4", [PageNote(key, "", 1, [1])]) == []
        assert db.query("SELECT item_id FROM products WHERE delisted_at IS NOT NULL") == [(4,)]
    finally:
        db.close()


# -- crawls -------------------------------------------------------------------------------


@deferred_f_from_coro_f
async def test_the_same_crawl_again_bills_only_the_listing_pages(make_sandbox, tmp_path, store):
    sb = make_sandbox()
    first = await store_crawl(sb, tmp_path, store, "1")
    assert first.extra["calls"]["total"] == PAGES + 2 * PRODUCTS
    assert Counter(c["change"] for c in first.extra["changes"]) == {"new": PRODUCTS}
    second = await store_crawl(sb, tmp_path, store, "2")
    assert second.extra["calls"] == {"total": PAGES, "shop_items": PAGES}
    assert second.reason == "finished"
    assert not second.failures and not second.extra["changes"]
    # Every listed product once, as the first crawl wrote it, with when it was fetched.
    assert sorted(second.ids()) == sorted(first.ids())
    before = {r["item_id"]: r for r in first.records}
    for record in second.records:
        old = before[record["item_id"]]
        assert record["detail_fetched_at"] == old["detail_fetched_at"]
        assert record["desc_fetched_at"] == old["desc_fetched_at"]
        assert (record["title"], record["skus"], record["detail_html"]) == (
            old["title"],
            old["skus"],
            old["detail_html"],
        )
        assert record["listing"] is not None and record["crawled_at"] >= old["crawled_at"]


@deferred_f_from_coro_f
async def test_an_unchanged_product_is_a_record_without_a_request_of_its_own(make_sandbox, tmp_path, store):
    sb = make_sandbox()
    first = await store_crawl(sb, tmp_path, store, "1")
    assert first.stats["scheduler/enqueued"] == PAGES + 2 * PRODUCTS
    second = await store_crawl(sb, tmp_path, store, "2")
    # The listing pages only: each page's products came from one store query.
    assert second.stats["scheduler/enqueued"] == PAGES
    assert second.stats["tmapi/store/detail_from_store"] == PRODUCTS
    assert second.stats["tmapi/store/desc_from_store"] == PRODUCTS
    assert sorted(second.ids()) == sorted(first.ids())
    # Without the spider middleware, the same records through a request each.
    off = {"SPIDER_MIDDLEWARES": {"tmapi_crawler.store.middlewares.StoreSpiderMiddleware": None}}
    third = await store_crawl(sb, tmp_path, store, "3", settings=off)
    assert third.stats["scheduler/enqueued"] == PAGES + 2 * PRODUCTS
    assert third.extra["calls"] == {"total": PAGES, "shop_items": PAGES}
    strip = ("crawled_at",)
    assert [
        {k: v for k, v in r.items() if k not in strip} for r in sorted(third.records, key=lambda r: r["item_id"])
    ] == [{k: v for k, v in r.items() if k not in strip} for r in sorted(second.records, key=lambda r: r["item_id"])]


class ItemScrapedReceivers:
    """An extension of these tests: the ``item_scraped`` receivers of the
    crawl, by name, in its stats when the spider closes."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ItemScrapedReceivers:
        return cls(crawler)

    def closed(self) -> None:
        from pydispatch import dispatcher

        found = dispatcher.getAllReceivers(self.crawler.signals.sender, signals.item_scraped)
        names = [getattr(receiver, "__qualname__", "") for receiver in dispatcher.liveReceivers(found)]
        assert self.crawler.stats is not None
        self.crawler.stats.set_value("test/item_scraped_receivers", names)


@deferred_f_from_coro_f
async def test_a_re_crawl_the_store_answers_whole_tells_no_record_to_paid_answers(make_sandbox, tmp_path):
    """PaidAnswers counts, without JOBDIR, the calls paid for products not
    yet written: it is told of records from its first product call on, so
    that a re-crawl with nothing to pay for has one receiver of every record
    less (4% of its instructions)."""
    sb = make_sandbox()
    store = str(tmp_path / "catalog.sqlite")
    told = {"EXTENSIONS": {"tests.test_store.ItemScrapedReceivers": 0}}
    first = await store_crawl(sb, tmp_path, store, "1", settings=told)
    assert "PaidAnswers._item_scraped" in first.stats["test/item_scraped_receivers"]
    second = await store_crawl(sb, tmp_path, store, "2", settings=told)
    assert second.stats["tmapi/store/detail_from_store"] == PRODUCTS
    assert second.extra["calls"] == {"total": PAGES, "shop_items": PAGES}
    receivers = second.stats["test/item_scraped_receivers"]
    assert "PaidAnswers._item_scraped" not in receivers
    assert second.stats["tmapi/products"] == PRODUCTS  # counted (TmapiStats, told by the feed exports)


@deferred_f_from_coro_f
async def test_core_stats_count_every_record_through_tmapi_stats(make_sandbox, tmp_path):
    """TmapiStats counts ``item_scraped_count`` in the place of Scrapy's
    CoreStats, whose receiver of every record is disconnected (one asyncio
    task a record less), and is told of each record by the feed exports
    rather than by a receiver of its own (one more): the count is Scrapy's,
    change records included, and the feed exports are the one receiver."""
    sb = make_sandbox()
    store = str(tmp_path / "catalog.sqlite")
    told = {"EXTENSIONS": {"tests.test_store.ItemScrapedReceivers": 0}}
    first = await store_crawl(sb, tmp_path, store, "1", settings=told)
    assert "CoreStats.item_scraped" not in first.stats["test/item_scraped_receivers"]
    assert first.stats["item_scraped_count"] == PRODUCTS + first.stats["tmapi/changes"]
    second = await store_crawl(sb, tmp_path, store, "2", settings=told)
    assert second.stats["test/item_scraped_receivers"] == ["GuardedFeedExporter.item_scraped"]
    assert second.stats["item_scraped_count"] == PRODUCTS == len(second.records)
    assert second.stats["tmapi/products"] == PRODUCTS


@deferred_f_from_coro_f
async def test_changed_prices_cost_one_detail_each_and_say_what_changed(make_sandbox, tmp_path, store):
    sb = make_sandbox()
    first = await store_crawl(sb, tmp_path, store, "1")
    revised = sb.revise(0.15, delist=0.1)
    before = {r["item_id"]: r for r in first.records}
    third = await store_crawl(sb, tmp_path, store, "2")
    listed = set(third.ids())
    delisted = set(before) - listed
    assert delisted and len(listed) == PRODUCTS - len(delisted)
    # The products whose listing entry changed, and only those, are fetched again.
    changed = {
        r["item_id"] for r in third.records if r["detail_fetched_at"] != before[r["item_id"]]["detail_fetched_at"]
    }
    assert changed and revised["changed"] >= len(changed)
    assert {r["item_id"] for r in third.records if r["price_info"] != before[r["item_id"]]["price_info"]} == changed
    assert third.extra["calls"] == {"total": PAGES + len(changed), "shop_items": PAGES, "item_detail": len(changed)}
    assert all(r["desc_fetched_at"] == before[r["item_id"]]["desc_fetched_at"] for r in third.records)
    kinds = Counter(c["change"] for c in third.extra["changes"])
    assert kinds["delisted"] == len(delisted)
    assert {c["item_id"] for c in third.extra["changes"] if c["change"] == "delisted"} == delisted
    prices = [c for c in third.extra["changes"] if c["change"] == "price"]
    assert {c["item_id"] for c in prices} == changed
    for change in prices:  # per SKU, old and new as the API wrote them
        old_sku = next(s for s in before[change["item_id"]]["skus"] if s["skuid"] == change["skuid"])
        assert change["old"] == old_sku["sale_price"] and change["new"] != change["old"]
    for change in third.extra["changes"]:
        assert validate(ChangeItem(change)) is None
    # The store keeps every change with its time; the command reads them out.
    out = tmp_path / "all-changes.jsonl"
    done = run_scrapy("catalog", "changes", "--store", store, "--since", "2026-01-01", "-O", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    history = read_jsonl(out)
    assert len(history) == len(first.extra["changes"]) + len(third.extra["changes"])

    def order(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(changes, key=lambda c: (c["detected_at"], c["item_id"], str(c["skuid"]), c["change"]))

    assert history == order(history)  # oldest first
    assert history[len(first.extra["changes"]) :] == order(third.extra["changes"])
    exported = tmp_path / "catalog.jsonl"
    done = run_scrapy("catalog", "export", "--store", store, "-O", str(exported), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    catalog = {r["item_id"]: r for r in read_jsonl(exported)}
    assert set(catalog) == listed
    for record in third.records:
        assert catalog[record["item_id"]]["skus"] == record["skus"]
        assert catalog[record["item_id"]]["detail_fetched_at"] == record["detail_fetched_at"]


@deferred_f_from_coro_f
async def test_a_zero_max_age_fetches_every_detail_and_no_description(make_sandbox, tmp_path, store):
    sb = make_sandbox()
    await store_crawl(sb, tmp_path, store, "1")
    again = await store_crawl(sb, tmp_path, store, "2", settings={"TMAPI_DETAIL_MAX_AGE": 0})
    assert again.extra["calls"] == {"total": PAGES + PRODUCTS, "shop_items": PAGES, "item_detail": PRODUCTS}
    assert not again.extra["changes"]  # fetched again, and nothing changed
    assert len(again.records) == PRODUCTS


@deferred_f_from_coro_f
async def test_the_item_spider_uses_the_same_ages(make_sandbox, tmp_path):
    sb = make_sandbox()
    store = str(tmp_path / "catalog.sqlite")
    ids = "700020000001,700020000002"
    first = await store_crawl(sb, tmp_path, store, "1", spider="item", item_ids=ids)
    assert first.extra["calls"]["total"] == 4
    second = await store_crawl(sb, tmp_path, store, "2", spider="item", item_ids=ids)
    assert second.extra["calls"]["total"] == 0
    assert sorted(second.ids()) == [700020000001, 700020000002]
    aged = await store_crawl(sb, tmp_path, store, "3", spider="item", item_ids=ids, settings={"TMAPI_DESC_MAX_AGE": 0})
    assert aged.extra["calls"] == {"total": 2, "item_desc": 2}


@deferred_f_from_coro_f
async def test_no_delisting_from_a_failed_page_or_a_listing_cut_short(make_sandbox, tmp_path):
    store = str(tmp_path / "catalog.sqlite")
    await store_crawl(make_sandbox(), tmp_path, store, "1")
    broken = make_sandbox("--broken", f"shop:{SHOP}:2:truncated")
    broken.revise(0.0, delist=0.3)
    failed = await store_crawl(broken, tmp_path, store, "2")
    assert [f["endpoint"] for f in failed.failures] == ["shop_items"]
    assert not [c for c in failed.extra["changes"] if c["change"] == "delisted"]
    cut = await store_crawl(broken, tmp_path, store, "3", max_pages=1)
    assert not [c for c in cut.extra["changes"] if c["change"] == "delisted"]


@deferred_f_from_coro_f
async def test_a_category_read_completely_delists(make_sandbox, tmp_path):
    store = str(tmp_path / "catalog.sqlite")
    sb = make_sandbox("--categories", "1")
    first = await store_crawl(sb, tmp_path, store, "1", spider="category", cat_id="1032001")
    sb.revise(0.0, delist=0.2)
    again = await store_crawl(sb, tmp_path, store, "2", spider="category", cat_id="1032001")
    gone = set(first.ids()) - set(again.ids())
    assert gone
    assert {c["item_id"] for c in again.extra["changes"] if c["change"] == "delisted"} == gone


# -- bad input ------------------------------------------------------------------------------


def crawl_command(sb: SandboxProcess, tmp_path: Path, store: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_scrapy(
        "crawl", "shop", "-a", f"member_id={SHOP}", "-O", str(tmp_path / "products.jsonl"),
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"TMAPI_STORE={store}", *extra,
        cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN}, timeout=180,
    )  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "Error" in line or "ERROR" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_bad_store_urls_and_sqlite_with_redis_are_one_line(sandbox, tmp_path):
    assert_one_line(crawl_command(sandbox, tmp_path, "mysql://me:pw@h/db"), 2, "mysql:// is not a store")
    assert_one_line(crawl_command(sandbox, tmp_path, "/no/such/dir/c.sqlite"), 2, "/no/such/dir does not exist")
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    assert_one_line(crawl_command(sandbox, tmp_path, str(tmp_path / "notes.txt")), 2, "is not a SQLite database")
    done = crawl_command(sandbox, tmp_path, "c.sqlite", "-s", "REDIS_URL=redis://127.0.0.1:1/0")
    assert_one_line(done, 2, "workers of a distributed crawl cannot share", "postgresql://")
    assert sandbox.stats()["calls"] == 0


def test_postgres_refusing_the_password_is_one_line(sandbox, tmp_path, postgres_session: PostgresServer, postgres):
    wrong = postgres.replace(PostgresServer.PASSWORD, "not-the-password")
    done = crawl_command(sandbox, tmp_path, wrong)
    assert_one_line(done, 2, "refused the login", "check the user and password")
    assert "not-the-password" not in done.stderr
    assert sandbox.stats()["calls"] == 0


@starts_process
def small_disk(tmp_path: Path):
    """A directory on a file system of its own, 1 MB, that a test can make
    read-only or fill (a tmpfs; root only)."""
    needs("root")
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_store_is_one_line(sandbox, tmp_path, small_disk):
    store = small_disk / "catalog.sqlite"
    CatalogDB(parse_store_url(str(store))).close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert_one_line(crawl_command(sandbox, tmp_path, str(store)), 2, "read-only")
    assert sandbox.stats()["calls"] == 0


def test_a_full_disk_mid_crawl_stops_cleanly_loses_nothing_and_resumes(make_sandbox, tmp_path, small_disk):
    """The store fills its disk mid-crawl: one line, the crawl stops (exit 5)
    with every product it fetched in the feed; once there is room, the same
    command (JOBDIR) finishes, and the store holds every product whole."""
    sb = make_sandbox("--shop-size", "400")
    store, jobdir = small_disk / "catalog.sqlite", tmp_path / "job"
    feed = tmp_path / "products.jsonl"

    def run() -> subprocess.CompletedProcess[str]:
        return run_scrapy(
            "crawl", "shop", "-a", f"member_id={SHOP}", "-o", str(feed), "-s", f"JOBDIR={jobdir}",
            "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"TMAPI_STORE={store}",
            "-s", f"TMAPI_CHANGES_FILE={tmp_path / 'changes.jsonl'}",
            cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN}, timeout=180,
        )  # fmt: skip

    full = run()
    assert full.returncode == 5, full.stderr[-3000:]
    # One line from the store (the monitors then report the finish reason).
    errors = [line for line in full.stderr.splitlines() if "ERROR: " in line and "finish reason" not in line]
    assert len(errors) == 1 and "out of disk space" in errors[0], errors
    assert "Traceback" not in full.stderr
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [r["item_id"] for r in read_jsonl(feed)]
    assert len(ids) == len(set(ids)) == 400
    db = CatalogDB(parse_store_url(str(store)))
    try:
        stored = db.query("SELECT item_id, detail FROM products")
        skus = Counter(row[0] for row in db.query("SELECT item_id FROM skus"))
    finally:
        db.close()
    # Every product stored: none was acknowledged that the full disk kept out.
    assert {row[0] for row in stored} == set(ids)
    # Every stored product whole: its SKUs are its detail's.
    for item_id, detail in stored:
        assert skus[item_id] == len(json.loads(detail)["skus"])
    # What the full disk kept out of the store is fetched again by the next crawl.
    again = run_scrapy(
        "crawl", "shop", "-a", f"member_id={SHOP}", "-O", str(tmp_path / "again.jsonl"),
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"TMAPI_STORE={store}",
        cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN}, timeout=180,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(read_jsonl(tmp_path / "again.jsonl")) == 400


@pytest.mark.slow  # the real command
def test_catalog_commands_check_their_arguments(tmp_path):
    store = tmp_path / "catalog.sqlite"
    assert_one_line(run_scrapy("catalog", "export", "--store", str(store), cwd=tmp_path), 2, "no catalog store at")
    CatalogDB(parse_store_url(str(store))).close()
    assert_one_line(run_scrapy("catalog", "changes", "--store", str(store), cwd=tmp_path), 2, "give --since")
    done = run_scrapy("catalog", "changes", "--store", str(store), "--since", "last week", cwd=tmp_path)
    assert_one_line(done, 2, "is not a date")
    done = run_scrapy(
        "catalog", "changes", "--store", str(store), "--since", "2026-11-01", "--change", "cheaper", cwd=tmp_path
    )
    assert_one_line(done, 2, "unknown cheaper")
    assert_one_line(run_scrapy("catalog", "export", cwd=tmp_path), 2, "no catalog store")
    done = run_scrapy("catalog", "export", "--store", str(store), "-O", str(tmp_path / "c.jsonl"), cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "c.jsonl").read_text() == ""


def test_two_workers_share_one_postgresql_store(make_sandbox, redis_server, tmp_path, postgres):
    """Two workers over Redis, one PostgreSQL store: the second crawl of the
    shop bills only its pages, and after a day of changes each change is
    said once, by whichever worker fetched the product."""
    from tests.test_cluster import Worker

    products, pages = 200, 10
    sb = make_sandbox("--shop-size", str(products), "--latency-ms", "5")

    def run(tag: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        redis_server.client().flushall()  # a new crawl of the same seed (scrapy cluster reset)
        sb.reset()
        workers = [
            Worker(f"{tag}{n}", "shop", *(("-a", f"member_id={SHOP}") if n == 0 else ()), sandbox=sb,
                   redis=redis_server, cwd=tmp_path,
                   settings={"TMAPI_STORE": postgres, "TMAPI_CHANGES_FILE": tmp_path / f"{tag}{n}-changes.jsonl"})
            for n in range(2)
        ]  # fmt: skip
        assert [w.wait() for w in workers] == [0, 0], [w.log.read_text()[-2000:] for w in workers]
        records = [r for w in workers for r in w.records()]
        changes = [c for n in range(2) for c in read_jsonl(tmp_path / f"{tag}{n}-changes.jsonl")]
        return records, changes

    first, new = run("a")
    assert len(first) == len({r["item_id"] for r in first}) == products
    assert sb.stats()["billed"] == pages + 2 * products
    assert Counter(c["change"] for c in new) == {"new": products}
    again, none = run("b")
    assert sorted(r["item_id"] for r in again) == sorted(r["item_id"] for r in first)
    assert sb.stats()["calls"] == pages and not none
    sb.revise(0.1, delist=0.05)
    third, changes = run("c")
    gone = {r["item_id"] for r in first} - {r["item_id"] for r in third}
    fetched = {r["item_id"] for r in third if r["detail_fetched_at"] > max(x["crawled_at"] for x in first)}
    assert gone and fetched
    assert sb.stats()["calls"] == pages + len(fetched)
    assert {c["item_id"] for c in changes if c["change"] == "delisted"} == gone
    assert {c["item_id"] for c in changes if c["change"] == "price"} == fetched
    keys = [(c["change"], c["item_id"], c["skuid"]) for c in changes]
    assert len(keys) == len(set(keys))  # each said once


@deferred_f_from_coro_f
async def test_the_summary_says_what_the_store_did(make_sandbox, tmp_path, store, caplog):
    sb = make_sandbox()
    await store_crawl(sb, tmp_path, store, "1")
    sb.revise(0.15)
    caplog.set_level(logging.INFO)
    second = await store_crawl(sb, tmp_path, store, "2")
    served, saved = second.stats["tmapi/store/products_served"], second.stats["tmapi/store/calls_saved"]
    fetched = second.extra["calls"].get("item_detail", 0)
    assert served == PRODUCTS - fetched > 0
    assert saved == 2 * PRODUCTS - fetched - second.extra["calls"].get("item_desc", 0)
    kinds = Counter(c["change"] for c in second.extra["changes"])
    assert all(second.stats[f"tmapi/changes/{kind}"] == count for kind, count in kinds.items())
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("TMAPI summary"))
    # The revised products' details were fetched, their descriptions reused.
    reused = saved - 2 * served
    assert reused == fetched > 0
    assert f"from the store     {served} products and {reused} descriptions reused ({saved} calls saved)" in summary
    listed = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    assert f"changes            {listed} in " in summary


def test_a_store_of_schema_2_counts_its_listing_pages(store):
    url = parse_store_url(store)
    db = CatalogDB(url)
    try:
        write(db, [], [PageNote("shop_items?member_id=m", "r1", page, [page], pages_total=3) for page in (1, 2)])
        with db.transaction() as cur:
            _drop_schema_5(cur)
            cur.execute("DROP TABLE account_limits")
            cur.execute("DROP INDEX changes_by_kind")
            cur.execute("ALTER TABLE listing_reads DROP COLUMN pages_read")
            cur.execute("UPDATE tmapi_schema SET version = 2")
    finally:
        db.close()
    db = CatalogDB(url)  # migrated: the pages already read are counted
    try:
        assert db.query("SELECT pages_read FROM listing_reads") == [(2,)]
        write(db, [], [PageNote("shop_items?member_id=m", "r1", 3, [3])])
        assert db.query("SELECT completed_at IS NOT NULL FROM listing_reads") in ([(1,)], [(True,)])
    finally:
        db.close()


@deferred_f_from_coro_f
async def test_old_changes_are_pruned_when_a_crawl_ends(make_sandbox, tmp_path, store):
    db = CatalogDB(parse_store_url(store))
    try:
        old = [{"change": "price", "item_id": 1, "skuid": "1", "field": "price", "old": "1.00", "new": "2.00",
                "detected_at": f"2025-01-{day:02d}T00:00:00Z", "source": None} for day in range(1, 29)]  # fmt: skip
        insert_changes(db, old)
    finally:
        db.close()
    result = await store_crawl(make_sandbox(), tmp_path, store, "1", settings={"TMAPI_CHANGES_RETENTION": "30d"})
    assert result.stats["tmapi/store/changes_pruned"] == 28
    db = CatalogDB(parse_store_url(store))
    try:
        kept = db.query("SELECT change, COUNT(*) FROM changes GROUP BY change")
    finally:
        db.close()
    assert kept == [("new", PRODUCTS)]  # today's, none of last year's


def test_ages_are_spread_per_product():
    """A product's share of the max age is the same every run, from half to
    all of it, and spread: the details fetched together on a first day come
    due over the second half of the period, not all on one day."""
    from tmapi_crawler.store.decision import age_share

    shares = [age_share(700020000000 + n) for n in range(1000)]
    assert shares == [age_share(700020000000 + n) for n in range(1000)]
    assert all(0.5 <= share < 1 for share in shares)
    week = 7
    due_on = Counter(int(share * week) for share in shares)  # the day a detail fetched on day 0 comes due
    assert set(due_on) == {3, 4, 5, 6}
    assert max(due_on.values()) < 0.35 * len(shares)


# -- a damaged store ----------------------------------------------------------------------


def _first_crawl(make_sandbox: Any, tmp_path: Path, products: int = 400) -> tuple[SandboxProcess, Path, dict]:
    sb = make_sandbox("--shops", "1", "--shop-size", str(products))
    store = tmp_path / "catalog.sqlite"
    first = crawl_command(sb, tmp_path, str(store))
    assert first.returncode == 0, first.stderr[-3000:]
    records = {r["item_id"]: r for r in read_jsonl(tmp_path / "products.jsonl")}
    assert len(records) == products
    return sb, store, records


def _same_as_first(tmp_path: Path, first: dict) -> int:
    """Every record the damaged store's crawl wrote is the first crawl's
    product as it was (none made of a row that did not read back)."""
    made = read_jsonl(tmp_path / "products.jsonl")
    for record in made:
        was = first[record["item_id"]]
        assert (record["title"], record["skus"], record["detail_fetched_at"]) == (
            was["title"],
            was["skus"],
            was["detail_fetched_at"],
        )
    return len(made)


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_a_damaged_page_is_said_as_damaged_before_any_call(make_sandbox, tmp_path, where):
    """A 4 KiB page of the store overwritten (as a bad sector or a torn copy
    leaves it): refused before any call when SQLite's quick check sees it,
    else stopped at the first row that does not read back; either way the
    line says damaged and how to recover, never a full disk or "the same
    command stores it"; and scrapy catalog check says what is wrong."""
    sb, store, first = _first_crawl(make_sandbox, tmp_path)
    pages = store.stat().st_size // 4096
    with store.open("r+b") as f:
        f.seek(int(pages * where) * 4096)
        f.write(random.Random(where).randbytes(4096))
    sb.reset()
    done = crawl_command(sb, tmp_path, str(store), "-s", "TMAPI_PROGRESS_INTERVAL=0")
    assert done.returncode in (2, 5), done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "Error" in line or "ERROR" in line]
    assert errors and all("is damaged" in line for line in errors), done.stderr[-3000:]
    assert "sqlite3 " in errors[0] and ".recover" in errors[0] and str(store) in errors[0]
    for wrong in ("the same command stores it", "disk space", "Free some", "Traceback"):
        assert wrong not in done.stderr
    if done.returncode == 2:
        assert sb.stats()["calls"] == 0 and len(errors) == 1
    _same_as_first(tmp_path, first)
    check = run_scrapy("catalog", "check", "--store", str(store), cwd=tmp_path)
    assert check.returncode == 1, check.stderr
    assert f"{store} is not sound" in check.stderr and ".recover" in check.stderr


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE products SET detail_fetched_at = CAST(x'ff3a' AS TEXT) "
        "WHERE item_id = (SELECT max(item_id) FROM products)",
        "UPDATE products SET detail = CAST(x'7b2262726f6b' AS TEXT) "
        "WHERE item_id = (SELECT min(item_id) FROM products)",
    ],
    ids=["not-utf8", "not-json"],
)
def test_a_row_that_does_not_read_back_stops_the_crawl_and_makes_no_record(make_sandbox, tmp_path, damage):
    """Rows whose pages are sound but whose text is not what was written
    (bytes that are not UTF-8, a stored answer that is not JSON): SQLite's
    checks of pages cannot see them, so the crawl stops at the first such
    row with the finish reason of a failed store, says damaged, and no
    record is made of the row."""
    sb, store, first = _first_crawl(make_sandbox, tmp_path, products=100)
    db = sqlite3.connect(store)
    db.execute(damage)
    db.commit()
    db.close()
    sb.reset()
    done = crawl_command(sb, tmp_path, str(store), "-s", "TMAPI_PROGRESS_INTERVAL=0")
    assert done.returncode == 5, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "[tmapi_crawler" in line and "] ERROR: " in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "is damaged (" in errors[0] and ".recover" in errors[0] and str(store) in errors[0]
    assert "the same command stores it" not in done.stderr
    assert "no record was made from what could not be read" in done.stderr
    made = _same_as_first(tmp_path, first)
    assert made < 100
    damaged_id = max(first) if "max(" in damage else min(first)
    assert damaged_id not in {r["item_id"] for r in read_jsonl(tmp_path / "products.jsonl")}
    assert sb.stats()["calls_per_endpoint"].get("item_detail", 0) == 0  # nothing billed for a damaged row


def test_catalog_check_says_sound_or_each_problem(tmp_path, store):
    db = CatalogDB(parse_store_url(store))
    db.close()
    done = run_scrapy("catalog", "check", "--store", store, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("is sound")
    _set_version(parse_store_url(store), SCHEMA_VERSION + 1)
    done = run_scrapy("catalog", "check", "--store", store, cwd=tmp_path)
    assert done.returncode == 1
    assert "newer than this tmapi_crawler's" in done.stderr
    missing = run_scrapy("catalog", "check", "--store", str(tmp_path / "none.sqlite"), cwd=tmp_path)
    assert missing.returncode == 2 and "no catalog store at" in missing.stderr


def test_a_stored_description_given_with_its_detail_makes_the_product_without_a_request():
    """The store gives a still-good description with the stored detail
    (``STORED_DESC_META``): the detail's callback makes the product whole
    and asks for nothing; one that does not fit is asked for, left for the
    store to see that it was not taken."""
    from scrapy import Request
    from scrapy.http import TextResponse
    from scrapy.utils.test import get_crawler

    from tmapi_crawler import api
    from tmapi_crawler.records import ProductItem
    from tmapi_crawler.spiders.shop import ShopSpider

    crawler = get_crawler(ShopSpider, {"TMAPI_TOKEN": TOKEN, "ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0}})
    spider = ShopSpider.from_crawler(crawler, member_id=SHOP)
    detail = json.loads((Path(api.__file__).parent / "sandbox" / "data" / "item_detail.json").read_text("utf-8"))
    item_id = detail["data"]["item_id"]
    opts = spider.options(spider.args)
    kwargs = {"source": {"spider": "shop"}, "listing": None, "item_id": item_id, "opts": opts}

    def answer(given: Any) -> tuple[list[Any], TextResponse]:
        request = api.build_request("https://api.tmapi.io", api.Endpoint.ITEM_DETAIL, {"item_id": item_id})
        request.meta[api.STORED_DESC_META] = given
        response = TextResponse(request.url, body=json.dumps(detail).encode(), request=request)
        return list(spider.parse_detail(response, **kwargs)), response

    desc = {"detail_imgs": ["https://img.example/1.jpg"], "detail_html": "<p>made of wood</p>"}
    out, response = answer((desc, "2026-12-01T00:00:00.000000+00:00"))
    assert [type(o) for o in out] == [ProductItem]
    assert out[0]["detail_html"] == "<p>made of wood</p>" and out[0]["detail_imgs"] == desc["detail_imgs"]
    assert out[0]["desc_fetched_at"] == "2026-12-01T00:00:00.000000+00:00"
    assert api.STORED_DESC_META not in response.meta  # taken: the store counts it as answered

    out, response = answer(({"detail_imgs": "not a list"}, "2026-12-01T00:00:00.000000+00:00"))
    assert [type(o) for o in out] == [Request]
    assert api.endpoint_of(out[0]) is api.Endpoint.ITEM_DESC
    assert api.STORED_DESC_META in response.meta
