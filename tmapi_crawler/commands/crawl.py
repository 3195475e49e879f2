"""``scrapy crawl`` for this project: Scrapy's command, plus

* the ``TMAPI_*`` settings and the spider arguments are checked before the
  crawl starts; a bad one prints one line (no traceback) and exits 2;
* the exit code tells how the crawl ended (see :class:`tmapi_crawler.reasons.FinishReason`), so that
  cron jobs and schedulers can trust it.
"""

from __future__ import annotations

import re
import signal
import sys
from typing import TYPE_CHECKING, Any

from scrapy.commands import ScrapyHelpFormatter
from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.spiderloader import get_spider_loader

from tmapi_crawler.arguments import CategoryArgs, CommonArgs, ItemArgs, ShopArgs, help_text
from tmapi_crawler.commands import EXIT_BUSY, EXIT_NO_LISTING, refuse
from tmapi_crawler.config import (
    ConfigError,
    config_from_settings,
    from_environment,
    is_distributed,
    require_token,
    shown,
)
from tmapi_crawler.durable.feeds import FEED_ERROR_STAT, FEED_FAILED, check_outputs, local_feeds
from tmapi_crawler.durable.jobdir import check_jobdir, jobdir_of
from tmapi_crawler.durable.locks import Busy, hold_feed, hold_jobdir
from tmapi_crawler.exports import register_feed_formats
from tmapi_crawler.reasons import exit_code_for
from tmapi_crawler.store.extension import check_store, store_url

if TYPE_CHECKING:
    import argparse

    from scrapy.crawler import Crawler

LISTING_ENDPOINTS = ("shop_items", "category_items")


#: The arguments of this project's spiders, for ``--help``.
SPIDER_ARGUMENTS: dict[str, type[CommonArgs]] = {"shop": ShopArgs, "category": CategoryArgs, "item": ItemArgs}


class HelpWithArguments(ScrapyHelpFormatter):
    """Scrapy's help, with the epilog (the spiders' arguments) as written:
    one argument a line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class Command(ScrapyCrawlCommand):
    def short_desc(self) -> str:
        return "Run a TMAPI spider (shop, category or item)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Scrapy's options, and below them the arguments of the spider the
        command line names (``scrapy crawl shop --help``), or of each of
        ours when it names none: argparse prints the help while it reads
        the options, before it has the spider's name, so it is looked for
        in the command line itself."""
        super().add_options(parser)
        named = [spider for spider in SPIDER_ARGUMENTS if spider in sys.argv[1:]]
        parser.formatter_class = HelpWithArguments
        parser.epilog = "\n\n".join(help_text(name, SPIDER_ARGUMENTS[name]) for name in named or SPIDER_ARGUMENTS)

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        register_feed_formats(self.settings)  # -O shop.csv:shopify in a project with the add-on alone
        super().process_options(args, opts)
        # Checked here, before Scrapy sets up logging and the reactor, so that
        # a mistake costs one line on stderr and nothing else.
        if len(args) != 1:
            raise UsageError("give exactly one spider: shop, category or item")
        from_environment(self.settings)  # as the add-on will: checked here with the values it will use
        loader = get_spider_loader(self.settings)
        try:
            spidercls = loader.load(args[0])
        except KeyError:
            refuse(f"no spider {shown(args[0])}; the spiders are: {', '.join(loader.list())}")
        if "_job" in opts.spargs and self.settings.getpriority("TMAPI_TOKEN") == SETTINGS_PRIORITIES["cmdline"]:
            # A job of scrapyd: its settings are in scrapyd's process list,
            # its job list and its logs.
            refuse(
                "scrapyd was given the token as a setting (setting=TMAPI_TOKEN=... in schedule.json), where "
                "scrapyd shows it: start scrapyd with the TMAPI_TOKEN environment variable instead"
            )
        job = opts.spargs.get("_job")
        if job and re.fullmatch(r"[\w-]{1,100}", job):
            # scrapyd's jobs share its directory: each its own failures and changes.
            for name, stem in (("TMAPI_FAILURES_FILE", "failures"), ("TMAPI_CHANGES_FILE", "changes")):
                if self.settings.getpriority(name) is None:
                    self.settings.set(name, f"{stem}-{job}.jsonl", "project")
        try:
            require_token(config_from_settings(self.settings))
            store_url(self.settings)  # SQLite with REDIS_URL: refused before Redis is asked
            if is_distributed(self.settings):
                # Redis's client loads only in distributed mode (start-up time).
                from tmapi_crawler.cluster.connection import check_redis

                problem = check_redis(self.settings)
                if problem:
                    refuse(problem)
            self._hold(jobdir=True)  # before its state is read
            check_jobdir(self.settings, spidercls.name)
            check_outputs(self.settings)
            check_store(self.settings)
            check = getattr(spidercls, "check_arguments", None)
            if check is not None:
                check(opts.spargs, self.settings)
            self._hold(jobdir=False)  # last: a refused command leaves no file behind
        except Busy as exc:
            print(f"Error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_BUSY) from None
        except ConfigError as exc:
            refuse(str(exc))

    def _hold(self, *, jobdir: bool) -> None:
        """Hold the JOBDIR, or the feed files, for this crawl until this
        process ends (:mod:`tmapi_crawler.durable.locks`); raises :class:`Busy`."""
        assert self.settings is not None
        if jobdir:
            path = jobdir_of(self.settings)
            if path is not None:
                hold_jobdir(path)
            return
        for feed in local_feeds(self.settings):
            hold_feed(feed)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.crawler_process is not None
        crawler: Crawler = self._create_crawler(args[0])
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed:
            self.exitcode = 1
            return
        reason = crawler.stats.get_value("finish_reason") if crawler.stats else None
        if reason is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # A second Ctrl-C (or SIGTERM): Scrapy stopped at once, before
            # the spider closed; it leaves the signals ignored.
            reason = "shutdown"
        if crawler.stats and crawler.stats.get_value(FEED_ERROR_STAT) and exit_code_for(reason) == 0:
            reason = FEED_FAILED  # a file failed as the crawl closed: it is not whole
        self.exitcode = exit_code_for(reason)
        if reason == "finished" and crawler.stats and self._read_no_listing(crawler.stats.get_stats()):
            failures = config_from_settings(self.settings).failures_file if self.settings else "the failures file"
            print(
                f"Error: no listing page could be read (the first page of every listing failed: see {failures}); "
                "nothing was crawled",
                file=sys.stderr,
            )
            self.exitcode = EXIT_NO_LISTING

    @staticmethod
    def _read_no_listing(stats: dict[str, Any]) -> bool:
        """Listing pages failed and none was read (an empty listing that was
        read is a success, with a warning)."""
        failed = sum(int(stats.get(f"tmapi/failures/{endpoint}", 0)) for endpoint in LISTING_ENDPOINTS)
        return failed > 0 and not stats.get("tmapi/pages")
