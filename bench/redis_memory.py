"""What Redis holds per pending request and per seen product, measured.

    python -m bench.redis_memory

Starts a redis-server on a free loopback port, pushes real requests of the
shop spider through the real queue (a detail request carrying a documented
listing entry; a description request carrying a whole product record) and
real fingerprints into the seen set, and prints Redis's own ``used_memory``
per entry, with what a crawl of 10 million products needs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from scrapy.utils.test import get_crawler

from tests.harness import RedisServer
from tmapi_crawler.api import Endpoint
from tmapi_crawler.cluster.queue import LeasedQueue
from tmapi_crawler.records import product_record
from tmapi_crawler.spiders.shop import ShopSpider

ROOT = Path(__file__).resolve().parent.parent
N = 20_000
PRODUCTS = 10_000_000


def used(redis: object) -> int:
    return int(redis.info("memory")["used_memory"])  # type: ignore[attr-defined]


def main() -> None:
    examples = ROOT / "tmapi_crawler" / "sandbox" / "data"
    listing = json.loads((examples / "shop_items.json").read_text())["data"]["items"][0]
    detail = json.loads((examples / "item_detail.json").read_text())["data"]
    crawler = get_crawler(ShopSpider, {"TMAPI_TOKEN": "bench", "ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0}})
    spider = ShopSpider.from_crawler(crawler, member_id="b2b-22146365959302bc20")
    opts = spider.options(spider.args)
    opts["page_size"] = 20
    source = {"spider": "shop", "member_id": "b2b-22146365959302bc20", "page": 1, "position": 0}
    detail_request = spider.detail_request(859086919394, source=source, listing=listing, opts=opts)
    product = product_record(detail, listing=listing, source=source, language="zh")
    desc_request = spider.api_request(
        Endpoint.ITEM_DESC,
        {"item_id": product["item_id"]},
        callback=spider.parse_desc,
        meta={"product": product, "item_id": product["item_id"], "source": source},
    )
    with tempfile.TemporaryDirectory(prefix="tmapi-redis-") as tmp:
        server = RedisServer(Path(tmp))
        try:
            r = server.client()
            version = r.info("server")["redis_version"]
            figures = {}
            for name, request in (("pending detail request", detail_request), ("pending desc request", desc_request)):
                r.flushall()
                queue = LeasedQueue(r, spider, "%(spider)s:requests")
                before = used(r)
                for _ in range(N):
                    queue.push(request)
                figures[name] = (used(r) - before) / N
            r.flushall()
            fingerprinter = crawler.request_fingerprinter
            before = used(r)
            pipe = r.pipeline(transaction=False)
            for i in range(N * 5):
                request = detail_request.replace(url=f"{detail_request.url}&n={i}")
                pipe.sadd("shop:dupefilter", fingerprinter.fingerprint(request))
            pipe.execute()
            figures["seen request (fingerprint)"] = (used(r) - before) / (N * 5)
        finally:
            server.stop()
    for name, size in figures.items():
        print(f"{name:<28} {size:>8.0f} bytes")
    seen = 2 * figures["seen request (fingerprint)"]  # a detail and a description per product
    print(f"{'seen product (2 requests)':<28} {seen:>8.0f} bytes")
    print(f"\n{PRODUCTS:,} products: the seen set holds {PRODUCTS * seen / 2**30:.1f} GiB")
    print(f"(redis-server {version}, {N:,} entries of each kind)")


if __name__ == "__main__":
    main()
