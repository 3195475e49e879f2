"""``scrapy crawl shop -a member_id=...``: every product of one or more shops."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tmapi_crawler.api import Endpoint, envelope_of
from tmapi_crawler.arguments import ShopArgs
from tmapi_crawler.records import BadAnswer
from tmapi_crawler.spiders.base import PRIORITY_PAGE, TmapiSpider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from scrapy import Request
    from scrapy.http import Response


class ShopSpider(TmapiSpider):
    name = "shop"
    args_model = ShopArgs
    args: ShopArgs

    async def start(self) -> AsyncIterator[Any]:
        for member_id in self.args.member_id:
            yield self.page_request(member_id, 1)

    def page_request(self, member_id: str, page: int) -> Request:
        a = self.args
        params = {
            "member_id": member_id,
            "page": page,
            "page_size": a.page_size,
            "sort": a.sort,
            "shop_cat_id": a.shop_cat_id,
            "price_start": a.price_start,
            "price_end": a.price_end,
        }
        return self.api_request(Endpoint.SHOP_ITEMS, params, callback=self.parse_page, priority=PRIORITY_PAGE)

    def parse_page(self, response: Response) -> Iterator[Any]:
        params = response.meta["tmapi"]["params"]
        member_id, page = params["member_id"], params["page"]
        data = envelope_of(response).data
        try:
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise BadAnswer("shop_items data has no list of items")
            total = data.get("total_count")
            if not (isinstance(total, int) or (isinstance(total, str) and total.isdigit())):
                raise BadAnswer(f"shop_items total_count is not a number: {total!r}")
        except BadAnswer as exc:
            yield self.failure(response.request, None, f"malformed answer: {exc}")
            return
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("tmapi/pages")
        if page == 1:
            # Page 1 says how many there are: ask for all the others at once.
            pages = math.ceil(int(total) / self.args.page_size)
            if self.args.max_pages:
                pages = min(pages, self.args.max_pages)
            stats.inc_value("tmapi/pages_known", max(pages, 1))
            stats.inc_value("tmapi/products_expected", min(int(total), pages * self.args.page_size))
            for next_page in range(2, pages + 1):
                yield self.page_request(member_id, next_page)
        for position, entry in enumerate(data["items"]):
            source = {"spider": "shop", "member_id": member_id, "page": page, "position": position}
            yield from self.follow_entry(entry, source, response.request)
