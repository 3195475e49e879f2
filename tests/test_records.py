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
