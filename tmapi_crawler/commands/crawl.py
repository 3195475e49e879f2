"""``scrapy crawl`` for this project: Scrapy's command, plus

* the ``TMAPI_*`` settings and the spider arguments are checked before the
  crawl starts; a bad one prints one line (no traceback) and exits 2;
* the exit code tells how the crawl ended (see :data:`EXIT_CODES`), so that
  cron jobs and schedulers can trust it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from tmapi_crawler.config import ConfigError, config_from_settings, require_token

if TYPE_CHECKING:
    import argparse

    from scrapy.crawler import Crawler

#: Exit codes by finish reason; any reason not listed exits 1.
EXIT_CODES = {
    "finished": 0,
    "tmapi_budget_exhausted": 0,  # the crawl did what it was allowed to
    "tmapi_auth_failed": 3,
    "tmapi_quota_exhausted": 4,
    "shutdown": 130,  # stopped by Ctrl-C or SIGTERM; resume with JOBDIR
}
EXIT_BAD_INPUT = 2


def exit_code_for(reason: str | None) -> int:
    return EXIT_CODES.get(reason or "", 1)


class Command(ScrapyCrawlCommand):
    def short_desc(self) -> str:
        return "Run a TMAPI spider (shop, category or item)"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give exactly one spider: shop, category or item")
        assert self.crawler_process is not None
        try:
            spidercls = self.crawler_process.spider_loader.load(args[0])
        except KeyError:
            names = ", ".join(self.crawler_process.spider_loader.list())
            return self._refuse(f"no spider {args[0]!r}; the spiders are: {names}")
        assert self.settings is not None
        try:
            config = config_from_settings(self.settings)
            require_token(config)
            check = getattr(spidercls, "check_arguments", None)
            if check is not None:
                check(opts.spargs, self.settings)
        except ConfigError as exc:
            return self._refuse(str(exc))
        crawler: Crawler = self._create_crawler(spidercls)
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed:
            self.exitcode = 1
            return None
        reason = crawler.stats.get_value("finish_reason") if crawler.stats else None
        self.exitcode = exit_code_for(reason)

    def _refuse(self, message: str) -> None:
        print(f"Error: {message}", file=sys.stderr)
        self.exitcode = EXIT_BAD_INPUT
