"""What the spiders' requests carry: the options of the seed a request came
from (``opts``) and each callback's keyword arguments (``cb_kwargs``), as
TypedDicts.  All of it is plain JSON, as the codec that stores requests in
Redis and ``JOBDIR`` needs (:mod:`tmapi_crawler.durable.codec`)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Follow = Literal["listing", "detail", "detail+desc"]


class Options(TypedDict):
    """A seed's options, copied to every request of its crawl (seeds with
    options of their own share one crawl in distributed mode)."""

    #: This crawl's read of the listing (the catalog store's ``delisted``).
    read: str
    follow: Follow
    language: str
    scene: str | None
    optimize_title: bool | None
    #: Most listing pages (listing spiders; ``None`` for all, and for items).
    max_pages: int | None
    media: list[str]
    #: Entries a shop listing page holds (shops only).
    page_size: NotRequired[int]


class ShopPage(TypedDict):
    """A shop listing page's callback arguments."""

    opts: Options
    #: The shop's pages, once page 1 told.
    pages: int | None


class CategoryPage(TypedDict):
    opts: Options


class Detail(TypedDict):
    """An ``item_detail`` call's callback arguments."""

    source: dict[str, Any]
    #: The listing entry that named the product (``None`` for the item spider).
    listing: dict[str, Any] | None
    #: ``None`` for a product URL whose id the URL does not tell.
    item_id: int | None
    opts: Options


class Description(TypedDict):
    """An ``item_desc`` call's callback arguments: the product record it completes."""

    product: dict[str, Any]
    item_id: int
    source: dict[str, Any]
    media: NotRequired[list[str]]
