"""``scrapy cluster``: seeds, progress and clean-up of a distributed crawl.

::

    scrapy cluster push   shop -a member_id=b2b-1,b2b-2 -a sort=sales
    scrapy cluster push   item -a file=ids.txt
    scrapy cluster status [shop ...]
    scrapy cluster clear  shop

``push`` checks the arguments exactly as ``scrapy crawl`` does, then pushes
one JSON seed per shop, category or product onto ``tmapi:<spider>:seeds``,
where the workers take them.  ``status`` counts what Redis holds: requests
pending and in workers' hands, seeds waiting, requests seen, and the
account's shared limit.  ``clear`` deletes a crawl's keys, so that the same
seeds are crawled again from scratch (the seen set would skip them).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.conf import arglist_to_dict

from tmapi_crawler.arguments import parse_arguments
from tmapi_crawler.cluster.defaults import GATE_HOLDERS_KEY, GATE_KEY, crawl_keys
from tmapi_crawler.commands import refuse
from tmapi_crawler.config import ConfigError, from_environment, is_distributed, shown

if TYPE_CHECKING:
    import argparse

    from redis import Redis

ACTIONS = ("push", "status", "clear")


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False  # it crawls nothing: no reactor, no start-up log

    def syntax(self) -> str:
        return "push|status|clear [spider] [-a NAME=VALUE ...]"

    def short_desc(self) -> str:
        return "Push seeds to, watch, or clear a distributed crawl in Redis (REDIS_URL)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "-a", dest="spargs", action="append", default=[], metavar="NAME=VALUE", help="a spider argument (push)"
        )

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        try:
            opts.spargs = arglist_to_dict(opts.spargs)
        except ValueError:
            raise UsageError("invalid -a value, use -a NAME=VALUE", print_help=False) from None

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if not args or args[0] not in ACTIONS:
            raise UsageError(f"give an action: {', '.join(ACTIONS)}")
        action, spiders = args[0], args[1:]
        from_environment(self.settings)  # a project with the add-on alone: REDIS_URL, TMAPI_STORE
        if not is_distributed(self.settings):
            refuse(
                "REDIS_URL is not set: set the REDIS_URL environment variable, or give -s REDIS_URL=redis://host:6379/0"
            )
        # Redis's client loads only when this command runs, not for every
        # scrapy command (start-up time).
        from tmapi_crawler.cluster.connection import check_redis, redis_from_settings

        problem = check_redis(self.settings)
        if problem:
            refuse(problem)
        loader = get_spider_loader(self.settings)
        for name in spiders:
            if name not in loader.list():
                refuse(f"no spider {shown(name)}; the spiders are: {', '.join(loader.list())}")
        server = redis_from_settings(self.settings)
        if action == "push":
            if len(spiders) != 1:
                raise UsageError("push takes one spider: scrapy cluster push shop -a member_id=...")
            self.push(server, loader.load(spiders[0]), opts.spargs)
        elif action == "status":
            self.status(server, spiders or sorted(loader.list()))
        else:
            if not spiders:
                raise UsageError("clear takes the spiders whose crawl to delete: scrapy cluster clear shop")
            for name in spiders:
                deleted = server.delete(*crawl_keys(name).values())
                print(f"{name}: {deleted} keys deleted")

    def push(self, server: Redis, spidercls: Any, kwargs: dict[str, str]) -> None:
        try:
            model = spidercls.args_model
            seeds = list(parse_arguments(model, kwargs).json_seeds(model.options_of(kwargs)))
        except ConfigError as exc:
            refuse(str(exc))
        key = crawl_keys(spidercls.name)["seeds"]
        pipe = server.pipeline()
        for seed in seeds:
            pipe.rpush(key, json.dumps(seed, ensure_ascii=False))
        pipe.execute()
        print(f"{len(seeds)} seeds pushed to {key}")

    @staticmethod
    def status(server: Redis, spiders: list[str]) -> None:
        print(f"{'spider':<10} {'pending':>9} {'in hand':>9} {'seeds':>7} {'seen':>10}")
        for name in spiders:
            keys = crawl_keys(name)
            pipe = server.pipeline(transaction=False)
            pipe.zcard(keys["queue"])
            pipe.zcard(keys["leases"])
            pipe.llen(keys["seeds"])
            pipe.scard(keys["dupefilter"])
            pending, leased, seeds, seen = pipe.execute()
            print(f"{name:<10} {pending:>9} {leased:>9} {seeds:>7} {seen:>10}")
        raw: dict[bytes, bytes] = server.hgetall(GATE_KEY)  # type: ignore[assignment]
        gate = {k.decode(): v.decode() for k, v in raw.items()}
        in_flight = server.zcard(GATE_HOLDERS_KEY)
        line = f"account: {in_flight} calls in flight, limit {gate.get('limit', '-')}"
        if "ceiling" in gate:
            line += f" (503s seen at {int(gate['ceiling']) + 1})"
        if "paused_since" in gate:
            line += ", PAUSED by 439 (top up the balance)"
        print(line)
