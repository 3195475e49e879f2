"""A bare Scrapy spider that makes the same calls as ``scrapy crawl shop``
(listing pages, then one ``item_detail`` and one ``item_desc`` per product)
and exports the raw JSON: the yardstick of the benchmarks.

    scrapy runspider bench/bare_spider.py -a base=URL -a token=T -a member_id=M -O out.jsonl
"""

from __future__ import annotations

import json
import math
from typing import Any

import scrapy


class BareShopSpider(scrapy.Spider):
    name = "bare"

    def __init__(self, base: str, token: str, member_id: str, page_size: str = "20", **kwargs: Any):
        super().__init__(**kwargs)
        self.base, self.token, self.member_id, self.page_size = base, token, member_id, int(page_size)

    def page(self, page: int) -> scrapy.Request:
        url = (
            f"{self.base}/1688/shop/items?apiToken={self.token}"
            f"&member_id={self.member_id}&page={page}&page_size={self.page_size}"
        )
        return scrapy.Request(url, callback=self.parse_page, cb_kwargs={"page": page})

    async def start(self):
        yield self.page(1)

    def parse_page(self, response, page: int):
        data = json.loads(response.body)["data"]
        if page == 1:
            for n in range(2, math.ceil(int(data["total_count"]) / self.page_size) + 1):
                yield self.page(n)
        for entry in data["items"]:
            url = f"{self.base}/1688/item_detail?apiToken={self.token}&item_id={entry['item_id']}&language=zh"
            yield scrapy.Request(url, callback=self.parse_detail, priority=10)

    def parse_detail(self, response):
        data = json.loads(response.body)["data"]
        url = f"{self.base}/1688/item_desc?apiToken={self.token}&item_id={data['item_id']}"
        yield scrapy.Request(url, callback=self.parse_desc, priority=20, cb_kwargs={"detail": data})

    def parse_desc(self, response, detail):
        yield {**detail, **json.loads(response.body)["data"]}
