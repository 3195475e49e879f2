"""``scrapy crawl item -a item_ids=...`` (or ``urls=``, ``file=``): given products."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmapi_crawler.api import Endpoint, offer_id_from_url
from tmapi_crawler.arguments import ItemArgs, read_inputs
from tmapi_crawler.spiders.base import PRIORITY_DETAIL, TmapiSpider
from tmapi_crawler.spiders.context import Detail

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request

    from tmapi_crawler.spiders.context import Options


class ItemSpider(TmapiSpider):
    name = "item"
    args_model = ItemArgs
    args: ItemArgs

    def seed_requests(self, args: ItemArgs) -> Iterator[Any]:
        opts = self.options(args)
        for item_id in args.item_ids:
            yield self.input_request(str(item_id), opts)
        for url in args.urls:
            yield self.input_request(url, opts)
        if args.file is not None:
            # Streamed: read as the crawl goes (see TmapiSpider.backpressure).
            for _, text, problem in read_inputs(args.file):
                if problem is None:
                    yield self.input_request(text, opts)

    def input_request(self, text: str, opts: Options) -> Request:
        source = {"spider": "item", "input": text}
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("tmapi/products_expected")
        if text.isdigit():
            return self.detail_request(int(text), source=source, listing=None, opts=opts)
        return self.api_request(
            Endpoint.ITEM_DETAIL_BY_URL,
            {"url": text, **self.detail_params(opts)},
            callback=self.parse_detail,
            cb_kwargs=dict(Detail(source=source, listing=None, item_id=offer_id_from_url(text), opts=opts)),
            priority=PRIORITY_DETAIL,
        )
