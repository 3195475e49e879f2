"""``scrapy catalog export`` and ``scrapy catalog changes``: what the catalog
store holds, without a call.

* ``scrapy catalog export [-O products.jsonl] [--delisted]
  [--changed-since DATE]``: the current catalog, one product record a line
  (as the crawl's feed writes them, with ``detail_fetched_at`` and
  ``desc_fetched_at``); ``--delisted`` adds the products no listing names any
  more, with ``delisted_at``; ``--changed-since`` keeps only the products
  with a change since then (delisted ones included): a shop's daily update.
* ``scrapy catalog changes --since 2026-11-01 [--until ...] [--item-id N]
  [--change price,stock] [-O changes.jsonl]``: the change records the store
  kept, oldest first.
* ``scrapy catalog report [--since ...] [--until ...] [--item-id N ...]
  [--top 20] -O report.html``: one self-contained HTML page of the period
  (:mod:`tmapi_crawler.store.report`).
* ``scrapy catalog check [--store S]``: the store's integrity (SQLite's
  ``integrity_check`` of every page; for PostgreSQL, the schema and its
  version), one line a problem; exit 0 when sound, 1 when not.

The store is ``TMAPI_STORE`` (``-s TMAPI_STORE=catalog.sqlite``, or
``--store``).  Without ``-O`` the records go to standard output; with it,
to a temporary file renamed when complete.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from tmapi_crawler.commands import refuse, whole_file
from tmapi_crawler.config import from_environment, shown
from tmapi_crawler.store.catalog import changes, products
from tmapi_crawler.store.changes import CHANGE_KINDS
from tmapi_crawler.store.checks import integrity_check
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.dialect import iso
from tmapi_crawler.store.history import History, Period
from tmapi_crawler.store.report import Report
from tmapi_crawler.store.url import StoreError, parse_store_url

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

ACTIONS = ("export", "changes", "report", "check")
#: ``scrapy catalog check`` found a problem.
EXIT_UNSOUND = 1


def parse_time(name: str, text: str) -> str:
    """A date (``2026-11-01``) or a time (``2026-11-01T08:00:00Z``) as the
    store compares them; refuses anything else in one line."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        refuse(f"--{name}={shown(text)} is not a date: write 2026-11-01 or 2026-11-01T08:00:00Z")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(iso(value))


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False  # it crawls nothing

    def syntax(self) -> str:
        return "export|changes|report|check [options]"

    def short_desc(self) -> str:
        return "Write the catalog store's products or changes as JSON lines, without a call"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-O", "--overwrite-output", dest="output", metavar="FILE", help="the file to write")
        parser.add_argument("--store", help="the store (default: the TMAPI_STORE setting)")
        parser.add_argument("--delisted", action="store_true", help="export: the delisted products too")
        parser.add_argument(
            "--changed-since", help="export: only products with a change from this date or time on (UTC)"
        )
        parser.add_argument("--since", help="changes: from this date or time on (UTC)")
        parser.add_argument("--until", help="changes: before this date or time (UTC)")
        parser.add_argument(
            "--item-id", type=int, action="append", help="changes, report: of this product (again for more)"
        )
        parser.add_argument("--top", type=int, default=20, help="report: the biggest price movers shown (20)")
        parser.add_argument("--change", help="changes: of these kinds only (" + ",".join(CHANGE_KINDS) + ")")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if len(args) != 1 or args[0] not in ACTIONS:
            raise UsageError(
                "scrapy catalog export [-O products.jsonl] | scrapy catalog changes --since 2026-11-01 "
                "| scrapy catalog report -O report.html | scrapy catalog check"
            )
        action = args[0]
        from_environment(self.settings)  # a project with the add-on alone: REDIS_URL, TMAPI_STORE
        given = opts.store or self.settings.get("TMAPI_STORE")
        if isinstance(given, SecretStr):
            given = given.get_secret_value()
        if not given:
            refuse(
                "no catalog store: give --store catalog.sqlite, -s TMAPI_STORE=... or the TMAPI_STORE environment "
                "variable (the crawl's TMAPI_STORE)"
            )
        if action == "report":
            self.report(str(given), opts)
            return
        if action == "check":
            self.check(str(given))
            return
        if action == "changes":
            if not opts.since:
                refuse("give --since: scrapy catalog changes --since 2026-11-01")
            kinds = [k.strip() for k in (opts.change or "").split(",") if k.strip()]
            unknown = [k for k in kinds if k not in CHANGE_KINDS]
            if unknown:
                kinds_known = ", ".join(CHANGE_KINDS)
                refuse(f"--change={shown(opts.change)}: unknown {', '.join(unknown)}; the kinds are {kinds_known}")
            since = parse_time("since", opts.since)
            until = parse_time("until", opts.until) if opts.until else None
        changed_since = parse_time("changed-since", opts.changed_since) if opts.changed_since else None
        try:
            db = CatalogDB(parse_store_url(str(given)), create=False)
        except StoreError as exc:
            refuse(str(exc))
        records = (
            products(db, delisted=opts.delisted, changed_since=changed_since)
            if action == "export"
            else changes(db, since, until=until, item_ids=opts.item_id or (), kinds=kinds)
        )
        try:
            count = write_lines(records, opts.output, db)
        finally:
            records.close()  # a generator stopped early: its cursor before the connection
            db.close()
        what = "products" if action == "export" else "changes"
        print(f"{count} {what} written to {opts.output or 'standard output'}", file=sys.stderr)

    @staticmethod
    def check(store: str) -> None:
        """Every problem of the store, one line each on stderr; exit 1 if any."""
        url = parse_store_url(store)
        try:
            db = CatalogDB(url, create=False)
        except StoreError as exc:
            if "no catalog store at" in str(exc) or "is not a catalog store" in str(exc):
                refuse(str(exc))
            problems = [str(exc)]
        else:
            try:
                problems = integrity_check(db)
            finally:
                db.close()
        for problem in problems:
            print(f"{url.display}: {problem}", file=sys.stderr)
        if problems:
            how = (
                f"sqlite3 {url.target} .recover | sqlite3 recovered.sqlite (then TMAPI_STORE=recovered.sqlite), "
                "or restore a backup"
                if url.kind == "sqlite"
                else "restore a backup, or run a crawl with this tmapi_crawler once to migrate its schema"
            )
            count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
            print(f"{url.display} is not sound ({count}): {how}", file=sys.stderr)
            raise SystemExit(EXIT_UNSOUND)
        print(f"{url.display} is sound", file=sys.stderr)

    @staticmethod
    def report(store: str, opts: argparse.Namespace) -> None:
        if not opts.output:
            refuse("give the file to write: scrapy catalog report -O report.html")
        if opts.top < 1:
            refuse(f"--top={opts.top}: give how many price movers to show, 1 or more (20 by default)")
        period = Period(
            parse_time("since", opts.since) if opts.since else None,
            parse_time("until", opts.until) if opts.until else None,
        )
        if period.since and period.until and period.since >= period.until:
            refuse(f"--since={opts.since} is not before --until={opts.until}: give a period that is not empty")
        path = Path(opts.output)
        if not path.parent.is_dir():
            refuse(f"cannot write {opts.output}: the directory {path.parent} does not exist")
        try:
            db = CatalogDB(parse_store_url(store), create=False)
        except StoreError as exc:
            refuse(str(exc))
        try:
            page = Report(History(db), period)
            text = page.render(opts.top, opts.item_id or [])
            with whole_file(path) as out:
                out.write(text.encode("utf-8"))
        except StoreError as exc:
            refuse(str(exc))
        except OSError as exc:
            refuse(f"cannot write {opts.output}: {exc}")
        except Exception as exc:
            refuse(str(db.error(exc)))
        finally:
            db.close()
        print(f"{page.charts} charts written to {opts.output} ({path.stat().st_size // 1024} kB)", file=sys.stderr)


def write_lines(records: Iterable[dict[str, Any]], output: str | None, db: CatalogDB) -> int:
    """Write *records* as JSON lines to *output* (standard output when
    ``None``), a file written whole or not at all."""
    if output is None:
        return _dump(records, sys.stdout.buffer, db)
    path = Path(output)
    if not path.parent.is_dir():
        refuse(f"cannot write {output}: the directory {path.parent} does not exist")
    with whole_file(path) as out:
        return _dump(records, out, db)


def _dump(records: Iterable[dict[str, Any]], out: IO[bytes], db: CatalogDB) -> int:
    count = 0
    try:
        for record in records:
            out.write(orjson.dumps(record) + b"\n")
            count += 1
    except BrokenPipeError:
        # The reader stopped (| head): as other command-line tools, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as exc:
        refuse(f"cannot write the records: {exc}")
    except Exception as exc:
        if isinstance(exc, (StoreError, SystemExit)):
            raise
        refuse(str(db.error(exc)))
    return count
