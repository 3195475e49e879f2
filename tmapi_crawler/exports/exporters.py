"""The feed formats for spreadsheets and stores: ``skus``, ``shopify``,
``woocommerce``, and the daily update files ``shopify-update`` and
``woocommerce-update``; and Scrapy's plain ``csv`` with JSON cells
(docs/exports.md).

Each is a Scrapy item exporter, registered in ``FEED_EXPORTERS`` so that it
works like ``csv`` (``-O shop.csv:shopify``, several feeds in one crawl, any
feed storage), and ``scrapy export`` runs the same exporter over a saved
JSON-lines feed.  A product record becomes several CSV rows, made by
:mod:`.rows`; the exporter reports what a row had to adjust, per product.
"""

from __future__ import annotations

import csv
import io
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from scrapy.exporters import BaseItemExporter, CsvItemExporter

from tmapi_crawler.config import config_from_settings
from tmapi_crawler.exports.rows import (
    SHOPIFY_COLUMNS,
    SHOPIFY_UPDATE_COLUMNS,
    SKU_COLUMNS,
    WOOCOMMERCE_COLUMNS,
    WOOCOMMERCE_UPDATE_COLUMNS,
    Pricing,
    Rows,
    shopify_rows,
    shopify_update_rows,
    sku_rows,
    text_of,
    woocommerce_rows,
    woocommerce_update_rows,
)
from tmapi_crawler.untrusted import cell

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Self

    from scrapy.crawler import Crawler

    from tmapi_crawler.config import TmapiConfig

logger = logging.getLogger(__name__)


def _as_it_is(value: Any) -> Any:
    """A cell written as it is (``TMAPI_CSV_FORMULAS=keep``)."""
    return value


class RowsExporter(BaseItemExporter):
    """A CSV whose rows a product makes several of; its header is fixed."""

    format: ClassVar[str]
    columns: ClassVar[list[str]]

    def __init__(
        self,
        file: IO[bytes],
        *,
        pricing: Pricing | None = None,
        shopify_max_variants: int = 2048,
        status: str = "draft",
        media_base: str | None = None,
        bom: bool = False,
        html: str = "sanitized",
        formulas: str = "escape",
        report: Callable[[Any, str], None] | None = None,
        **kwargs: Any,
    ):
        super().__init__(dont_fail=True, **kwargs)
        self.pricing = pricing or Pricing()
        self.shopify_max_variants = shopify_max_variants
        self.status = status
        self.media_base = media_base
        self.html = html
        self.cell: Callable[[Any], Any] = cell if formulas == "escape" else _as_it_is
        self.bom = bom
        self.report = report or self._log
        self.stream = io.TextIOWrapper(
            file, line_buffering=False, write_through=True, encoding=self.encoding or "utf-8", newline=""
        )
        self.writer = csv.writer(self.stream)
        self.rows_written = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler, file: IO[bytes], **kwargs: Any) -> Self:
        return cls(file, **options_of(config_from_settings(crawler.settings)), **kwargs)

    def _log(self, item_id: Any, problem: str) -> None:
        logger.warning("%s export, product %s: %s", self.format, item_id, problem)

    def start_exporting(self) -> None:
        if self.bom:
            self.stream.write("\ufeff")  # Excel then reads the file as UTF-8
        self.writer.writerow(self.columns)

    def finish_exporting(self) -> None:
        self.stream.detach()  # the feed storage closes the file

    def rows(self, product: dict[str, Any]) -> Rows:  # pragma: no cover - each format's own
        raise NotImplementedError

    def export_item(self, item: Any) -> None:
        product = dict(item)
        made = self.rows(product)
        for problem in made.problems:
            self.report(product.get("item_id"), problem)
        columns = self.columns
        # A product's rows in one write: a file that fails keeps none of them.
        text = io.StringIO(newline="")
        csv.writer(text).writerows([[self.cell(text_of(row.get(c))) for c in columns] for row in made.rows])
        self.stream.write(text.getvalue())
        self.rows_written += len(made.rows)


class SkusExporter(RowsExporter):
    format = "skus"
    columns = SKU_COLUMNS

    def rows(self, product: dict[str, Any]) -> Rows:
        return sku_rows(product)


class ShopifyExporter(RowsExporter):
    format = "shopify"
    columns = SHOPIFY_COLUMNS

    def rows(self, product: dict[str, Any]) -> Rows:
        return shopify_rows(
            product,
            self.pricing,
            self.shopify_max_variants,
            status=self.status,
            media_base=self.media_base,
            html=self.html,
        )


class WooCommerceExporter(RowsExporter):
    format = "woocommerce"
    columns = WOOCOMMERCE_COLUMNS

    def rows(self, product: dict[str, Any]) -> Rows:
        return woocommerce_rows(product, self.pricing, status=self.status, media_base=self.media_base, html=self.html)


class ShopifyUpdateExporter(RowsExporter):
    format = "shopify-update"
    columns = SHOPIFY_UPDATE_COLUMNS

    def rows(self, product: dict[str, Any]) -> Rows:
        return shopify_update_rows(product, self.pricing, self.shopify_max_variants)


class WooCommerceUpdateExporter(RowsExporter):
    format = "woocommerce-update"
    columns = WOOCOMMERCE_UPDATE_COLUMNS

    def rows(self, product: dict[str, Any]) -> Rows:
        return woocommerce_update_rows(product, self.pricing)


class CsvExporter(CsvItemExporter):
    """Scrapy's ``csv`` format, with list and dict fields (SKUs, images,
    the listing entry) as JSON text, Chinese as it is, where Scrapy would
    write a Python repr or a comma-joined list; and the byte-order mark of
    ``TMAPI_EXPORT_BOM``."""

    def __init__(self, file: IO[bytes], *, bom: bool = False, formulas: str = "escape", **kwargs: Any):
        kwargs.setdefault("encoding", "utf-8")
        super().__init__(file, **kwargs)  # type: ignore[arg-type] # any binary file, as the feeds give it
        self.cell: Callable[[Any], Any] = cell if formulas == "escape" else _as_it_is
        if bom:
            self.stream.write("\ufeff")

    @classmethod
    def from_crawler(cls, crawler: Crawler, file: IO[bytes], **kwargs: Any) -> Self:
        config = config_from_settings(crawler.settings)
        return cls(file, bom=config.export_bom, formulas=config.csv_formulas, **kwargs)

    def serialize_field(self, field: Any, name: str, value: Any) -> Any:
        if "serializer" not in field and isinstance(value, (list, tuple, dict)):
            return self.cell(orjson.dumps(value).decode())
        return self.cell(super().serialize_field(field, name, value))


def options_of(config: TmapiConfig) -> dict[str, Any]:
    """The exporters' options from the ``TMAPI_*`` settings (a crawl's feeds
    and ``scrapy export`` alike)."""
    return {
        "pricing": Pricing(Decimal(str(config.price_rate)), Decimal(str(config.price_markup))),
        "shopify_max_variants": config.shopify_max_variants,
        "status": config.export_status,
        "media_base": config.media_url_base,
        "bom": config.export_bom,
        "html": config.export_html,
        "formulas": config.csv_formulas,
    }


#: Format name -> exporter (``FEED_EXPORTERS`` in the project's settings).
EXPORTERS: dict[str, type[RowsExporter]] = {
    cls.format: cls
    for cls in (SkusExporter, ShopifyExporter, WooCommerceExporter, ShopifyUpdateExporter, WooCommerceUpdateExporter)
}
