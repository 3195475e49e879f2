"""A crawl that dies loses nothing: crash-safe ``JOBDIR`` for one process
(docs/behaviour.md, "Stop and resume"; below, the design).

Scrapy's own disk queue writes its index only when it is closed, and its
``requests.seen`` marks a request seen when it is scheduled, not when it is
done: a crawl killed with ``kill -9`` resumes with nothing (issues 2399, 4106
and 7978 of Scrapy).  With ``-s JOBDIR=DIR`` (and no ``REDIS_URL``) the add-on
puts :class:`JobdirScheduler` in place of Scrapy's scheduler.  It keeps the
crawl in ``DIR/tmapi-crawl.sqlite``, with the same design as the Redis queue
(:mod:`tmapi_crawler.durable.leases`): a request taken is leased, and acknowledged
only when all it led to is safe.

Why SQLite in WAL mode: it ships with Python (nothing to install), a
committed transaction survives the death of the process by construction, and
one transaction can hold several changes that must go together.  One
transaction is open at a time and committed every :data:`COMMIT_INTERVAL`
(``synchronous=NORMAL``: no fsync per commit; a transaction is either whole
or absent after any crash, and later ones never survive without earlier ones).

The invariants:

* requests are JSON (:mod:`tmapi_crawler.durable.codec`), never pickle;
* a request's row is deleted (acknowledged) only in the transaction that
  also records the length of every feed file, taken after the feeds were
  flushed and fsynced, at a moment when every record in them belongs to a
  request that is acknowledged by then (no request in hand has records in a
  feed yet): so on resume each local feed file is cut back to its recorded
  length, which removes a half line left by the kill and every record of a
  request that is then sent again.  Each product thus ends as exactly one
  record across the runs' feed;
* marking a request seen and storing it is one transaction, as is replacing
  a request by its retry;
* what was in hand when the process died is pending again on resume.

The calls billed twice after a kill are at most those in flight at the kill
plus those whose records were written after the last commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.core.scheduler import BaseScheduler

from tmapi_crawler.calls.gate import gate_of
from tmapi_crawler.calls.paid import PaidAnswers, paid_answers_of
from tmapi_crawler.compat import local_feed_files
from tmapi_crawler.config import ConfigError, Mode, mode_of, shown
from tmapi_crawler.durable import codec
from tmapi_crawler.durable.feeds import guard_of, local_feed_path
from tmapi_crawler.durable.leases import tracker_of
from tmapi_crawler.durable.locks import hold_jobdir, release_jobdir
from tmapi_crawler.extensions import CRAWL_ID_STAT, RESUMED, progress_of
from tmapi_crawler.loops import looping_call
from tmapi_crawler.records import now_precise

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: The crawl's state, in JOBDIR.
STATE_FILE = "tmapi-crawl.sqlite"
#: Bumped when the tables change; a state of another version is refused.
SCHEMA_VERSION = 1
#: Seconds between two commits (fsync of the feeds, acks, the transaction).
COMMIT_INTERVAL = 0.5
#: What Scrapy's own scheduler leaves in a JOBDIR.
SCRAPY_FILES = ("requests.queue", "requests.seen")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_next ON requests (leased, priority DESC, id);
CREATE TABLE IF NOT EXISTS seen (fingerprint BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feeds (path TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS answers (fingerprint BLOB PRIMARY KEY, body BLOB NOT NULL, fetched_at TEXT NOT NULL)
    WITHOUT ROWID;
"""

#: The highest priority, then the oldest, leased in the same statement.
NEXT = """
UPDATE requests SET leased = 1
WHERE id = (SELECT id FROM requests WHERE leased = 0 ORDER BY priority DESC, id LIMIT 1)
RETURNING id, payload
"""
#: SQLite's primary result code of a full disk.
SQLITE_FULL = 13
#: RETURNING came with SQLite 3.35 (2021).
MIN_SQLITE = (3, 35)


class JobdirError(ConfigError):
    """A JOBDIR that cannot be resumed; the message says what to do."""


def jobdir_of(settings: BaseSettings) -> Path | None:
    """The JOBDIR this crawl keeps its state in (``None``: not resumable, or
    distributed, where Redis holds the state)."""
    if mode_of(settings) is not Mode.JOBDIR:
        return None
    return Path(settings["JOBDIR"])


def has_state(settings: BaseSettings) -> bool:
    """Whether JOBDIR holds a crawl to resume (one that finished does not:
    the next run with it is a new crawl)."""
    return jobdir_of(settings) is not None and _meta(settings, "spider") is not None and not _meta(settings, "finished")


def _meta(settings: BaseSettings, key: str) -> str | None:
    """A value of the crawl's state in JOBDIR, read without changing it."""
    jobdir = jobdir_of(settings)
    if jobdir is None or not (jobdir / STATE_FILE).is_file():
        return None
    db = sqlite3.connect(f"file:{jobdir / STATE_FILE}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return str(row[0]) if row else None


def check_jobdir(settings: BaseSettings, spider: str) -> None:
    """Refuse, in one line, a JOBDIR that this crawl cannot resume."""
    jobdir = jobdir_of(settings)
    if jobdir is None:
        return
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise JobdirError(
            f"JOBDIR needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; this Python has {sqlite3.sqlite_version}: "
            "use a Python built with a newer SQLite (Debian 12's is 3.40)"
        )
    if jobdir.exists() and not jobdir.is_dir():
        raise JobdirError(f"JOBDIR={shown(str(jobdir))} is not a directory: give a directory for the crawl's state")
    if not (jobdir / STATE_FILE).is_file():
        if any((jobdir / name).exists() for name in SCRAPY_FILES):
            raise JobdirError(
                f"JOBDIR={str(jobdir)!r} holds a crawl of an older version (Scrapy's own queue, which is not "
                "crash-safe): finish it with that version, or give a new JOBDIR to start again"
            )
        return
    state = CrawlState(jobdir / STATE_FILE)
    try:
        state.check(spider)
    finally:
        state.close()


class CrawlState:
    """The tables of a crawl in JOBDIR; one transaction open at a time."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise JobdirError(
                    f"{path} is the state of a crawl of another version (schema {version}, this one reads "
                    f"{SCHEMA_VERSION}): finish it with that version, or give a new JOBDIR to start again"
                )
            self.db.executescript(SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL:
                raise JobdirError(
                    f"cannot write {path}: {exc}: free some space, then run the same command again"
                ) from None
            raise JobdirError(
                f"{path} is damaged ({exc}): give a new JOBDIR to start again (the feed keeps what was crawled)"
            ) from None
        self.db.execute("BEGIN")

    def check(self, spider: str) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'spider'").fetchone()
            problem = self.db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
            row = None
        if problem != "ok":
            raise JobdirError(
                f"{self.path} is damaged ({problem}): give a new JOBDIR to start again "
                "(the feed keeps what was crawled)"
            )
        if row is not None and row[0] != spider:
            raise JobdirError(
                f"JOBDIR={str(self.path.parent)!r} holds a crawl of the {row[0]!r} spider, not {spider!r}: "
                "give each crawl its own JOBDIR"
            )

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.close()


class JobdirScheduler(BaseScheduler):
    """Scrapy's scheduler interface over :class:`CrawlState`, with leases."""

    def __init__(self, crawler: Crawler, path: Path):
        self.crawler = crawler
        self.stats = crawler.stats
        self.fingerprinter = crawler.request_fingerprinter
        self.leases = tracker_of(crawler)
        self.leases.enable(commit=self._commit)
        self.gate = gate_of(crawler)
        self.paid: PaidAnswers | None = None
        self.path = path
        self.state: CrawlState
        self.spider: Spider
        self.pending = 0
        self.loop: Any = None
        #: The state could not be written (its disk is full): the crawl stops.
        self.broken: sqlite3.Error | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        jobdir = jobdir_of(crawler.settings)
        assert jobdir is not None, "JobdirScheduler needs JOBDIR (and no REDIS_URL)"
        return cls(crawler, jobdir / STATE_FILE)

    # -- Scrapy's scheduler interface -----------------------------------------

    def open(self, spider: Spider) -> None:
        self.spider = spider
        hold_jobdir(self.path.parent)  # the crawl command holds it already
        self.state = CrawlState(self.path)
        self.state.check(spider.name)
        try:
            self._open(spider)
        except sqlite3.Error as exc:
            self._broke(exc)  # its disk is full: one line, the crawl stops; the next run resumes

    def _open(self, spider: Spider) -> None:
        db = self.state.db
        finished = db.execute("SELECT value FROM meta WHERE key = 'finished'").fetchone()
        if finished is not None:
            # Every request of that crawl was done: this run is a new crawl
            # (the feeds cut back to its end first: a half line goes).
            self._repair_feeds()
            for table in ("requests", "seen", "feeds", "answers"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names
            db.execute("DELETE FROM meta WHERE key IN ('finished', 'crawl')")
            logger.info("%s holds a crawl that finished (%s): this is a new crawl", self.path.parent, finished[0])
        self.paid = paid_answers_of(self.crawler)
        if self.paid is not None:
            self.paid.load(db)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('spider', ?)", (spider.name,))
        db.execute("INSERT OR IGNORE INTO meta VALUES ('crawl', ?)", (uuid.uuid4().hex,))
        # The crawl's id, the same across its resumes: the store's crawls row.
        self.stats.set_value(CRAWL_ID_STAT, db.execute("SELECT value FROM meta WHERE key = 'crawl'").fetchone()[0])
        back = db.execute("UPDATE requests SET leased = 0 WHERE leased = 1").rowcount
        self.pending = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        self._repair_feeds()
        self.state.commit()
        progress = db.execute("SELECT value FROM meta WHERE key = 'progress'").fetchone()
        if progress is not None and self.pending:
            # The progress line carries on: pages, products and ETA of the whole crawl.
            for key, value in json.loads(progress[0]).items():
                self.stats.set_value(f"{RESUMED}/{key}", value)
        if self.pending:
            logger.info(
                "Resuming the crawl in %s: %d requests pending (%d of them were in hand when it stopped)",
                self.path.parent,
                self.pending,
                back,
            )
        self.loop = looping_call(self._commit, "JOBDIR commit", self.stats)
        self.loop.start(COMMIT_INTERVAL, now=False)

    def close(self, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        # The pipelines are closed and the feeds still open: make what was
        # written safe; what is still in hand stays pending for the next run.
        self._commit()
        unfinished = self.leases.unfinished()
        try:
            if unfinished and self.broken is None:
                self.state.db.executemany(
                    "UPDATE requests SET leased = 0 WHERE id = ?", [(int(i),) for i in unfinished]
                )
                if self.paid is not None:
                    self.paid.keep(unfinished, self.state.db)
            if self.broken is None and not self.state.db.execute("SELECT 1 FROM requests LIMIT 1").fetchone():
                # Nothing left to do, whatever the finish reason: the next run is a new crawl.
                self.state.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('finished', ?)", (f"{reason}, {now_precise()}",)
                )
            self.state.close()
        except sqlite3.Error as exc:
            self._broke(exc)  # what is leased is pending again on resume anyway
            with contextlib.suppress(sqlite3.Error):
                self.state.db.close()
        finally:
            release_jobdir(self.path.parent)

    def has_pending_requests(self) -> bool:
        return self.pending > 0

    def __len__(self) -> int:
        return self.pending

    def enqueue_request(self, request: Request) -> bool:
        if self.broken is not None:
            # The crawl is stopping, and its parent is not acknowledged: it is
            # made again when the parent is done again, on resume.
            self.leases.detach(request)
            return True
        try:
            return self._enqueue(request)
        except sqlite3.Error as exc:
            self._broke(exc)
            return True

    def _enqueue(self, request: Request) -> bool:
        parent, replaces = self.leases.detach(request)
        try:
            db = self.state.db
            if replaces is None and not request.dont_filter:
                fingerprint = self.fingerprinter.fingerprint(request)
                if not db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (fingerprint,)).rowcount:
                    self.stats.inc_value("dupefilter/filtered")
                    return False
            payload = codec.encode_request(request, self.spider)
            db.execute("INSERT INTO requests (priority, payload) VALUES (?, ?)", (request.priority, payload))
            self.pending += 1
            if replaces is not None:
                db.execute("DELETE FROM requests WHERE id = ?", (int(replaces),))
                self.leases.forget(replaces)
                if self.paid is not None:
                    self.paid.forget(replaces)
            self.stats.inc_value("scheduler/enqueued/jobdir")
            return True
        finally:
            if parent is not None:
                self.leases.settle(parent)

    def next_request(self) -> Request | None:
        if self.broken is not None:
            return None
        try:
            return self._next()
        except sqlite3.Error as exc:
            self._broke(exc)
            return None

    def _next(self) -> Request | None:
        db = self.state.db
        while True:
            row = db.execute(NEXT).fetchone()
            if row is None:
                return None
            lease, payload = row
            self.pending -= 1
            try:
                request = codec.decode_request(payload, self.spider)
            except (codec.CodecError, ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.error("Skipped a request in %s that is not one of ours (%s): %.200r", self.path, exc, payload)
                db.execute("DELETE FROM requests WHERE id = ?", (lease,))
                continue
            self.leases.hold(str(lease), request)
            if not self.gate.budget.may_hand_out(request):
                # The budget is reached: kept in hand, pending again for the resume.
                self.stats.inc_value("tmapi/budget/not_sent")
                continue
            self.stats.inc_value("scheduler/dequeued/jobdir")
            return request

    # -- commits and the feeds ------------------------------------------------

    def _commit(self) -> None:
        """Acknowledge what is safe, with the feeds' lengths, in one
        transaction; while a request in hand has records in a feed already,
        only the queue's changes are committed (the acks wait)."""
        if self.broken is not None:
            return
        try:
            if self.leases.safe and not self.leases.partly_written:
                self.leases.commit(self._ack)
            self.state.commit()
        except sqlite3.Error as exc:
            self._broke(exc)

    def _broke(self, exc: sqlite3.Error) -> None:
        """The state cannot be written (its disk is full, read-only): what
        was not committed is not, and the crawl stops like for a feed that
        cannot be written; the next run resumes from the last commit."""
        if self.broken is not None:
            return
        self.broken = exc
        with contextlib.suppress(sqlite3.Error):
            if self.state.db.in_transaction:
                self.state.db.execute("ROLLBACK")
        guard = guard_of(self.crawler)
        if guard is not None:
            guard.write_failed(str(self.path), exc)

    def _ack(self, leases: list[str]) -> None:
        # Called by the tracker right after the feeds were fsynced.
        db = self.state.db
        db.executemany("DELETE FROM requests WHERE id = ?", [(int(lease),) for lease in leases])
        if self.paid is not None:
            self.paid.acknowledged(leases, db)
        self._record_feeds()
        self.stats.inc_value("tmapi/jobdir/acked", len(leases))
        # What the progress line of a resumed run carries on from.
        progress = json.dumps(progress_of(self.stats.get_stats()))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('progress', ?)", (progress,))

    def _record_feeds(self) -> None:
        for path, file in local_feed_files(self.crawler):
            size = os.fstat(file.fileno()).st_size
            self.state.db.execute("INSERT OR REPLACE INTO feeds VALUES (?, ?)", (path, size))

    def _repair_feeds(self) -> None:
        """Cut each feed file back to its length at the last commit (a half
        line, and records of requests that are sent again); remember the
        length of the feed files this crawl will add to."""
        db = self.state.db
        for path, size in db.execute("SELECT path, size FROM feeds").fetchall():
            now = _size(path)
            if now > size:
                os.truncate(path, size)
                logger.info(
                    "%s: cut %d bytes written after the last commit (their requests are sent again)", path, now - size
                )
        db.executemany("INSERT OR IGNORE INTO feeds VALUES (?, ?)", self._feed_starts())

    def _feed_starts(self) -> list[tuple[str, int]]:
        """``(path, length)`` of the local files of the feeds configured
        (plain paths, no template) as this crawl starts writing them: an
        overwritten one (-O on the first run) starts empty."""
        starts = []
        for uri, options in self.crawler.settings.getdict("FEEDS").items():
            local = local_feed_path(str(uri))
            if local is not None:
                path = os.path.abspath(local)
                starts.append((path, 0 if (options or {}).get("overwrite") else _size(path)))
        return starts


def _size(path: str) -> int:
    """The length of the file at *path* (0 when there is none)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
