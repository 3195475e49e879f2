"""JSON lines, the format of every feed of records: Scrapy's, written by
orjson (:class:`JsonLinesExporter`), and the compact lines of the failures
and changes files (:class:`CompactJsonLinesExporter`)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import orjson
from itemadapter import ItemAdapter
from scrapy.exporters import BaseItemExporter, JsonLinesItemExporter

if TYPE_CHECKING:
    from typing import IO


class JsonLinesExporter(JsonLinesItemExporter):
    """Scrapy's JSON lines, written with orjson: compact (no space after
    ``,`` and ``:``) and several times faster, which the feed of a re-crawl
    answered from the store notices.  With ``FEED_EXPORT_FIELDS``, field
    for an item that is not a dict (declared fields may have serializers),
    or an encoding other than UTF-8, Scrapy's own writes it."""

    def export_item(self, item: Any) -> None:
        if isinstance(item, dict) and self.fields_to_export is None and self._utf8:
            self.file.write(orjson.dumps(item, default=self.encoder.default) + b"\n")
        else:
            super().export_item(item)

    @functools.cached_property
    def _utf8(self) -> bool:
        return (self.encoding or "").lower().replace("-", "").replace("_", "") == "utf8"


class CompactJsonLinesExporter(BaseItemExporter):
    """JSON lines as ``scrapy catalog changes`` writes them (compact, keys
    in the record's order, Chinese as it is): the failures and changes
    files."""

    def __init__(self, file: IO[bytes], **kwargs: Any):
        super().__init__(dont_fail=True, **kwargs)
        self.file = file

    def export_item(self, item: Any) -> None:
        self.file.write(orjson.dumps(dict(ItemAdapter(item).items())) + b"\n")
