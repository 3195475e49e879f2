"""The store's tables (docs/catalog.md), their migrations, and a store made
ready for use: created on first use, an older one migrated, a newer one or a
database that is not ours refused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmapi_crawler.store.url import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tmapi_crawler.store.dialect import Dialect
    from tmapi_crawler.store.url import StoreURL

#: The store's schema version; a store written by a newer version is refused,
#: an older one is migrated (:data:`MIGRATIONS`).
SCHEMA_VERSION = 5


def _schema(d: Dialect) -> list[str]:
    ts = d.timestamp
    return [
        "CREATE TABLE tmapi_schema (version INTEGER NOT NULL)",
        f"""CREATE TABLE products (
            item_id BIGINT PRIMARY KEY,
            title TEXT NOT NULL,
            language TEXT NOT NULL,
            shop TEXT,
            price {d.decimal},
            stock BIGINT,
            sold_out BOOLEAN NOT NULL,
            listing_sig TEXT,
            listing TEXT,
            source TEXT,
            detail TEXT NOT NULL,
            detail_fetched_at {ts} NOT NULL,
            description TEXT,
            desc_fetched_at {ts},
            first_seen_at {ts} NOT NULL,
            delisted_at {ts}
        )""",
        f"""CREATE TABLE skus (
            item_id BIGINT NOT NULL REFERENCES products (item_id) ON DELETE CASCADE,
            skuid TEXT NOT NULL,
            props_names TEXT,
            price {d.decimal},
            stock BIGINT,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (item_id, skuid)
        )""",
        f"""CREATE TABLE changes (
            id {d.serial},
            detected_at {ts} NOT NULL,
            item_id BIGINT NOT NULL,
            skuid TEXT,
            change TEXT NOT NULL,
            field TEXT,
            old TEXT,
            new TEXT,
            source TEXT
        )""",
        "CREATE INDEX changes_by_item ON changes (item_id, detected_at)",
        "CREATE INDEX changes_by_time ON changes (detected_at, change)",
        CHANGES_BY_KIND,
        f"""CREATE TABLE listing_reads (
            listing_key TEXT PRIMARY KEY,
            read_id TEXT NOT NULL,
            started_at {ts} NOT NULL,
            pages_total INTEGER,
            failed BOOLEAN NOT NULL,
            completed_at {ts},
            pages_read INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE listing_pages (
            listing_key TEXT NOT NULL,
            page INTEGER NOT NULL,
            PRIMARY KEY (listing_key, page)
        )""",
        """CREATE TABLE listing_members (
            listing_key TEXT NOT NULL,
            item_id BIGINT NOT NULL,
            read_id TEXT NOT NULL,
            PRIMARY KEY (listing_key, item_id)
        )""",
        _crawls_table(d),
        _limits_table(d),
        *_refresh_schema(d),
        f"INSERT INTO tmapi_schema (version) VALUES ({SCHEMA_VERSION})",  # noqa: S608 - a constant
    ]


def _refresh_schema(d: Dialect) -> list[str]:
    """Schema 5: what the refresh policy knows of each product (its history
    of changes that matter, the rate estimated from it, the listing's
    counters and its smallest stock when it was fetched), each shop's rate
    (the prior of its products), and each crawl's refresh figures."""
    real = d.real
    return [
        "ALTER TABLE products ADD COLUMN refresh_history TEXT",
        f"ALTER TABLE products ADD COLUMN refresh_rate {real}",
        "ALTER TABLE products ADD COLUMN orders_seen BIGINT",
        "ALTER TABLE products ADD COLUMN units_seen BIGINT",
        "ALTER TABLE products ADD COLUMN min_stock BIGINT",
        f"CREATE TABLE shop_rates (shop TEXT PRIMARY KEY, rate_sum {real} NOT NULL, products BIGINT NOT NULL)",
        "ALTER TABLE crawls ADD COLUMN descriptions_reused BIGINT",
        "ALTER TABLE crawls ADD COLUMN refresh_budget BIGINT",
        "ALTER TABLE crawls ADD COLUMN refresh_spent BIGINT",
        "ALTER TABLE crawls ADD COLUMN refresh_caught BIGINT",
        f"ALTER TABLE crawls ADD COLUMN estimated_current {real}",
    ]


def _crawls_table(d: Dialect) -> str:
    """Schema 2: each crawl that wrote to the store (one row per crawl in
    distributed mode, every worker adding to it), for the report."""
    ts = d.timestamp
    return f"""CREATE TABLE crawls (
            id TEXT PRIMARY KEY,
            spider TEXT NOT NULL,
            seed TEXT,
            started_at {ts} NOT NULL,
            finished_at {ts} NOT NULL,
            finish_reason TEXT NOT NULL,
            workers INTEGER NOT NULL,
            products BIGINT NOT NULL,
            calls BIGINT NOT NULL,
            served BIGINT NOT NULL,
            changes TEXT NOT NULL
        )"""


#: Schema 4: changes of one kind (the report's sold out, back in stock, new,
#: delisted, price movers), in a period, without reading the others.
CHANGES_BY_KIND = "CREATE INDEX changes_by_kind ON changes (change, detected_at, item_id)"


def _limits_table(d: Dialect) -> str:
    """Schema 4: the concurrency limit the gate found for an account (API
    host and token fingerprint), where the next crawl starts."""
    return f"""CREATE TABLE account_limits (
            account TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            updated_at {d.timestamp} NOT NULL
        )"""


#: version -> the statements (for a dialect) that bring a store of that
#: version to the next.
MIGRATIONS: dict[int, Callable[[Dialect], list[str]]] = {
    1: lambda d: [_crawls_table(d)],
    # Schema 3: the pages of a listing's read counted as they come, so that no
    # statement run per page counts them all (it grew with the pages squared).
    2: lambda d: [
        "ALTER TABLE listing_reads ADD COLUMN pages_read INTEGER NOT NULL DEFAULT 0",
        "UPDATE listing_reads SET pages_read = "
        "(SELECT COUNT(*) FROM listing_pages p WHERE p.listing_key = listing_reads.listing_key)",
    ],
    # Schema 4: the account's limit remembered; the report's counts by kind
    # read an index, not the whole table.
    3: lambda d: [_limits_table(d), CHANGES_BY_KIND],
    4: _refresh_schema,
}


def check_schema(cur: Any, dialect: Dialect, url: StoreURL, *, create: bool) -> None:
    """Create the tables on first use (with *create*), migrate an older
    store, refuse a newer one or a database whose tables are not ours."""
    tables = dialect.tables(cur)
    if "tmapi_schema" not in tables:
        if "products" in tables:
            raise StoreError(
                f"the database {url.display} has a products table that tmapi_crawler did not create: "
                "give TMAPI_STORE a database (or file) of its own"
            )
        if not create:
            raise StoreError(f"{url.display} is not a catalog store: run a crawl with TMAPI_STORE first")
        for statement in _schema(dialect):
            cur.execute(statement)
        return
    version = cur.execute("SELECT version FROM tmapi_schema").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the catalog store {url.display} has schema version {version}, newer than this "
            f"tmapi_crawler's ({SCHEMA_VERSION}): upgrade tmapi_crawler"
        )
    if version < SCHEMA_VERSION and not create:
        raise StoreError(
            f"the catalog store {url.display} has schema version {version}: run a crawl with it once to migrate it"
        )
    while version < SCHEMA_VERSION:
        steps = MIGRATIONS.get(version)
        if steps is None:
            raise StoreError(
                f"the catalog store {url.display} has schema version {version}, which this "
                "tmapi_crawler cannot migrate: export it with the version that wrote it"
            )
        for statement in steps(dialect):
            cur.execute(statement)
        version += 1
        cur.execute("UPDATE tmapi_schema SET version = version + 1")
