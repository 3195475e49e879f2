"""The store's item pipeline: each product record into the store before it
goes on to the feed, so that a record in the feed (and a request
acknowledged in ``JOBDIR`` or Redis) is a product in the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmapi_crawler.records import ProductItem
from tmapi_crawler.store.extension import required_store

if TYPE_CHECKING:
    from typing import Self, TypeVar

    from scrapy.crawler import Crawler

    T = TypeVar("T")


class StorePipeline:
    """Each product record into the store before it goes on to the feed."""

    def __init__(self, crawler: Crawler):
        self.store = required_store(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, ProductItem):
            return item
        if self.store.served.pop(item["item_id"], None) == (item["detail_fetched_at"], item["desc_fetched_at"]):
            return item  # answered from the store: nothing new to write
        return await self.store.save(item)

    async def close_spider(self) -> None:
        await self.store.drain()
