"""The validation pipeline: every record is checked against its model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tmapi_crawler.config import describe_validation_error
from tmapi_crawler.records import FailureItem, ListingItem, ProductItem, failure_record, validate
from tmapi_crawler.untrusted import clean_record

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class ValidationPipeline:
    """A record that does not match its model becomes a failure record that
    names the field and the problem (``endpoint`` is ``"record"``), counted
    under ``tmapi/invalid/<field>``: nothing invalid reaches the feed, and
    nothing is dropped silently.  Before that, the seller's texts lose their
    control characters and bidi overrides (:func:`tmapi_crawler.untrusted.clean_record`,
    counted under ``tmapi/cleaned/control_chars``)."""

    def __init__(self, crawler: Crawler):
        self.stats = crawler.stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_item(self, item: Any) -> Any:
        if isinstance(item, (ProductItem, ListingItem)):
            removed = clean_record(item)
            if removed:
                self.stats.inc_value("tmapi/cleaned/control_chars", removed)
        error = validate(item)
        if error is None:
            return item
        if isinstance(item, FailureItem):
            # A failure record of ours that does not match its own model is a
            # bug: say so loudly, but keep the record.
            logger.error("A failure record does not match its model (%s): %r", error, item)
            return item
        for err in error.errors():
            field = str(err["loc"][0]) if err["loc"] else "record"
            self.stats.inc_value(f"tmapi/invalid/{field}")
        self.stats.inc_value("tmapi/invalid")
        item_id = item.get("item_id")
        record = failure_record(
            endpoint="record",
            params={},
            item_id=item_id if isinstance(item_id, int) and not isinstance(item_id, bool) else None,
            code=None,
            msg=f"invalid {'product' if isinstance(item, ProductItem) else 'listing'} record: "
            + describe_validation_error(error),
            attempts=0,
            source=item.get("source") if isinstance(item.get("source"), dict) else None,
            listing=item.get("listing") if isinstance(item, ProductItem) else dict(item),
        )
        logger.warning("Invalid record for item %s: %s", record["item_id"], record["msg"])
        return record
