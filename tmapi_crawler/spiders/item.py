"""``scrapy crawl item -a item_ids=...`` (or ``urls=``, ``file=``): given products."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmapi_crawler.api import Endpoint, offer_id_from_url
from tmapi_crawler.arguments import ItemArgs, read_inputs
from tmapi_crawler.spiders.base import PRIORITY_DETAIL, TmapiSpider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy import Request


class ItemSpider(TmapiSpider):
    name = "item"
    args_model = ItemArgs
    args: ItemArgs

    async def start(self) -> AsyncIterator[Any]:
        for item_id in self.args.item_ids:
            yield self.input_request(str(item_id))
        for url in self.args.urls:
            yield self.input_request(url)
        if self.args.file is not None:
            # Streamed: a file of a million ids is never held in memory.
            for _, text, problem in read_inputs(self.args.file):
                if problem is None:
                    yield self.input_request(text)

    def input_request(self, text: str) -> Request:
        source = {"spider": "item", "input": text}
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("tmapi/products_expected")
        if text.isdigit():
            return self.detail_request(int(text), source=source, listing=None)
        return self.api_request(
            Endpoint.ITEM_DETAIL_BY_URL,
            {"url": text, **self.detail_params()},
            callback=self.parse_detail,
            meta={"source": source, "listing": None, "item_id": offer_id_from_url(text)},
            priority=PRIORITY_DETAIL,
        )
