"""The catalog store's database: SQLite or PostgreSQL behind one small class.

Why the standard ``sqlite3`` plus ``psycopg`` 3 rather than an ORM or
SQLAlchemy Core: the store is a dozen statements, and the two dialects agree
on nearly all of them (``INSERT ... ON CONFLICT DO UPDATE``, ``?``/``%s``
being the one spelling that differs).  Everything they do differently
(types, connecting, transactions, cursors, what an error means) is in
:class:`Dialect`, in one place.  SQLite needs nothing
installed; psycopg 3 is PostgreSQL's maintained driver, and is imported only
when a ``postgresql://`` store is used.

A :class:`CatalogDB` is one connection, used from one thread at a time
(:mod:`tmapi_crawler.store.crawl` runs a reader and a writer, each in a
thread of its own).  Every write goes through :meth:`CatalogDB.write`: one
transaction for a batch of products and listing pages, so that a product is
never half-written (its row, its SKUs and its changes land together or not at
all).  The tables are documented in docs/catalog.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from tmapi_crawler.records import RECORD_FIELDS, assemble_product, decimal_of, now_precise
from tmapi_crawler.store.changes import Sku, State, change_record, diff, listing_signature, state_of
from tmapi_crawler.store.freshness import RefreshRows
from tmapi_crawler.store.url import StoreDamaged, StoreError, StoreURL

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator, Sequence

#: The store's schema version; a store written by a newer version is refused,
#: an older one is migrated (:data:`MIGRATIONS`).
SCHEMA_VERSION = 5
#: SQLite's primary result codes of a lock held by another connection: it passes.
SQLITE_TRANSIENT = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
#: PostgreSQL's SQLSTATE classes and codes of an outage that passes:
#: connection exceptions, the server shutting down or starting, too many
#: connections, a serialization failure or deadlock (a transaction to try again).
PG_TRANSIENT_CLASSES = frozenset({"08"})
PG_TRANSIENT = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
#: Change rows deleted in one transaction when old ones are pruned.
PRUNE_BATCH = 5000
#: The PostgreSQL advisory lock taken while the tables are created or migrated.
SCHEMA_LOCK = 0x746D617069  # "tmapi"


def iso(value: Any) -> str | None:
    """A timestamp as the records write it: ISO 8601, UTC, microseconds, ``Z``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


# -- dialects -------------------------------------------------------------------------


#: What is wrong, from a driver's error (:meth:`Dialect.problem`): the store
#: read-only, its disk full, its file not openable, a SQLite file that is not
#: a database; PostgreSQL's login refused, its server unreachable, its
#: database missing.
Problem = str
READ_ONLY, DISK_FULL, CANNOT_OPEN, NOT_A_DATABASE = "read-only", "disk full", "cannot open", "not a database"
#: Pages or rows that do not read back as written (SQLite's SQLITE_CORRUPT, a
#: text that is not UTF-8, a stored answer that is not JSON; PostgreSQL's
#: XX001 and XX002).
DAMAGED = "damaged"
LOGIN_REFUSED, UNREACHABLE, NO_DATABASE = "login refused", "unreachable", "no database"


@dataclass(frozen=True, slots=True)
class Dialect:
    """Everything SQLite and PostgreSQL do differently, so that the code of
    the statements has no branch on which one it talks to: column types,
    the parameter mark, row locks, connecting, the schema's lock, listing
    tables, a transaction, a server-side cursor, and what an error means."""

    timestamp: str
    serial: str
    #: Prices, exact as the API wrote them ("25.90"): SQLite would make a
    #: NUMERIC column a float ("25.9").
    decimal: str
    #: What locks the rows a SELECT read, to the end of the transaction
    #: (SQLite's transactions take the write lock at once: nothing).
    lock: str = ""
    #: A timestamp column's day, ``YYYY-MM-DD`` in UTC (``{}``: the column).
    day: str = "substr({}, 1, 10)"
    #: Whether a connection an outage broke is replaced by a new one.
    reconnects: bool = False
    #: A text column's UTF-8 bytes (``{}``: the column): a stored answer read
    #: as bytes is not decoded to read it and encoded again to answer with it.
    utf8: str = "CAST({} AS BLOB)"
    #: A floating-point column.
    real: str = "REAL"

    def sql(self, text: str) -> str:
        return text

    def connect(self, url: StoreURL, create: bool) -> Any:
        raise NotImplementedError

    def lock_schema(self, cur: Any) -> None:
        """Serialize the creation and migration of the tables among the
        workers starting together (SQLite's write lock already does)."""

    def tables(self, cur: Any) -> set[str]:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        raise NotImplementedError
        yield  # pragma: no cover

    def stream(self, conn: Any, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def transient(self, exc: BaseException) -> bool:
        """Whether *exc* is an outage that may pass, by the driver's codes."""
        raise NotImplementedError

    def problem(self, exc: BaseException, url: StoreURL) -> Problem | None:
        """What *exc* says is wrong (one of the constants above), if it is
        one the user can fix; ``None`` for anything else."""
        if isinstance(exc, OSError):
            return {errno.ENOSPC: DISK_FULL, errno.EROFS: READ_ONLY, errno.EACCES: READ_ONLY}.get(exc.errno or 0)
        return None


@dataclass(frozen=True, slots=True)
class _SQLite(Dialect):
    #: Primary result codes (``sqlite_errorcode & 0xFF``).
    codes: tuple[tuple[int, Problem], ...] = (
        (8, READ_ONLY),
        (11, DAMAGED),
        (13, DISK_FULL),
        (14, CANNOT_OPEN),
        (26, NOT_A_DATABASE),
    )

    def connect(self, url: StoreURL, create: bool) -> Any:
        path = url.target
        file = Path(path)
        if not create and not file.exists():
            raise StoreError(f"no catalog store at {path}: run a crawl with -s TMAPI_STORE={path} first")
        if file.is_dir():
            raise StoreError(f"TMAPI_STORE={path} is a directory: give a file, such as {file / 'catalog.sqlite'}")
        if not file.parent.is_dir():
            raise StoreError(f"cannot create the catalog store {path}: the directory {file.parent} does not exist")
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def tables(self, cur: Any) -> set[str]:
        return {row[0] for row in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        """SQLite's takes the write lock at once (``BEGIN IMMEDIATE``), so that
        two writers wait rather than fail."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def stream(self, conn: Any, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        yield from conn.execute(sql, tuple(params))

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", 0) & 0xFF in SQLITE_TRANSIENT

    def problem(self, exc: BaseException, url: StoreURL) -> Problem | None:
        if not isinstance(exc, sqlite3.Error):
            return Dialect.problem(self, exc, url)
        if str(exc).startswith("Could not decode to UTF-8"):
            return DAMAGED  # Python's sqlite3 reading a text that is not UTF-8 (no SQLite code)
        found = dict(self.codes).get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
        if found == CANNOT_OPEN:
            file = Path(url.target)
            if not os.access(file.parent, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
                return READ_ONLY  # SQLite's WAL needs to write beside the file
        return found


@dataclass(frozen=True, slots=True)
class _Postgres(Dialect):
    #: SQLSTATEs of what the user can fix.
    codes: tuple[tuple[str, Problem], ...] = (
        ("25006", READ_ONLY),
        ("53100", DISK_FULL),
        ("28P01", LOGIN_REFUSED),
        ("28000", LOGIN_REFUSED),
        ("3D000", NO_DATABASE),
        ("XX001", DAMAGED),
        ("XX002", DAMAGED),
    )
    #: libpq gives no SQLSTATE for a connection that failed (psycopg's
    #: ``sqlstate`` is ``None``): the server's own message tells these apart.
    connect_messages: tuple[tuple[str, Problem], ...] = (
        ("password authentication failed", LOGIN_REFUSED),
        ("no password supplied", LOGIN_REFUSED),
        ("does not exist", NO_DATABASE),
        ("connection refused", UNREACHABLE),
        ("could not connect", UNREACHABLE),
        ("timeout expired", UNREACHABLE),
        ("could not translate host name", UNREACHABLE),
    )

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def connect(self, url: StoreURL, create: bool) -> Any:
        try:
            import psycopg  # only for a postgresql:// store
        except ImportError:  # pragma: no cover - psycopg is in requirements.txt
            raise StoreError("a PostgreSQL store needs psycopg: pip install 'psycopg[binary]'") from None
        return psycopg.connect(url.target, autocommit=True, connect_timeout=10, application_name="tmapi_crawler")

    def lock_schema(self, cur: Any) -> None:
        cur.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")

    def tables(self, cur: Any) -> set[str]:
        rows = cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        return {row[0] for row in rows}

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        with conn.transaction():
            yield conn.cursor()

    def stream(self, conn: Any, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        """A server-side cursor: the rows come as they are read."""
        with conn.transaction(), conn.cursor(name="tmapi_export") as cur:
            cur.execute(sql, tuple(params))
            yield from cur

    def transient(self, exc: BaseException) -> bool:
        import psycopg  # loaded already: this store is PostgreSQL's

        if not isinstance(exc, psycopg.Error):
            return False
        sqlstate = exc.sqlstate
        if sqlstate is not None:
            return sqlstate[:2] in PG_TRANSIENT_CLASSES or sqlstate in PG_TRANSIENT
        # No code: the client lost (or could not make) the connection.
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    def problem(self, exc: BaseException, url: StoreURL) -> Problem | None:
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate is not None:
            return dict(self.codes).get(sqlstate)
        if type(exc).__name__ == "OperationalError":  # psycopg's, at connect
            low = str(exc).lower()
            return next((problem for text, problem in self.connect_messages if text in low), None)
        return Dialect.problem(self, exc, url)


SQLITE = _SQLite(timestamp="TEXT", serial="INTEGER PRIMARY KEY AUTOINCREMENT", decimal="TEXT")
POSTGRES = _Postgres(
    timestamp="TIMESTAMPTZ",
    serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    decimal="NUMERIC",
    lock=" FOR UPDATE",
    day="to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    reconnects=True,
    utf8="convert_to({}, 'UTF8')",
    real="DOUBLE PRECISION",
)
DIALECTS: dict[str, Dialect] = {"sqlite": SQLITE, "postgresql": POSTGRES}


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


# -- what is read and written -------------------------------------------------------


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


@dataclass(slots=True)
class PageNote:
    """A listing page read (or failed): which listing (seed and filters),
    which read of it (one crawl's), the page, the products it named, and how many pages the listing has when
    this page tells (``None`` when it does not)."""

    listing_key: str
    read_id: str
    page: int
    item_ids: list[int] = field(default_factory=list)
    pages_total: int | None = None
    failed: bool = False
    at: str = field(default_factory=now_precise)


class ProductRow(NamedTuple):
    """A row of ``products`` as a crawl writes it: the INSERT's columns are
    these fields, by name (``delisted_at`` is cleared)."""

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


@dataclass(slots=True)
class WriteResult:
    """What a batch did: the change records it stored, and how many
    products it wrote."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0
    #: The products fetched again whose fetch found a change that matters.
    mattered: list[int] = field(default_factory=list)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


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


def _number(value: str | None) -> str | None:
    """A price for a NUMERIC column, or ``None`` when it is not one: the
    records' rule (:func:`tmapi_crawler.records.decimal_of`: finite, 0 or
    more), so that ``"nan"`` or ``"-1"`` is no price in the store either."""
    return value if decimal_of(value) is not None else None


# -- the database -----------------------------------------------------------------------


class CatalogDB:
    """One connection to the store (see the module's docstring)."""

    def __init__(self, url: StoreURL, *, create: bool = True, max_age: float = 7 * 86400.0):
        self.url = url
        #: TMAPI_DETAIL_MAX_AGE: the scale of the refresh policy's rates.
        self.max_age = max_age
        self.dialect = DIALECTS[url.kind]
        try:
            self.conn: Any = self.dialect.connect(url, create)
        except StoreError:
            raise
        except Exception as exc:
            raise self.error(exc) from None
        try:
            self._prepare(create)
        except BaseException:
            self.close()
            raise

    def _prepare(self, create: bool) -> None:
        """Create the tables on first use, migrate an older store, refuse a
        newer one or a database whose tables are not ours.  With *create*,
        all of it in one transaction under the store's lock (SQLite's write
        lock, a PostgreSQL advisory lock), so that workers starting together
        create the tables once; and a store that cannot be written is
        refused now, not mid-crawl."""
        try:
            if not create:
                self._check_schema(self.conn, create=False)
                return
            with self.transaction() as cur:
                self.dialect.lock_schema(cur)
                self._check_schema(cur, create=True)
                cur.execute("UPDATE tmapi_schema SET version = version")
        except StoreError:
            raise
        except Exception as exc:
            raise self.error(exc) from None

    def _check_schema(self, cur: Any, *, create: bool) -> None:
        tables = self.dialect.tables(cur)
        if "tmapi_schema" not in tables:
            if "products" in tables:
                raise StoreError(
                    f"the database {self.url.display} has a products table that tmapi_crawler did not create: "
                    "give TMAPI_STORE a database (or file) of its own"
                )
            if not create:
                raise StoreError(f"{self.url.display} is not a catalog store: run a crawl with TMAPI_STORE first")
            for statement in _schema(self.dialect):
                cur.execute(statement)
            return
        version = cur.execute("SELECT version FROM tmapi_schema").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the catalog store {self.url.display} has schema version {version}, newer than this "
                f"tmapi_crawler's ({SCHEMA_VERSION}): upgrade tmapi_crawler"
            )
        if version < SCHEMA_VERSION and not create:
            raise StoreError(
                f"the catalog store {self.url.display} has schema version {version}: "
                "run a crawl with it once to migrate it"
            )
        while version < SCHEMA_VERSION:
            steps = MIGRATIONS.get(version)
            if steps is None:
                raise StoreError(
                    f"the catalog store {self.url.display} has schema version {version}, which this "
                    "tmapi_crawler cannot migrate: export it with the version that wrote it"
                )
            for statement in steps(self.dialect):
                cur.execute(statement)
            version += 1
            cur.execute("UPDATE tmapi_schema SET version = version + 1")

    def error(self, exc: BaseException) -> StoreError:
        """*exc* from the driver as one line that says what to do."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = self.url.display
        problem = self.dialect.problem(exc, self.url)
        messages = {
            READ_ONLY: f"the catalog store {where} is read-only: make it writable, or point TMAPI_STORE elsewhere",
            DISK_FULL: f"the catalog store {where} is out of disk space: free some and run the same command again "
            "(nothing is lost: what was not stored is fetched again)",
            CANNOT_OPEN: f"cannot open the catalog store {where}: check that the file and its directory are writable",
            LOGIN_REFUSED: f"PostgreSQL refused the login to {where} ({text}): "
            "check the user and password in TMAPI_STORE",
            UNREACHABLE: f"cannot reach PostgreSQL at {where} ({text}): is the server running and the address right?",
            NO_DATABASE: f"{text} at {where}: create it (createdb) or fix the database name in TMAPI_STORE",
            NOT_A_DATABASE: f"{where} is not a SQLite database ({text}): point TMAPI_STORE at a file of its own",
        }
        if problem == DAMAGED:
            return self.damaged(text)
        return StoreError(messages.get(problem or "", f"the catalog store {where} failed: {text}"))

    def damaged(self, what: str) -> StoreDamaged:
        """The store is damaged (*what* says where it showed): how to recover."""
        where = self.url.display
        if self.url.kind == "sqlite":
            recover = (
                f"recover it into a new file (sqlite3 {where} .recover | sqlite3 recovered.sqlite) or restore a "
                "backup, and point TMAPI_STORE at that; scrapy catalog check says when a store is sound"
            )
        else:
            recover = "restore a backup of the database (REINDEX for a damaged index); scrapy catalog check checks it"
        what = " ".join(what.split())[:200]
        return StoreDamaged(f"the catalog store {where} is damaged ({what}): {recover}")

    def transient(self, exc: BaseException) -> bool:
        """Whether *exc* is an outage that may pass (PostgreSQL restarting,
        a failover, a lock held a while), by the driver's own codes; a
        full disk, a read-only file or a refused password is not."""
        return self.dialect.transient(exc)

    def reconnect(self) -> None:
        """A new connection in place of one an outage broke (PostgreSQL);
        SQLite's survives."""
        if self.dialect.reconnects:
            self.close()
            self.conn = self.dialect.connect(self.url, True)

    # -- transactions --------------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """``with db.transaction() as cur``: one transaction, committed on
        success, rolled back on error."""
        return self.dialect.transaction(self.conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = self.conn.execute(self.dialect.sql(sql), tuple(params))
        rows: list[Any] = cur.fetchall()
        return rows

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing what failed: nothing more to say
            self.conn.close()

    # -- the refresh decision -------------------------------------------------------------

    def lookup(self, item_ids: Sequence[int]) -> dict[int, Stored]:
        """What the store has of each of *item_ids* (one query).  Every row is
        read whole here, its stored answers parsed: a row that does not read
        back (a damaged store) raises :class:`StoreDamaged`, and no record is
        made of it."""
        utf8 = self.dialect.utf8
        rows = self.query(
            f"SELECT item_id, {utf8.format('detail')}, detail_fetched_at, {utf8.format('description')}, "  # noqa: S608
            "desc_fetched_at, listing_sig, language, shop, refresh_rate, orders_seen, units_seen, min_stock "
            f"FROM products WHERE item_id IN ({','.join('?' * len(item_ids))})",
            item_ids,
        )
        found = {}
        for row in rows:
            try:
                stored = _stored(*row)
            except (ValueError, TypeError, AttributeError) as exc:  # orjson's JSONDecodeError is a ValueError
                raise self.damaged(f"product {row[0]!r}: {type(exc).__name__}: {exc}") from None
            found[stored.item_id] = stored
        return found

    def quick_check(self, seconds: float) -> list[str] | None:
        """SQLite's ``quick_check`` for at most *seconds*: its problems (empty
        when sound), or ``None`` when it could not finish in time (a large
        store: the rows are checked as they are read)."""
        return self._check("quick_check", seconds)

    def integrity_check(self) -> list[str]:
        """The store's problems, one line each (empty when sound): SQLite's
        full ``integrity_check``; for PostgreSQL, the schema and its version
        (the server checks its own pages)."""
        problems = self._check("integrity_check", None) or []
        try:
            tables = self.dialect.tables(self.conn)
        except Exception as exc:
            return [*problems, str(self.error(exc))]
        missing = sorted({"tmapi_schema", "products", "skus", "changes", "crawls"} - tables)
        problems += [f"table {name} is missing" for name in missing]
        if "tmapi_schema" not in missing:
            try:
                version = self.query("SELECT version FROM tmapi_schema")[0][0]
            except Exception as exc:
                return [*problems, f"tmapi_schema cannot be read: {self.error(exc)}"]
            if version != SCHEMA_VERSION:
                problems.append(f"schema version {version}, this tmapi_crawler's is {SCHEMA_VERSION}")
        return problems

    def _check(self, pragma: str, seconds: float | None) -> list[str] | None:
        if self.url.kind != "sqlite":
            return []
        deadline = None if seconds is None else time.monotonic() + seconds
        if deadline is not None:
            self.conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            rows = self.conn.execute(f"PRAGMA {pragma}").fetchall()
        except sqlite3.OperationalError as exc:
            if deadline is not None and time.monotonic() > deadline and "interrupted" in str(exc):
                return None
            return [str(self.error(exc))]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        finally:
            if deadline is not None:
                self.conn.set_progress_handler(None, 0)
        # SQLite heads a message with "*** in database main ***" and may
        # put several on one row: one line each.
        problems = [line.strip() for row in rows for line in str(row[0]).splitlines()]
        problems = [line for line in problems if line and not line.startswith("***")]
        return [] if problems == ["ok"] else problems

    # -- writing -----------------------------------------------------------------------------

    def write(self, records: Sequence[dict[str, Any]], pages: Sequence[PageNote] = ()) -> WriteResult:
        """Store a batch of product records and listing pages in one
        transaction: the products fetched anew (their detail or their
        description is newer than the stored one), their SKUs and the
        changes from the stored state; then each listing page, and the
        ``delisted`` changes of a listing read completely.  Returns the
        change records."""
        result = WriteResult()
        with self.transaction() as cur:
            if records:
                self._write_products(cur, records, result)
            for note in pages:
                self._write_page(cur, note, result)
        return result

    def _old_states(self, cur: Any, ids: list[int]) -> dict[int, tuple[State, str, str | None, str | None, Any]]:
        marks = ",".join("?" * len(ids))
        rows = cur.execute(
            self.dialect.sql(
                "SELECT item_id, title, language, stock, detail_fetched_at, desc_fetched_at, "  # noqa: S608
                f"refresh_history, refresh_rate FROM products WHERE item_id IN ({marks})"
            ),
            ids,
        ).fetchall()
        old: dict[int, tuple[State, str, str | None, str | None, Any]] = {}
        for item_id, title, language, stock, detail_at, desc_at, history, rate in rows:
            old[item_id] = (State(title, language, stock), str(iso(detail_at)), iso(desc_at), history, rate)
        if old:
            found = list(old)
            sku_rows = cur.execute(
                self.dialect.sql(
                    "SELECT item_id, skuid, props_names, price, stock FROM skus "  # noqa: S608
                    f"WHERE item_id IN ({','.join('?' * len(found))})"
                ),
                found,
            ).fetchall()
            for item_id, skuid, props, price, stock in sku_rows:
                old[item_id][0].skus[skuid] = Sku(props, None if price is None else str(price), stock)
        return old

    def _write_products(self, cur: Any, records: Sequence[dict[str, Any]], result: WriteResult) -> None:
        """The batch's records, a run of distinct products at a time (a
        product twice in a batch is compared with what the first wrote)."""
        run: list[dict[str, Any]] = []
        ids: set[int] = set()
        for record in records:
            item_id = int(record["item_id"])
            if item_id in ids:
                self._write_run(cur, run, result)
                run, ids = [], set()
            run.append(record)
            ids.add(item_id)
        if run:
            self._write_run(cur, run, result)

    def _write_run(self, cur: Any, records: Sequence[dict[str, Any]], result: WriteResult) -> None:
        """Records of distinct products: a few statements for them all
        (``executemany``), whatever their number."""
        sql = self.dialect.sql
        old = self._old_states(cur, sorted(int(r["item_id"]) for r in records))
        products: list[ProductRow] = []
        skus: list[tuple[Any, ...]] = []
        descriptions: list[tuple[Any, ...]] = []
        changes: list[dict[str, Any]] = []
        refresh = RefreshRows()
        for record in records:
            item_id = int(record["item_id"])
            before = old.get(item_id)
            detail_at, desc_at = record.get("detail_fetched_at"), record.get("desc_fetched_at")
            detail_new = before is None or detail_at != before[1]
            desc_new = desc_at is not None and (before is None or desc_at != before[2])
            if not detail_new and not desc_new:
                continue  # answered from the store: nothing new
            result.written += 1
            description = (
                _json({"detail_imgs": record.get("detail_imgs"), "detail_html": record.get("detail_html")})
                if desc_new
                else None
            )
            if not detail_new:
                descriptions.append((description, desc_at, item_id))
                continue
            detail = _detail_of(record)
            state = state_of(detail, record["language"])
            products.append(
                ProductRow(
                    item_id=item_id,
                    title=state.title,
                    language=record["language"],
                    shop=_shop(detail),
                    price=_price_of(detail),
                    stock=state.stock,
                    sold_out=state.sold_out,
                    listing_sig=listing_signature(record.get("listing")),
                    listing=_json(record.get("listing")),
                    source=_json(record.get("source")),
                    detail=orjson.dumps(detail).decode(),
                    detail_fetched_at=detail_at,
                    description=description,
                    desc_fetched_at=desc_at if desc_new else None,
                    first_seen_at=detail_at,
                )
            )
            skus += [
                (item_id, skuid, sku.props, _number(sku.price), sku.stock, detail_at)
                for skuid, sku in state.skus.items()
            ]
            found = diff(
                item_id, before[0] if before else None, state, detected_at=str(detail_at), source=record.get("source")
            )
            changes += found
            refresh.add(record, state, _shop(detail), before, found)
        if products:
            cur.executemany(
                sql(
                    f"INSERT INTO products ({', '.join(ProductRow._fields)}, delisted_at) "  # noqa: S608 - our names
                    f"VALUES ({', '.join('?' * len(ProductRow._fields))}, NULL) "
                    "ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, language = excluded.language, "
                    "shop = excluded.shop, price = excluded.price, stock = excluded.stock, "
                    "sold_out = excluded.sold_out, "
                    "listing_sig = COALESCE(excluded.listing_sig, products.listing_sig), "
                    "listing = COALESCE(excluded.listing, products.listing), source = excluded.source, "
                    "detail = excluded.detail, detail_fetched_at = excluded.detail_fetched_at, "
                    "description = COALESCE(excluded.description, products.description), "
                    "desc_fetched_at = COALESCE(excluded.desc_fetched_at, products.desc_fetched_at), "
                    "delisted_at = NULL"
                ),
                products,
            )
            written = [row.item_id for row in products if row.item_id in old]
            if written:
                cur.execute(
                    sql(f"DELETE FROM skus WHERE item_id IN ({','.join('?' * len(written))})"),  # noqa: S608
                    written,
                )
        if skus:
            cur.executemany(
                sql(
                    "INSERT INTO skus (item_id, skuid, props_names, price, stock, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                ),
                skus,
            )
        if descriptions:
            cur.executemany(
                sql("UPDATE products SET description = ?, desc_fetched_at = ? WHERE item_id = ?"), descriptions
            )
        self._insert_changes(cur, changes)
        result.changes += changes
        if refresh.rows:
            refresh.write(cur, self.dialect, result, self.max_age)

    def shop_rates(self) -> dict[str, float]:
        """Each shop's rate of changes that matter (the mean of its products'
        estimates): the prior of a product with no history."""
        return {
            str(shop): float(rate_sum) / products
            for shop, rate_sum, products in self.query("SELECT shop, rate_sum, products FROM shop_rates")
            if products
        }

    def listing_reads(self) -> dict[str, str]:
        """When each listing's last read started: the default refresh budget
        spends what the time since then implies."""
        return {str(key): str(iso(at)) for key, at in self.query("SELECT listing_key, started_at FROM listing_reads")}

    def prune_changes(self, before: str, batch: int = PRUNE_BATCH) -> int:
        """Delete one batch of change rows detected before *before* (one
        short transaction: the writers of a crawl are not held up); how many."""
        with self.transaction() as cur:
            deleted = cur.execute(
                self.dialect.sql(
                    "DELETE FROM changes WHERE id IN "  # noqa: S608
                    f"(SELECT id FROM changes WHERE detected_at < ? ORDER BY detected_at LIMIT {int(batch)})"
                ),
                (before,),
            ).rowcount
        return int(deleted)

    def insert_changes(self, changes: Iterable[dict[str, Any]]) -> None:
        """Store change records as they are, in one transaction (the
        benchmarks fill a store with a year of history this way)."""
        with self.transaction() as cur:
            self._insert_changes(cur, changes)

    def _insert_changes(self, cur: Any, changes: Iterable[dict[str, Any]]) -> None:
        rows = [
            (
                c["detected_at"],
                c["item_id"],
                c["skuid"],
                c["change"],
                c["field"],
                None if c["old"] is None else str(c["old"]),
                None if c["new"] is None else str(c["new"]),
                _json(c["source"]),
            )
            for c in changes
        ]
        if rows:
            cur.executemany(
                self.dialect.sql(
                    "INSERT INTO changes (detected_at, item_id, skuid, change, field, old, new, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                rows,
            )

    def _write_page(self, cur: Any, note: PageNote, result: WriteResult) -> None:
        """One listing page.  Each crawl of a listing is a *read* with an id
        of its own (given with the seed), so that pages may arrive in any
        order and from any worker: a page of a new read replaces the stored
        one.  A read is complete when every page of it was read, none failed,
        and the number of pages is known."""
        sql = self.dialect.sql
        lock = self.dialect.lock
        key = note.listing_key
        row = cur.execute(
            sql(f"SELECT read_id, completed_at FROM listing_reads WHERE listing_key = ?{lock}"),  # noqa: S608
            (key,),
        ).fetchone()
        if row is None or row[0] != note.read_id:
            cur.execute(
                sql(
                    "INSERT INTO listing_reads (listing_key, read_id, started_at, pages_total, failed, completed_at) "
                    "VALUES (?, ?, ?, NULL, ?, NULL) ON CONFLICT (listing_key) DO UPDATE SET "
                    "read_id = excluded.read_id, started_at = excluded.started_at, pages_total = NULL, "
                    "failed = excluded.failed, completed_at = NULL, pages_read = 0"
                ),
                (key, note.read_id, note.at, False),
            )
            cur.execute(sql("DELETE FROM listing_pages WHERE listing_key = ?"), (key,))
        elif row[1] is not None:
            return  # that read is over (a page delivered again after it)
        if note.failed:
            cur.execute(sql("UPDATE listing_reads SET failed = ? WHERE listing_key = ?"), (True, key))
            return
        added = cur.execute(
            sql("INSERT INTO listing_pages (listing_key, page) VALUES (?, ?) ON CONFLICT DO NOTHING"),
            (key, note.page),
        ).rowcount
        if added:
            cur.execute(sql("UPDATE listing_reads SET pages_read = pages_read + 1 WHERE listing_key = ?"), (key,))
        cur.executemany(
            sql(
                "INSERT INTO listing_members (listing_key, item_id, read_id) VALUES (?, ?, ?) "
                "ON CONFLICT (listing_key, item_id) DO UPDATE SET read_id = excluded.read_id"
            ),
            [(key, item_id, note.read_id) for item_id in dict.fromkeys(note.item_ids)],
        )
        if note.pages_total is not None:
            cur.execute(sql("UPDATE listing_reads SET pages_total = ? WHERE listing_key = ?"), (note.pages_total, key))
        total, failed, pages_read = cur.execute(
            sql("SELECT pages_total, failed, pages_read FROM listing_reads WHERE listing_key = ?"), (key,)
        ).fetchone()
        if failed or total is None or pages_read < total:
            return  # one row read per page, whatever the listing's size
        # Counted enough: once a read, make sure they are its pages 1 to total.
        read = cur.execute(
            sql("SELECT COUNT(*) FROM listing_pages WHERE listing_key = ? AND page <= ?"), (key, total)
        ).fetchone()[0]
        if read < total:
            return
        # Read completely: a stored product it no longer names was delisted.
        gone = cur.execute(
            sql(
                "SELECT m.item_id, p.source FROM listing_members m JOIN products p ON p.item_id = m.item_id "
                "WHERE m.listing_key = ? AND m.read_id <> ? AND p.delisted_at IS NULL ORDER BY m.item_id"
            ),
            (key, note.read_id),
        ).fetchall()
        changes = [
            change_record(
                "delisted",
                item_id,
                detected_at=note.at,
                source=orjson.loads(source) if source else None,
                field="listing",
                old=key,
            )
            for item_id, source in gone
        ]
        self._insert_changes(cur, changes)
        result.changes += changes
        cur.executemany(
            sql("UPDATE products SET delisted_at = ? WHERE item_id = ?"), [(note.at, c["item_id"]) for c in changes]
        )
        cur.execute(sql("DELETE FROM listing_members WHERE listing_key = ? AND read_id <> ?"), (key, note.read_id))
        cur.execute(sql("UPDATE listing_reads SET completed_at = ? WHERE listing_key = ?"), (note.at, key))

    def account_limit(self, account: str) -> str | None:
        """The remembered limit of *account* (JSON), if any."""
        rows = self.query("SELECT state FROM account_limits WHERE account = ?", (account,))
        return str(rows[0][0]) if rows else None

    def remember_limit(self, account: str, state: str) -> None:
        with self.transaction() as cur:
            cur.execute(
                self.dialect.sql(
                    "INSERT INTO account_limits (account, state, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (account) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
                ),
                (account, state, now_precise()),
            )

    def record_crawl(self, crawl: CrawlRow) -> None:
        """Add a crawl (or a worker's part of it) to ``crawls``: the numbers
        of the workers of one crawl add up, under the row's lock."""
        sql = self.dialect.sql
        with self.transaction() as cur:
            row = cur.execute(
                sql(
                    "SELECT seed, started_at, finished_at, finish_reason, workers, products, calls, served, changes "  # noqa: S608
                    f"FROM crawls WHERE id = ?{self.dialect.lock}"
                ),
                (crawl.id,),
            ).fetchone()
            if row is None:
                cur.execute(
                    sql(
                        "INSERT INTO crawls (id, spider, seed, started_at, finished_at, finish_reason, workers, "
                        "products, calls, served, changes) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
                    ),
                    (crawl.id, crawl.spider, _json(crawl.seed), crawl.started_at, crawl.finished_at, crawl.reason,
                     crawl.products, crawl.calls, crawl.served, _json(crawl.changes)),
                )  # fmt: skip
                self._record_refresh(cur, crawl)
                return
            seed, started, finished, reason, workers, products, calls, served, changes = row
            kinds = orjson.loads(changes)
            for kind, count in crawl.changes.items():
                kinds[kind] = kinds.get(kind, 0) + count
            reasons = sorted({*reason.split(", "), crawl.reason})
            cur.execute(
                sql(
                    "UPDATE crawls SET seed = ?, started_at = ?, finished_at = ?, finish_reason = ?, workers = ?, "
                    "products = ?, calls = ?, served = ?, changes = ? WHERE id = ?"
                ),
                (seed or _json(crawl.seed), min(str(iso(started)), str(iso(crawl.started_at))),
                 max(str(iso(finished)), str(iso(crawl.finished_at))), ", ".join(reasons), workers + 1,
                 products + crawl.products, calls + crawl.calls, served + crawl.served, _json(kinds), crawl.id),
            )  # fmt: skip
            self._record_refresh(cur, crawl)

    def _record_refresh(self, cur: Any, crawl: CrawlRow) -> None:
        """The crawl's refresh figures; a worker's add to the others'."""
        cur.execute(
            self.dialect.sql(
                "UPDATE crawls SET descriptions_reused = COALESCE(descriptions_reused, 0) + ?, "
                "refresh_budget = COALESCE(refresh_budget, 0) + ?, "
                "refresh_spent = COALESCE(refresh_spent, 0) + ?, refresh_caught = COALESCE(refresh_caught, 0) + ?, "
                "estimated_current = COALESCE(?, estimated_current) WHERE id = ?"
            ),
            (
                crawl.descriptions_reused,
                crawl.refresh_budget,
                crawl.refresh_spent,
                crawl.refresh_caught,
                crawl.estimated_current,
                crawl.id,
            ),
        )

    # -- reading it out ---------------------------------------------------------------------

    def titles(self, item_ids: Sequence[int]) -> dict[int, tuple[str, dict[str, str | None]]]:
        """Each product's title and its SKUs' option names (``props_names``),
        for what an alert says of a change (two queries)."""
        if not item_ids:
            return {}
        marks = ",".join("?" * len(item_ids))
        products = self.query(f"SELECT item_id, title FROM products WHERE item_id IN ({marks})", item_ids)  # noqa: S608
        found: dict[int, tuple[str, dict[str, str | None]]] = {item_id: (title, {}) for item_id, title in products}
        for item_id, skuid, props in self.query(
            f"SELECT item_id, skuid, props_names FROM skus WHERE item_id IN ({marks})",  # noqa: S608
            item_ids,
        ):
            if item_id in found:
                found[item_id][1][skuid] = props
        return found

    def products(self, *, delisted: bool = False, changed_since: str | None = None) -> Generator[dict[str, Any]]:
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
        for row in self.stream(sql, params):
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
        self, since: str, *, until: str | None = None, item_ids: Sequence[int] = (), kinds: Sequence[str] = ()
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
        for change, item, skuid, fld, old, new, at, source in self.stream(sql, params):
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

    def stream(self, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        """The rows of *sql*, one at a time (PostgreSQL: a server-side cursor)."""
        yield from self.dialect.stream(self.conn, self.dialect.sql(sql), params)


def _typed(field_name: str | None, value: str | None) -> Any:
    """A change's old or new value as the change record writes it: stock as a
    number, the rest as text."""
    if value is not None and field_name == "stock":
        try:
            return int(value)
        except ValueError:
            return value
    return value
