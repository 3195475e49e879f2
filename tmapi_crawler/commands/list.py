"""``scrapy list`` for this project: Scrapy's command, and with ``--verbose``
(``-v``) each spider's arguments, their meaning and default, from the
argument models (:mod:`tmapi_crawler.arguments`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands.list import Command as ScrapyListCommand
from scrapy.spiderloader import get_spider_loader

from tmapi_crawler.arguments import help_text

if TYPE_CHECKING:
    import argparse


class Command(ScrapyListCommand):
    def short_desc(self) -> str:
        return "List available spiders (--verbose: with their arguments)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="each spider's arguments, their meaning and default"
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if not opts.verbose:
            super().run(args, opts)
            return
        assert self.settings is not None
        loader = get_spider_loader(self.settings)
        blocks = []
        for name in sorted(loader.list()):
            model = getattr(loader.load(name), "args_model", None)
            blocks.append(f"{name}\n{help_text(name, model)}" if model is not None else name)
        print("\n\n".join(blocks))
