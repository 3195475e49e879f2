"""What SQLite and PostgreSQL do differently, in one place (:class:`Dialect`).

Why the standard ``sqlite3`` plus ``psycopg`` 3 rather than an ORM or
SQLAlchemy Core: the store is a dozen statements, and the two dialects agree
on nearly all of them (``INSERT ... ON CONFLICT DO UPDATE``, ``?``/``%s``
being the one spelling that differs).  Everything they do differently
(types, connecting, transactions, cursors, what an error means) is here.
SQLite needs nothing installed; psycopg 3 is PostgreSQL's maintained
driver, and is imported only when a ``postgresql://`` store is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tmapi_crawler.store.url import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from tmapi_crawler.store.url import StoreURL

#: SQLite's primary result codes of a lock held by another connection: it passes.
SQLITE_TRANSIENT = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
#: PostgreSQL's SQLSTATE classes and codes of an outage that passes:
#: connection exceptions, the server shutting down or starting, too many
#: connections, a serialization failure or deadlock (a transaction to try again).
PG_TRANSIENT_CLASSES = frozenset({"08"})
PG_TRANSIENT = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
#: The PostgreSQL advisory lock taken while the tables are created or migrated.
SCHEMA_LOCK = 0x746D617069  # "tmapi"


#: A timestamp already as :func:`iso` writes it (as SQLite keeps the records').
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)


def iso(value: Any) -> str | None:
    """A timestamp as the records write it: ISO 8601, UTC, microseconds, ``Z``."""
    if value is None:
        return None
    if isinstance(value, str):
        if _ISO.fullmatch(value):
            return value
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.utcoffset():
        value = value.astimezone(UTC)
    # strftime's format, three times faster (PostgreSQL's times come as datetimes, two a stored product)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
    )  # fmt: skip


def json_text(value: Any) -> str | None:
    """A value for a JSON column (``TEXT``), compact; ``None`` stays NULL."""
    return None if value is None else orjson.dumps(value).decode()


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

    def insert_rows(
        self, cur: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> None:
        """``INSERT INTO {table} ({columns}) ... {tail}`` of many *rows* in
        one statement (or a few), where ``executemany`` runs one a row and
        the driver lets the GIL go for each, so that a busy reactor holds up
        every row and both threads spend CPU handing it over
        (docs/performance.md); each row has the columns in their order."""
        raise NotImplementedError

    def fetch(self, conn: Any, sql: str, params: tuple[Any, ...], *, binary: bool = False) -> list[Any]:
        """The rows of *sql* (*binary*: see :meth:`CatalogDB.query`)."""
        rows: list[Any] = conn.execute(sql, params).fetchall()
        return rows

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

    #: Parameters one statement may have (SQLite's default limit since 3.32, 999 before).
    max_params: int = 32766

    def insert_rows(
        self, cur: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> None:
        """``VALUES (...), (...)``, in runs of a power of two under
        :attr:`max_params` (1,000 rows are 512 + 256 + ... + 8), so that a
        statement's text comes back and SQLite finds it compiled in its cache."""
        if not rows:
            return
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 - our names
        mark = f"({', '.join(['?'] * len(columns))})"
        most = max(1, self.max_params // len(columns)).bit_length() - 1  # the longest run: 2**most rows
        start = 0
        while start < len(rows):
            run = 1 << min(most, (len(rows) - start).bit_length() - 1)
            chunk = rows[start : start + run]
            cur.execute(head + ", ".join([mark] * run) + tail, [value for row in chunk for value in row])
            start += run

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

    def insert_rows(
        self, cur: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> None:
        """The rows as one JSON parameter that the server reads as rows of
        *table* (``json_populate_recordset``): one statement, its text the
        same whatever the number of rows (psycopg parses in Python, and does
        not cache, a statement of many parameters), one value to send."""
        if not rows:
            return
        names = ", ".join(columns)
        cur.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{table}, %s){tail}",  # noqa: S608 - our names
            (orjson.dumps([dict(zip(columns, row, strict=True)) for row in rows]).decode(),),
        )

    def fetch(self, conn: Any, sql: str, params: tuple[Any, ...], *, binary: bool = False) -> list[Any]:
        rows: list[Any] = conn.execute(sql, params, binary=binary).fetchall()
        return rows

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


SQLITE = _SQLite(
    timestamp="TEXT",
    serial="INTEGER PRIMARY KEY AUTOINCREMENT",
    decimal="TEXT",
    max_params=32766 if sqlite3.sqlite_version_info >= (3, 32) else 999,
)
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
