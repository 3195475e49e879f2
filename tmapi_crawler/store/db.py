"""The catalog store's database: one connection to SQLite or PostgreSQL.

A :class:`CatalogDB` is one connection, used from one thread at a time
(:mod:`tmapi_crawler.store.extension` runs a reader and a writer, each in a
thread of its own).  It makes the store ready (:mod:`.schema`), says what a
driver's error means in one line, and gives transactions and queries in
either dialect (:mod:`.dialect`).  What is done with it is in modules of
their own, each a job of the store:

* :mod:`.lookup`: what the store has of listed products (the refresh decision);
* :mod:`.write`: products and their changes written, one transaction a batch;
* :mod:`.listings`: listing pages, and the products a complete read no longer names;
* :mod:`.ledger`: the ``crawls`` table;
* :mod:`.catalog`: the catalog read out (records, changes, titles);
* :mod:`.checks`: the store's integrity;
* :mod:`.history`: the figures of a period, for the report.

The tables are documented in docs/catalog.md.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from tmapi_crawler.store.dialect import (
    CANNOT_OPEN,
    DAMAGED,
    DIALECTS,
    DISK_FULL,
    LOGIN_REFUSED,
    NO_DATABASE,
    NOT_A_DATABASE,
    READ_ONLY,
    UNREACHABLE,
)
from tmapi_crawler.store.schema import check_schema
from tmapi_crawler.store.url import StoreDamaged, StoreError, StoreURL

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


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
        """The store made ready (:func:`.schema.check_schema`).  With
        *create*, in one transaction under the store's lock (SQLite's write
        lock, a PostgreSQL advisory lock), so that workers starting together
        create the tables once; and a store that cannot be written is
        refused now, not mid-crawl."""
        try:
            if not create:
                check_schema(self.conn, self.dialect, self.url, create=False)
                return
            with self.transaction() as cur:
                self.dialect.lock_schema(cur)
                check_schema(cur, self.dialect, self.url, create=True)
                cur.execute("UPDATE tmapi_schema SET version = version")
        except StoreError:
            raise
        except Exception as exc:
            raise self.error(exc) from None

    # -- errors --------------------------------------------------------------------------

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

    # -- statements ------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        """*text* (``?`` marks) in this store's dialect."""
        return self.dialect.sql(text)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """``with db.transaction() as cur``: one transaction, committed on
        success, rolled back on error."""
        return self.dialect.transaction(self.conn)

    def query(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False) -> list[Any]:
        """The rows of *sql*; *binary*: in PostgreSQL's binary format (a
        ``bytea`` sent as it is, not as hexadecimal text to decode)."""
        return self.dialect.fetch(self.conn, self.dialect.sql(sql), tuple(params), binary=binary)

    def stream(self, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        """The rows of *sql*, one at a time (PostgreSQL: a server-side cursor)."""
        yield from self.dialect.stream(self.conn, self.dialect.sql(sql), params)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing what failed: nothing more to say
            self.conn.close()
