"""``scrapy crawl category -a cat_id=...``: every product of one or more categories."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmapi_crawler.api import Endpoint, envelope_of
from tmapi_crawler.arguments import CategoryArgs
from tmapi_crawler.records import BadAnswer
from tmapi_crawler.spiders.base import TmapiSpider, request_of, tracked
from tmapi_crawler.spiders.context import CategoryPage

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import Response

    from tmapi_crawler.spiders.context import Options


class CategorySpider(TmapiSpider):
    name = "category"
    args_model = CategoryArgs
    args: CategoryArgs

    def seed_requests(self, args: CategoryArgs) -> Iterator[Any]:
        for cat_id in args.cat_id:
            opts = self.options(args)
            params = {
                "cat_id": cat_id,
                "page": 1,
                "super_factory": args.super_factory,
                "support_dropshipping": args.support_dropshipping,
                "free_shipping": args.free_shipping,
            }
            yield self.page_request(params, opts)

    def page_request(self, params: dict[str, Any], opts: Options) -> Request:
        return self.api_request(
            Endpoint.CATEGORY_ITEMS,
            params,
            callback=self.parse_page,
            priority=self.page_priority(),
            cb_kwargs=dict(CategoryPage(opts=opts)),
        )

    @tracked
    def parse_page(self, response: Response, *, opts: Options) -> Iterator[Any]:
        request = request_of(response)
        params = response.meta["tmapi"]["params"]
        cat_id, page = params["cat_id"], params["page"]
        data = envelope_of(response).data
        try:
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise BadAnswer("category_items data has no list of items")
            if not isinstance(data.get("has_next_page"), bool):
                raise BadAnswer(f"category_items has_next_page is not a boolean: {data.get('has_next_page')!r}")
        except BadAnswer as exc:
            self.note_page(request, None)
            yield self.failure(request, None, f"malformed answer: {exc}")
            return
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("tmapi/pages")
        if page == 1:
            stats.inc_value("tmapi/pages_known")
            if not data["items"] and not data["has_next_page"]:
                self.logger.warning("Category %s lists no product: nothing to crawl there", cat_id)
        # The last page tells how many there are.
        self.note_page(request, data["items"], None if data["has_next_page"] else page)
        # A category says only whether there is a next page: one at a time.
        if data["has_next_page"] and (not opts["max_pages"] or page < opts["max_pages"]):
            stats.inc_value("tmapi/pages_known")
            yield self.page_request({**params, "page": page + 1}, opts)
        for position, entry in enumerate(data["items"]):
            source = {"spider": "category", "cat_id": cat_id, "page": page, "position": position}
            yield from self.follow_entry(entry, source, request, opts)
