"""``scrapy crawl shop -a member_id=...``: every product of one or more shops."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tmapi_crawler.api import Endpoint, envelope_of
from tmapi_crawler.arguments import ShopArgs
from tmapi_crawler.records import BadAnswer
from tmapi_crawler.spiders.base import TmapiSpider, request_of, tracked
from tmapi_crawler.spiders.context import ShopPage

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import Response
    from twisted.python.failure import Failure

    from tmapi_crawler.spiders.context import Options


#: Listing pages of a shop in hand at once.  Page 1 says how many there are;
#: page p + PAGES_AHEAD is asked for when page p is done (or failed), so that
#: what a crawl holds (pages in flight, the detail requests they yield) stays
#: bounded whatever the shop's size, while products are still found far
#: faster than an account's limit lets them be fetched.
PAGES_AHEAD = 8


class ShopSpider(TmapiSpider):
    name = "shop"
    args_model = ShopArgs
    args: ShopArgs

    def seed_requests(self, args: ShopArgs) -> Iterator[Any]:
        for member_id in args.member_id:
            opts = self.options(args)
            opts["page_size"] = args.page_size
            params = {
                "member_id": member_id,
                "page": 1,
                "page_size": args.page_size,
                "sort": args.sort,
                "shop_cat_id": args.shop_cat_id,
                "price_start": args.price_start,
                "price_end": args.price_end,
            }
            yield self.page_request(params, opts)

    def page_request(self, params: dict[str, Any], opts: Options, pages: int | None = None) -> Request:
        return self.api_request(
            Endpoint.SHOP_ITEMS,
            params,
            callback=self.parse_page,
            errback=self.on_page_error,
            priority=self.page_priority(),
            cb_kwargs=dict(ShopPage(opts=opts, pages=pages)),
        )

    def page_ahead(self, request: Request) -> Iterator[Request]:
        """The page PAGES_AHEAD after *request*'s, if the shop has it."""
        params, pages = request.meta["tmapi"]["params"], request.cb_kwargs["pages"]
        if pages is not None and params["page"] + PAGES_AHEAD <= pages:
            yield self.page_request({**params, "page": params["page"] + PAGES_AHEAD}, request.cb_kwargs["opts"], pages)

    @tracked
    def on_page_error(self, failure: Failure) -> Iterator[Any]:
        yield from self.error_records(failure)
        yield from self.page_ahead(failure.request)  # type: ignore[attr-defined]

    @tracked
    def parse_page(self, response: Response, *, opts: Options, pages: int | None) -> Iterator[Any]:
        request = request_of(response)
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
            self.note_page(request, None)
            yield self.failure(request, None, f"malformed answer: {exc}")
            yield from self.page_ahead(request)
            return
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("tmapi/pages")
        if page == 1:
            if int(total) == 0:
                self.logger.warning("Shop %s lists no product: nothing to crawl there", member_id)
            # Page 1 says how many there are: the next PAGES_AHEAD now, each
            # of the others when the page PAGES_AHEAD before it is done.
            page_size = opts["page_size"]
            listed_pages = max(1, math.ceil(int(total) / page_size))
            pages = min(listed_pages, opts["max_pages"]) if opts["max_pages"] else listed_pages
            stats.inc_value("tmapi/pages_known", max(pages, 1))
            stats.inc_value("tmapi/products_expected", min(int(total), pages * page_size))
            for next_page in range(2, min(pages, 1 + PAGES_AHEAD) + 1):
                yield self.page_request({**params, "page": next_page}, opts, pages)
            # The listing's own number of pages, not max_pages': a read cut
            # short by max_pages is not complete.
            self.note_page(request, data["items"], listed_pages)
        else:
            self.note_page(request, data["items"])
            yield from self.page_ahead(request)
        for position, entry in enumerate(data["items"]):
            source = {"spider": "shop", "member_id": member_id, "page": page, "position": position}
            yield from self.follow_entry(entry, source, request, opts)
