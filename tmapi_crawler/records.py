"""The records the crawler writes, and their models (docs/records.md).

Records travel through Scrapy as plain ``dict`` subclasses (so that feeds can
route them by class, and nothing is copied on the way); their pydantic models
check them in :class:`tmapi_crawler.pipelines.ValidationPipeline` and publish
their JSON Schema (``python -m tmapi_crawler.records`` writes ``schemas/``).

* :class:`ProductItem`: every field of ``item_detail``'s ``data`` as the API
  returned it (``item_id`` made an integer), ``detail_imgs`` and
  ``detail_html`` from ``item_desc``, ``listing``, ``source``, ``language``,
  ``crawled_at``.
* :class:`ListingItem` (``follow=listing``): the listing entry as returned
  (``item_id`` an integer), ``source``, ``crawled_at``.
  With ``-a media=...``, ``media``: the product's files, each
  ``{"url", "kind", "path", "checksum"}`` (:func:`add_media`; the media
  pipeline fills ``path`` and ``checksum``).
* :class:`FailureItem`: ``endpoint``, ``params`` (never the token),
  ``item_id``, ``code``, ``msg``, ``attempts``, ``source``, ``listing``,
  ``failed_at``.
* :class:`ChangeItem` (catalog store): what changed in a product between
  two crawls (:mod:`tmapi_crawler.store.changes`).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from tmapi_crawler.api import LANGUAGES, MAX_ID, Endpoint


class ProductItem(dict[str, Any]):
    """A product record."""


class ListingItem(dict[str, Any]):
    """A listing record (``follow=listing``)."""


class FailureItem(dict[str, Any]):
    """A failure record; it goes to ``TMAPI_FAILURES_FILE``, not the feed."""


class ChangeItem(dict[str, Any]):
    """A change record (catalog store); it goes to ``TMAPI_CHANGES_FILE``."""


RECORD_CLASSES = (ProductItem, ListingItem)


def now_iso() -> str:
    """Now in UTC, to the second (``2026-01-02T03:04:05Z``): written once a
    second, as a product asks for it twice (``crawled_at``)."""
    return _iso_second(int(time.time()))


@functools.lru_cache(maxsize=1)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z")


def now_precise() -> str:
    """Now to the microsecond: when an answer was fetched (``detail_fetched_at``,
    ``desc_fetched_at``), which the catalog store compares exactly."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sku_price(product: dict[str, Any], sku: dict[str, Any]) -> Any:
    """A SKU's price as the API wrote it (its ``sale_price``; the product's
    price when the SKU has none)."""
    price = sku.get("sale_price", sku.get("price"))
    if decimal_of(price) is None:
        price = (product.get("price_info") or {}).get("price")
    return price


def decimal_of(value: Any) -> Decimal | None:
    """*value* as a price or a quantity: a finite number, 0 or more, else
    ``None`` (an empty field, a word, a negative)."""
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


class BadAnswer(ValueError):
    """An answer of the right envelope whose ``data`` is not what the
    endpoint documents."""


def as_item_id(value: Any) -> int:
    """``item_id`` as an integer: shop listings send a string, the other
    endpoints an integer; anything else is a bad answer."""
    if isinstance(value, bool):
        raise BadAnswer(f"item_id is not a number: {value!r}")
    if isinstance(value, int):
        item_id = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        item_id = int(value)
    else:
        raise BadAnswer(f"item_id is not a number: {value!r}")
    if item_id <= 0:
        raise BadAnswer(f"item_id is not a positive number: {value!r}")
    if item_id > MAX_ID:
        raise BadAnswer(f"item_id is out of the range of 1688's ids (a signed 64-bit integer): {value!r}")
    return item_id


def product_record(
    detail: Any,
    *,
    listing: dict[str, Any] | None,
    source: dict[str, Any],
    language: str,
    fetched_at: str | None = None,
) -> ProductItem:
    """The product record from ``item_detail``'s data; the description fields
    stay ``None`` until :func:`add_description` fills them."""
    if not isinstance(detail, dict):
        raise BadAnswer(f"item_detail data is not an object but {type(detail).__name__}")
    return assemble_product(
        as_item_id(detail.get("item_id")),
        detail,
        listing=listing,
        source=source,
        language=language,
        detail_fetched_at=fetched_at or now_precise(),
        crawled_at=now_iso(),
    )


#: The product record's fields that are ours, not ``item_detail``'s
#: (``media`` is added by :func:`add_media`).
RECORD_FIELDS = frozenset(
    {
        "detail_imgs",
        "detail_html",
        "detail_fetched_at",
        "desc_fetched_at",
        "listing",
        "source",
        "language",
        "crawled_at",
        "media",
    }
)


def assemble_product(
    item_id: int,
    detail: dict[str, Any],
    *,
    listing: dict[str, Any] | None,
    source: dict[str, Any] | None,
    language: str,
    detail_fetched_at: str | None,
    crawled_at: str | None,
    desc_fetched_at: str | None = None,
    detail_imgs: Any = None,
    detail_html: Any = None,
) -> ProductItem:
    """A product record, its fields in the one order every record has them:
    ``item_detail``'s data, then ours (:data:`RECORD_FIELDS`).  Made from an
    answer (:func:`product_record`) and from the store
    (:func:`tmapi_crawler.store.catalog.products`)."""
    record = ProductItem(item_id=item_id)
    record.update(detail)  # item_id stays first, whatever its place in detail
    record["item_id"] = item_id
    record["detail_imgs"] = detail_imgs
    record["detail_html"] = detail_html
    record["detail_fetched_at"] = detail_fetched_at
    record["desc_fetched_at"] = desc_fetched_at
    record["listing"] = listing
    record["source"] = source
    record["language"] = language
    record["crawled_at"] = crawled_at
    return record


def add_description(record: ProductItem, desc: Any, fetched_at: str | None = None) -> ProductItem:
    if not isinstance(desc, dict):
        raise BadAnswer(f"item_desc data is not an object but {type(desc).__name__}")
    imgs, html = desc.get("detail_imgs"), desc.get("detail_html")
    if not isinstance(imgs, list) or not all(isinstance(i, str) for i in imgs):
        raise BadAnswer("item_desc detail_imgs is not a list of strings")
    if not isinstance(html, str):
        raise BadAnswer("item_desc detail_html is not a string")
    record["detail_imgs"] = imgs
    record["detail_html"] = html
    record["desc_fetched_at"] = fetched_at or now_precise()
    record["crawled_at"] = now_iso()
    return record


#: The kinds of media a product has, in the order its ``media`` lists them.
MEDIA_KINDS = ("main", "sku", "desc", "video")
MediaKind = Literal["main", "sku", "desc", "video"]


def media_url(value: Any) -> str | None:
    """A media URL as 1688 gives it (``//host/path`` happens), or ``None``
    for an empty value."""
    if not isinstance(value, str) or not value.strip():
        return None
    url = value.strip()
    return "https:" + url if url.startswith("//") else url


def media_urls(record: dict[str, Any], kind: str) -> list[str]:
    """The URLs of *kind* in a product record: ``main_imgs``, the SKU
    images (``sku_props[].values[].imageUrl``), ``detail_imgs``, ``video_url``."""
    if kind == "main":
        values: list[Any] = list(record.get("main_imgs") or ())
    elif kind == "sku":
        values = [
            value.get("imageUrl")
            for prop in record.get("sku_props") or ()
            if isinstance(prop, dict)
            for value in prop.get("values") or ()
            if isinstance(value, dict)
        ]
    elif kind == "desc":
        values = list(record.get("detail_imgs") or ())
    else:
        values = [record.get("video_url")]
    return [url for url in map(media_url, values) if url is not None]


def add_media(record: ProductItem, kinds: list[str] | tuple[str, ...]) -> ProductItem:
    """Give *record* its ``media`` entries for *kinds* (``path`` and
    ``checksum`` ``None`` until the media pipeline has the files); a URL is
    listed once per kind."""
    entries: list[dict[str, Any]] = []
    for kind in MEDIA_KINDS:
        if kind in kinds:
            for url in dict.fromkeys(media_urls(record, kind)):
                entries.append({"url": url, "kind": kind, "path": None, "checksum": None})
    record["media"] = entries
    return record


def listing_record(entry: dict[str, Any], *, source: dict[str, Any]) -> ListingItem:
    record = ListingItem(entry)
    record["item_id"] = as_item_id(entry.get("item_id"))
    record["source"] = source
    record["crawled_at"] = now_iso()
    return record


def failure_record(
    *,
    endpoint: str,
    params: dict[str, Any],
    item_id: int | None,
    code: int | None,
    msg: str,
    attempts: int,
    source: dict[str, Any] | None,
    listing: dict[str, Any] | None,
) -> FailureItem:
    return FailureItem(
        endpoint=endpoint,
        params=params,
        item_id=item_id,
        code=code,
        msg=msg,
        attempts=attempts,
        source=source,
        listing=listing,
        failed_at=now_iso(),
    )


# -- models ---------------------------------------------------------------------

SpiderName = Literal["shop", "category", "item"]


class Source(BaseModel):
    """Where a record came from: the seed, the page and the position on it."""

    model_config = ConfigDict(extra="allow")

    spider: SpiderName
    member_id: StrictStr | None = None
    cat_id: StrictInt | None = None
    page: StrictInt | None = Field(default=None, ge=1)
    position: StrictInt | None = Field(default=None, ge=0)
    input: StrictStr | None = None


class MediaEntry(BaseModel):
    """A file of the product's (``-a media=...``): ``path`` is relative to
    ``FILES_STORE``, ``null`` when the download failed (a failure record
    with ``endpoint`` ``media`` says why); ``checksum`` is the file's MD5."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(min_length=1)
    kind: MediaKind
    path: StrictStr | None
    checksum: StrictStr | None


class ProductRecord(BaseModel):
    """A product: every ``item_detail`` field as returned, plus ours."""

    model_config = ConfigDict(extra="allow", title="tmapi_crawler product record")

    item_id: StrictInt = Field(gt=0)
    title: StrictStr = Field(min_length=1)
    product_url: StrictStr | None = None
    main_imgs: list[StrictStr] | None = None
    price_info: dict[str, Any] | None = None
    sku_props: list[dict[str, Any]] | None = None
    skus: list[dict[str, Any]] | None = None
    shop_info: dict[str, Any] | None = None
    detail_imgs: list[StrictStr] | None
    detail_html: StrictStr | None
    #: When the detail and the description were fetched: this crawl, or an
    #: earlier one whose answer the catalog store kept.
    detail_fetched_at: datetime | None = None
    desc_fetched_at: datetime | None = None
    #: With ``-a media=...``: the product's files (docs/media.md).
    media: list[MediaEntry] | None = None
    listing: dict[str, Any] | None
    source: Source
    language: Literal[LANGUAGES]  # type: ignore[valid-type]
    crawled_at: datetime


class ListingRecord(BaseModel):
    """A listing entry as returned, ``item_id`` made an integer."""

    model_config = ConfigDict(extra="allow", title="tmapi_crawler listing record")

    item_id: StrictInt = Field(gt=0)
    title: StrictStr | None = None
    source: Source
    crawled_at: datetime


class FailureRecord(BaseModel):
    """A call that failed for good, or a record that failed validation."""

    model_config = ConfigDict(extra="forbid", title="tmapi_crawler failure record")

    endpoint: Literal[(*(e.value for e in Endpoint), "record", "seed", "media")]  # type: ignore[valid-type]
    params: dict[str, Any]
    item_id: StrictInt | None
    code: StrictInt | None
    msg: StrictStr
    attempts: StrictInt = Field(ge=0)
    source: Source | None
    listing: dict[str, Any] | None
    failed_at: datetime


ChangeKind = Literal[
    "new", "price", "stock", "sold_out", "back_in_stock", "sku_added", "sku_removed", "title", "delisted"
]


class ChangeRecord(BaseModel):
    """What changed in the catalog store since a product was last fetched
    (docs/catalog.md): per SKU for ``price``, ``stock``, ``sku_added`` and
    ``sku_removed`` (``skuid`` set), per product for the others."""

    model_config = ConfigDict(extra="forbid", title="tmapi_crawler change record")

    change: ChangeKind
    item_id: StrictInt = Field(gt=0)
    skuid: StrictStr | None
    field: StrictStr | None
    old: StrictStr | StrictInt | None
    new: StrictStr | StrictInt | None
    detected_at: datetime
    source: Source | None


class _ProductCheck(ProductRecord):
    """:class:`ProductRecord` as :func:`validate` checks a record: the same
    fields and rules, its other fields accepted as the model accepts them
    (``extra="allow"`` validates no extra field either) but not copied into
    a model that is thrown away: a third of the check's cost."""

    model_config = ConfigDict(extra="ignore")


class _ListingCheck(ListingRecord):
    """:class:`ListingRecord` as :func:`validate` checks a record (:class:`_ProductCheck`)."""

    model_config = ConfigDict(extra="ignore")


#: The model that checks each record class (:func:`validate`).
MODELS: dict[type[dict[str, Any]], type[BaseModel]] = {
    ProductItem: _ProductCheck,
    ListingItem: _ListingCheck,
    FailureItem: FailureRecord,
    ChangeItem: ChangeRecord,
}


def validate(item: dict[str, Any]) -> ValidationError | None:
    """``None`` when *item* matches its model, else the error."""
    model = MODELS.get(type(item))
    if model is None:
        return None
    try:
        model.model_validate(item)
    except ValidationError as exc:
        return exc
    return None


SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def schemas() -> dict[str, str]:
    """File name -> JSON Schema text, for every record."""
    out = {}
    for name, model in (
        ("product", ProductRecord),
        ("listing", ListingRecord),
        ("failure", FailureRecord),
        ("change", ChangeRecord),
    ):
        schema = model.model_json_schema()
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m tmapi_crawler.records [DIR]``: write the JSON Schemas."""
    target = Path((argv or sys.argv[1:] or [str(SCHEMA_DIR)])[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (target / name).write_text(text, encoding="utf-8")
        print(target / name)


if __name__ == "__main__":
    main()
