"""Listing pages: each crawl of a listing is a *read* with an id of its own
(given with the seed), so that pages may arrive in any order and from any
worker; a page of a new read replaces the stored one.  A read is complete
when every page of it was read, none failed, and the number of pages is
known: then a stored product it no longer names was delisted."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any

import orjson

from tmapi_crawler.records import now_precise
from tmapi_crawler.store.changes import change_record

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tmapi_crawler.store.dialect import Dialect


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


def write_pages(cur: Any, dialect: Dialect, pages: Sequence[PageNote]) -> list[dict[str, Any]]:
    """Store *pages* (in a transaction the caller holds); the ``delisted``
    change records of the reads they complete (the caller stores them).
    The pages of one read that arrive together are written together: a
    few statements for them all, whatever their number."""
    by_listing: dict[str, list[PageNote]] = {}
    for note in pages:
        by_listing.setdefault(note.listing_key, []).append(note)
    delisted: list[dict[str, Any]] = []
    for notes in by_listing.values():
        # In their order: a page of a newer read replaces the older read.
        for _, same_read in groupby(notes, key=lambda note: note.read_id):
            delisted += _write_read(cur, dialect, list(same_read))
    return delisted


def _write_read(cur: Any, dialect: Dialect, notes: list[PageNote]) -> list[dict[str, Any]]:
    """Pages of one read of one listing; the ``delisted`` changes when they
    complete it."""
    key, read_id = notes[0].listing_key, notes[0].read_id
    if not _current_read(cur, dialect, notes[0]):
        return []  # that read is over (pages delivered again after it)
    if any(note.failed for note in notes):
        cur.execute(dialect.sql("UPDATE listing_reads SET failed = ? WHERE listing_key = ?"), (True, key))
    read = [note for note in notes if not note.failed]
    if not read or not _add_pages(cur, dialect, read):
        return []
    return _delisted(cur, dialect, key, read_id, at=notes[-1].at)


def _current_read(cur: Any, dialect: Dialect, note: PageNote) -> bool:
    """Make *note*'s read the listing's current one (a new read replaces the
    stored one and its pages); ``False`` when that read is over."""
    sql, key = dialect.sql, note.listing_key
    row = _locked_read(cur, dialect, key)
    if row is not None and row[0] == note.read_id:
        return row[1] is None
    made = cur.execute(
        sql(
            "INSERT INTO listing_reads (listing_key, read_id, started_at, pages_total, failed, completed_at) "
            "VALUES (?, ?, ?, NULL, ?, NULL) ON CONFLICT (listing_key) DO UPDATE SET "
            "read_id = excluded.read_id, started_at = excluded.started_at, pages_total = NULL, "
            "failed = excluded.failed, completed_at = NULL, pages_read = 0 "
            "WHERE listing_reads.read_id <> excluded.read_id RETURNING listing_key"
        ),
        (key, note.read_id, note.at, False),
    ).fetchone()
    if made is None:
        # Another worker made this read the current one between the two
        # statements (PostgreSQL: a row locked only once it exists); its
        # pages stay, counted.
        return _locked_read(cur, dialect, key)[1] is None
    cur.execute(sql("DELETE FROM listing_pages WHERE listing_key = ?"), (key,))
    return True


def _locked_read(cur: Any, dialect: Dialect, key: str) -> Any:
    """``(read_id, completed_at)`` of *key*'s current read, its row locked
    (PostgreSQL); ``None`` when the listing was never read."""
    return cur.execute(
        dialect.sql(f"SELECT read_id, completed_at FROM listing_reads WHERE listing_key = ?{dialect.lock}"),  # noqa: S608
        (key,),
    ).fetchone()


def _add_pages(cur: Any, dialect: Dialect, read: list[PageNote]) -> bool:
    """The pages read and the products they name, counted; whether the read
    may be complete now (no page failed, as many pages read as it has)."""
    sql, key, read_id = dialect.sql, read[0].listing_key, read[0].read_id
    pages = sorted({note.page for note in read})
    known = cur.execute(
        sql(f"SELECT page FROM listing_pages WHERE listing_key = ? AND page IN ({','.join('?' * len(pages))})"),  # noqa: S608
        (key, *pages),
    ).fetchall()
    added = [page for page in pages if page not in {found for (found,) in known}]
    dialect.insert_rows(cur, "listing_pages", ("listing_key", "page"), [(key, page) for page in added])
    members = dict.fromkeys(item_id for note in read for item_id in note.item_ids)
    dialect.insert_rows(
        cur,
        "listing_members",
        ("listing_key", "item_id", "read_id"),
        [(key, item_id, read_id) for item_id in members],
        " ON CONFLICT (listing_key, item_id) DO UPDATE SET read_id = excluded.read_id",
    )
    told = [note.pages_total for note in read if note.pages_total is not None]
    total, failed, pages_read = cur.execute(
        sql(
            "UPDATE listing_reads SET pages_read = pages_read + ?, pages_total = COALESCE(?, pages_total) "
            "WHERE listing_key = ? RETURNING pages_total, failed, pages_read"
        ),
        (len(added), told[-1] if told else None, key),
    ).fetchone()
    if failed or total is None or pages_read < total:
        return False  # one row read per page, whatever the listing's size
    # Counted enough: once a read, make sure they are its pages 1 to total.
    complete = cur.execute(
        sql("SELECT COUNT(*) FROM listing_pages WHERE listing_key = ? AND page <= ?"), (key, total)
    ).fetchone()[0]
    return bool(complete >= total)


def _delisted(cur: Any, dialect: Dialect, key: str, read_id: str, *, at: str) -> list[dict[str, Any]]:
    """The read is complete: a stored product it no longer names was
    delisted (marked so, its change records returned); the read is over."""
    sql = dialect.sql
    gone = cur.execute(
        sql(
            "SELECT m.item_id, p.source FROM listing_members m JOIN products p ON p.item_id = m.item_id "
            "WHERE m.listing_key = ? AND m.read_id <> ? AND p.delisted_at IS NULL ORDER BY m.item_id"
        ),
        (key, read_id),
    ).fetchall()
    changes = [
        change_record(
            "delisted",
            item_id,
            detected_at=at,
            source=orjson.loads(source) if source else None,
            field="listing",
            old=key,
        )
        for item_id, source in gone
    ]
    cur.executemany(sql("UPDATE products SET delisted_at = ? WHERE item_id = ?"), [(at, c["item_id"]) for c in changes])
    cur.execute(sql("DELETE FROM listing_members WHERE listing_key = ? AND read_id <> ?"), (key, read_id))
    cur.execute(sql("UPDATE listing_reads SET completed_at = ? WHERE listing_key = ?"), (at, key))
    return changes
