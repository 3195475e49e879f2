"""Records, their models and the published JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmapi_crawler.records import (
    SCHEMA_DIR,
    BadAnswer,
    FailureItem,
    ListingItem,
    ProductItem,
    add_description,
    as_item_id,
    listing_record,
    product_record,
    schemas,
    validate,
)

DETAIL = json.loads(
    (Path(__file__).resolve().parent.parent / "tmapi_crawler/sandbox/data/item_detail.json").read_text("utf-8")
)["data"]
SOURCE = {"spider": "item", "input": "859086919394"}


def test_published_schemas_are_up_to_date():
    for name, text in schemas().items():
        path = SCHEMA_DIR / name
        assert path.read_text("utf-8") == text, f"{path} is stale: run python -m tmapi_crawler.records"


def test_product_record_keeps_every_detail_field_as_returned():
    record = product_record(DETAIL, listing=None, source=SOURCE, language="zh")
    assert isinstance(record, ProductItem)
    assert {k: record[k] for k in DETAIL} == DETAIL
    assert validate(record) is None
    add_description(record, {"item_id": 1, "detail_imgs": ["a"], "detail_html": "<img/>"})
    assert (record["detail_imgs"], record["detail_html"]) == (["a"], "<img/>")
    assert validate(record) is None


@pytest.mark.parametrize(
    ("value", "expected"), [(5, 5), ("693334796781", 693334796781), ("x", None), (True, None), (0, None), (None, None)]
)
def test_item_id_is_an_integer(value, expected):
    if expected is None:
        with pytest.raises(BadAnswer):
            as_item_id(value)
    else:
        assert as_item_id(value) == expected


def test_bad_detail_and_description_shapes():
    with pytest.raises(BadAnswer, match="not an object"):
        product_record(["x"], listing=None, source=SOURCE, language="zh")
    record = product_record(DETAIL, listing=None, source=SOURCE, language="zh")
    with pytest.raises(BadAnswer, match="detail_imgs"):
        add_description(record, {"detail_imgs": "one", "detail_html": ""})
    with pytest.raises(BadAnswer, match="detail_html"):
        add_description(record, {"detail_imgs": [], "detail_html": None})


def test_validation_names_the_field():
    record = product_record({**DETAIL, "title": 12}, listing=None, source=SOURCE, language="zh")
    error = validate(record)
    assert error is not None
    assert error.errors()[0]["loc"] == ("title",)
    listing = listing_record({"item_id": "7", "title": "t"}, source={"spider": "shop", "member_id": "m", "page": 0})
    assert isinstance(listing, ListingItem)
    error = validate(listing)
    assert error is not None
    assert error.errors()[0]["loc"][:2] == ("source", "page")


@pytest.mark.parametrize(
    "change",
    [
        {},  # valid, with every detail field the model does not declare
        {"seller_note": {"anything": [1, None]}},  # one more field of the seller's
        {"title": ""},
        {"item_id": "7"},
        {"crawled_at": "yesterday"},
        {"media": [{"url": "u", "kind": "main", "path": None, "checksum": None, "extra": 1}]},
        {"source": {"spider": "shop", "page": 0, "extra": "kept"}},
    ],
)
def test_a_record_is_checked_as_its_published_model_checks_it(change):
    """validate() checks with a model that does not copy extra fields
    (records._ProductCheck): the same verdict and errors as ProductRecord,
    and the record is left as it was."""
    from pydantic import ValidationError

    from tmapi_crawler.records import ProductRecord

    record = product_record(DETAIL, listing=None, source=SOURCE, language="zh")
    record.update(change)
    before = json.dumps(record, sort_keys=True, default=str)
    try:
        ProductRecord.model_validate(record)
        expected = None
    except ValidationError as exc:
        expected = exc.errors()
    error = validate(record)
    assert (error.errors() if error is not None else None) == expected
    assert json.dumps(record, sort_keys=True, default=str) == before


def test_crawled_at_is_now_to_the_second_in_utc(monkeypatch):
    from tmapi_crawler import records

    monkeypatch.setattr(records.time, "time", lambda: 1_767_225_599.9)
    assert records.now_iso() == "2025-12-31T23:59:59Z"
    monkeypatch.setattr(records.time, "time", lambda: 1_767_225_600.0)
    assert records.now_iso() == "2026-01-01T00:00:00Z"


def test_failure_records_validate():
    from tmapi_crawler.records import failure_record

    record = failure_record(
        endpoint="item_detail",
        params={"item_id": 1},
        item_id=1,
        code=417,
        msg="m",
        attempts=4,
        source=SOURCE,
        listing=None,
    )
    assert isinstance(record, FailureItem)
    assert validate(record) is None
