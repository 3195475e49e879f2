"""``scrapy parse --spider item <TMAPI URL>``: Scrapy's command, for an API
call: the spider is made without a seed (it parses the one URL), and its
``parse`` picks the callback from the endpoint (docs/crawling.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands.parse import Command as ScrapyParseCommand

from tmapi_crawler.arguments import PARSING

if TYPE_CHECKING:
    import argparse


class Command(ScrapyParseCommand):
    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        opts.spargs = {**opts.spargs, PARSING: "1"}
        super().run(args, opts)
