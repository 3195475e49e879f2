"""The store's integrity: SQLite's own checks, the schema and its version
(``scrapy catalog check``; a quick check before a crawl's first call)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from tmapi_crawler.store.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from tmapi_crawler.store.db import CatalogDB


def quick_check(db: CatalogDB, seconds: float) -> list[str] | None:
    """SQLite's ``quick_check`` for at most *seconds*: its problems (empty
    when sound), or ``None`` when it could not finish in time (a large
    store: the rows are checked as they are read)."""
    return _check(db, "quick_check", seconds)


def integrity_check(db: CatalogDB) -> list[str]:
    """The store's problems, one line each (empty when sound): SQLite's
    full ``integrity_check``; for PostgreSQL, the schema and its version
    (the server checks its own pages)."""
    problems = _check(db, "integrity_check", None) or []
    try:
        tables = db.dialect.tables(db.conn)
    except Exception as exc:
        return [*problems, str(db.error(exc))]
    missing = sorted({"tmapi_schema", "products", "skus", "changes", "crawls"} - tables)
    problems += [f"table {name} is missing" for name in missing]
    if "tmapi_schema" not in missing:
        try:
            version = db.query("SELECT version FROM tmapi_schema")[0][0]
        except Exception as exc:
            return [*problems, f"tmapi_schema cannot be read: {db.error(exc)}"]
        if version != SCHEMA_VERSION:
            problems.append(f"schema version {version}, this tmapi_crawler's is {SCHEMA_VERSION}")
    return problems


def _check(db: CatalogDB, pragma: str, seconds: float | None) -> list[str] | None:
    if db.url.kind != "sqlite":
        return []
    conn = db.conn
    deadline = None if seconds is None else time.monotonic() + seconds
    if deadline is not None:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        rows = conn.execute(f"PRAGMA {pragma}").fetchall()
    except sqlite3.OperationalError as exc:
        if deadline is not None and time.monotonic() > deadline and "interrupted" in str(exc):
            return None
        return [str(db.error(exc))]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        if deadline is not None:
            conn.set_progress_handler(None, 0)
    # SQLite heads a message with "*** in database main ***" and may
    # put several on one row: one line each.
    problems = [line.strip() for row in rows for line in str(row[0]).splitlines()]
    problems = [line for line in problems if line and not line.startswith("***")]
    return [] if problems == ["ok"] else problems
