"""Feed formats (docs/exports.md): JSON lines written by orjson
(:mod:`.jsonlines`), the spreadsheet and store formats (:mod:`.exporters`),
whose rows are made by pure functions (:mod:`.rows`).

The exporters' class paths are this package's (``FEED_EXPORTERS``:
``tmapi_crawler.exports.ShopifyExporter``...), as users' settings name them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tmapi_crawler.exports.exporters import (
    EXPORTERS,
    CsvExporter,
    RowsExporter,
    ShopifyExporter,
    ShopifyUpdateExporter,
    SkusExporter,
    WooCommerceExporter,
    WooCommerceUpdateExporter,
    options_of,
)
from tmapi_crawler.exports.jsonlines import CompactJsonLinesExporter, JsonLinesExporter
from tmapi_crawler.exports.rows import Pricing

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

__all__ = [
    "EXPORTERS",
    "FEED_FORMATS",
    "CompactJsonLinesExporter",
    "CsvExporter",
    "JsonLinesExporter",
    "Pricing",
    "RowsExporter",
    "ShopifyExporter",
    "ShopifyUpdateExporter",
    "SkusExporter",
    "WooCommerceExporter",
    "WooCommerceUpdateExporter",
    "options_of",
    "register_feed_formats",
]

#: project's settings use them, and the add-on registers each one a user's
#: ``FEED_EXPORTERS`` does not name (a project of the user's, ``-s
#: FEED_EXPORTERS=...``), so that the failures file always has its format.
FEED_FORMATS: dict[str, str] = {
    # Scrapy's JSON lines, compact and written by orjson (several times faster)
    "jsonlines": f"{__name__}.JsonLinesExporter",
    "jsonl": f"{__name__}.JsonLinesExporter",
    "jl": f"{__name__}.JsonLinesExporter",
    "csv": f"{__name__}.CsvExporter",  # nested fields as JSON, not Python reprs
    **{name: f"{__name__}.{cls.__name__}" for name, cls in EXPORTERS.items()},
    # The failures and changes files: compact, as `scrapy catalog changes` writes
    "jsonlines-compact": f"{__name__}.CompactJsonLinesExporter",
}


def register_feed_formats(settings: BaseSettings) -> None:
    """Each of :data:`FEED_FORMATS` the settings' ``FEED_EXPORTERS`` does not
    name, added (the add-on, for the crawl; the crawl command, before Scrapy
    reads ``-o file:shopify``)."""
    exporters = settings.getdict("FEED_EXPORTERS")
    if any(name not in exporters for name in FEED_FORMATS):
        priority = settings.getpriority("FEED_EXPORTERS") or 0
        settings.set("FEED_EXPORTERS", {**FEED_FORMATS, **exporters}, priority)
