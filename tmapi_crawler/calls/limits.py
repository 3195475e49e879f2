"""The account's concurrency limit, remembered from one crawl to the next.

The gate finds the account's limit on its own (:mod:`tmapi_crawler.calls.gate`),
but from scratch, which keeps a short crawl under the limit for its first
seconds.  What it found is kept when the crawl ends and is where the next
crawl of the same account starts (it keeps adapting from there;
``TMAPI_CONCURRENCY`` still wins; ``TMAPI_REMEMBER_LIMIT=false`` turns it
off): in the catalog store when there is one
(``account_limits``), in Redis in distributed mode (the hash
``tmapi:limits``), otherwise in ``tmapi-limits.json`` under Scrapy's project
data folder (``.scrapy/``).  An account is the API's host and a fingerprint
of the token, never the token.  See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from scrapy.exceptions import NotConfigured
from scrapy.utils.project import data_path

from tmapi_crawler.config import config_from_settings, is_distributed
from tmapi_crawler.records import now_iso, now_precise
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.url import parse_store_url

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings
    from scrapy.statscollectors import StatsCollector

    from tmapi_crawler.calls.ceiling import AdaptiveLimit

logger = logging.getLogger(__name__)

#: The state file's name under Scrapy's project data folder.
STATE_FILE = "tmapi-limits.json"
#: The Redis hash of the remembered limits (distributed mode).
REDIS_KEY = "tmapi:limits"


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a crawl found: the calls in flight it proved the account takes
    (``limit``), the ceiling a 503 revealed (``None`` when none came), and
    when the last 439 pause began, if the crawl met one."""

    limit: int
    ceiling: int | None = None
    quota_paused_at: str | None = None
    saved_at: str = ""

    @classmethod
    def parse(cls, text: str | bytes | None) -> Remembered | None:
        """From its JSON; ``None`` for nothing or for what does not parse (a
        remembered limit is a hint: a bad one is forgotten, not an error)."""
        if not text:
            return None
        try:
            return cls.of(json.loads(text))
        except ValueError:
            return None

    @classmethod
    def of(cls, doc: Any) -> Remembered | None:
        """From its JSON object (as :meth:`dumps` wrote it), or ``None``."""
        try:
            ceiling = doc.get("ceiling")
            return cls(
                limit=max(1, int(doc["limit"])),
                ceiling=None if ceiling is None else max(1, int(ceiling)),
                quota_paused_at=doc.get("quota_paused_at"),
                saved_at=str(doc.get("saved_at", "")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def account_of(settings: BaseSettings) -> str | None:
    """``<API host>:<token fingerprint>``, or ``None`` without a token."""
    config = config_from_settings(settings)
    if config.token is None:
        return None
    fingerprint = hashlib.sha256(config.token.get_secret_value().encode()).hexdigest()[:16]
    return f"{urlsplit(config.base_url).netloc}:{fingerprint}"


class LimitMemory(Protocol):
    where: str

    def load(self, account: str) -> Remembered | None: ...

    def save(self, account: str, remembered: Remembered) -> None: ...


class FileMemory:
    """``.scrapy/tmapi-limits.json``: account -> what was found."""

    def __init__(self, path: Path | None = None):
        if path is None:
            try:
                path = Path(data_path(STATE_FILE))  # (createdir would make the file's path a directory)
            except NotConfigured:  # Scrapy's settings, but no scrapy.cfg: the tmapi command in any folder
                path = Path(".scrapy", STATE_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.where = str(self.path)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def load(self, account: str) -> Remembered | None:
        return Remembered.of(self._read().get(account))

    def save(self, account: str, remembered: Remembered) -> None:
        doc = self._read()
        doc[account] = asdict(remembered)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            temporary.replace(self.path)  # whole or not at all
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()


class StoreMemory:
    """The catalog store's ``account_limits`` table."""

    def __init__(self, settings: BaseSettings):
        store = config_from_settings(settings).store
        assert store is not None
        self.url = parse_store_url(store.get_secret_value())
        self.where = f"the catalog store {self.url.display}"

    def _db(self) -> CatalogDB:
        return CatalogDB(self.url)

    def load(self, account: str) -> Remembered | None:
        db = self._db()
        try:
            rows = db.query("SELECT state FROM account_limits WHERE account = ?", (account,))
            return Remembered.parse(str(rows[0][0]) if rows else None)
        finally:
            db.close()

    def save(self, account: str, remembered: Remembered) -> None:
        db = self._db()
        try:
            with db.transaction() as cur:
                cur.execute(
                    db.sql(
                        "INSERT INTO account_limits (account, state, updated_at) VALUES (?, ?, ?) ON CONFLICT "
                        "(account) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
                    ),
                    (account, remembered.dumps(), now_precise()),
                )
        finally:
            db.close()


class RedisMemory:
    """The Redis hash ``tmapi:limits`` (distributed mode)."""

    def __init__(self, settings: BaseSettings):
        from tmapi_crawler.cluster.connection import redis_from_settings  # distributed mode only

        self.server = redis_from_settings(settings)
        self.where = "Redis"

    def load(self, account: str) -> Remembered | None:
        raw: Any = self.server.hget(REDIS_KEY, account)
        return Remembered.parse(raw)

    def save(self, account: str, remembered: Remembered) -> None:
        self.server.hset(REDIS_KEY, account, remembered.dumps())


def memory_of(settings: BaseSettings) -> LimitMemory:
    """Where this crawl's account limit is kept (see the module's docstring)."""
    if is_distributed(settings):
        return RedisMemory(settings)
    if config_from_settings(settings).store is not None:
        return StoreMemory(settings)
    return FileMemory()


def recall(settings: BaseSettings) -> tuple[LimitMemory, str, Remembered | None] | None:
    """``(memory, account, what it remembers)``, or ``None`` when nothing is
    to be remembered (no token; ``TMAPI_CONCURRENCY`` set) or the memory
    cannot be read (said in one line: the crawl finds the limit anew)."""
    config = config_from_settings(settings)
    account = account_of(settings)
    if account is None or config.concurrency or not config.remember_limit:
        return None
    try:
        memory = memory_of(settings)
        return memory, account, memory.load(account)
    except Exception as exc:
        logger.warning("The account's last limit could not be read (%s): finding it anew", _reason(exc))
        return None


def keep(memory: LimitMemory, account: str, remembered: Remembered) -> None:
    """Save what a crawl found; a failure is one line, never the crawl's."""
    try:
        memory.save(account, remembered)
    except Exception as exc:
        logger.warning("The account's limit was not remembered in %s: %s", memory.where, _reason(exc))
    else:
        logger.debug("Remembered in %s: %s", memory.where, remembered)


class LimitKeeper:
    """This crawl's account in its memory: the gate starts where the last
    crawl ended (:meth:`recall`) and keeps what it found (:meth:`keep`)."""

    def __init__(self, memory: LimitMemory, account: str):
        self.memory = memory
        self.account = account

    @classmethod
    def recall(cls, settings: BaseSettings, rule: AdaptiveLimit, stats: StatsCollector) -> LimitKeeper | None:
        """Start *rule* where the last crawl of this account ended: at the
        limit it proved (slow start goes on from there), or at the ceiling
        its 503s revealed (held there, probed upward as usual).  ``None``
        when nothing is remembered for this crawl (see :func:`recall`)."""
        found = recall(settings)
        if found is None:
            return None
        memory, account, remembered = found
        if remembered is not None:
            rule.ceiling = None if remembered.ceiling is None else min(remembered.ceiling, rule.cap)
            rule.start = min(rule.cap, remembered.limit if rule.ceiling is None else rule.ceiling)
            rule.limit = float(rule.start)
            rule.proven = rule.start
            stats.set_value("tmapi/throttle/remembered", rule.start)
            logger.info(
                "Starting at %d calls in flight (%s), as the last crawl of this account found on %s "
                "(remembered in %s; TMAPI_CONCURRENCY sets it instead)",
                rule.start,
                "the ceiling its 503s showed" if rule.ceiling is not None else "proved without a 503",
                remembered.saved_at or "an unknown date",
                memory.where,
            )
            if remembered.quota_paused_at:
                logger.info("The last crawl of this account met a 439 pause on %s", remembered.quota_paused_at)
        return cls(memory, account)

    def keep(self, rule: AdaptiveLimit, quota_paused_at: str | None) -> None:
        """Keep what *rule* found, for the next crawl (when calls were sent)."""
        if not rule.proven:
            return
        limit = rule.ceiling if rule.ceiling is not None else max(rule.proven, rule.start)
        remembered = Remembered(limit=limit, ceiling=rule.ceiling, quota_paused_at=quota_paused_at, saved_at=now_iso())
        keep(self.memory, self.account, remembered)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
