"""Spider arguments: strings from the command line into checked values."""

from __future__ import annotations

import pytest

from tmapi_crawler.arguments import CategoryArgs, ItemArgs, ShopArgs, parse_arguments
from tmapi_crawler.config import ConfigError


def test_shop_arguments_from_strings():
    args = parse_arguments(
        ShopArgs,
        {
            "member_id": "a, b ,c",
            "sort": "sales",
            "page_size": "50",
            "max_pages": "3",
            "price_start": "1.5",
            "optimize_title": "yes",
            "language": "en",
        },
    )
    assert isinstance(args, ShopArgs)
    assert args.member_id == ["a", "b", "c"]
    assert (args.page_size, args.max_pages, args.optimize_title) == (50, 3, True)
    assert args.follow == "detail+desc"


def test_category_arguments():
    args = parse_arguments(CategoryArgs, {"cat_id": "1031910,1032001", "free_shipping": "false"})
    assert isinstance(args, CategoryArgs)
    assert args.cat_id == [1031910, 1032001]
    assert args.free_shipping is False


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (ShopArgs, {"member_id": "x", "sort": "cheap"}, "sort='cheap'"),
        (ShopArgs, {"member_id": "x", "price_start": "9", "price_end": "2"}, "price_start=9 is above price_end=2"),
        (ShopArgs, {"member_id": "x", "price_start": "-1"}, "price_start='-1'"),
        (ShopArgs, {"member_id": "x", "page_size": "101"}, "page_size='101'"),
        (ShopArgs, {"member_id": "x y"}, "member_id"),
        (ShopArgs, {}, "no seed: give -a member_id="),
        (CategoryArgs, {"cat_id": "12,abc"}, "cat_id"),
        (CategoryArgs, {"cat_id": "1", "free_shipping": "perhaps"}, "free_shipping='perhaps'"),
        (CategoryArgs, {"cat_id": "1", "follow": "everything"}, "follow='everything'"),
        (ItemArgs, {}, "no seed: give -a item_ids="),
        (ItemArgs, {"item_ids": "-4"}, "item_ids"),
    ],
)
def test_bad_arguments_are_one_clear_line(model, kwargs, message):
    with pytest.raises(ConfigError, match=r"^invalid argument: ") as info:
        parse_arguments(model, kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_no_seed_is_fine_when_seeds_come_from_elsewhere():
    args = parse_arguments(ShopArgs, {}, require_seed=False)
    assert args.seeds() == []


def test_ids_file_lines(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("1\n#c\n\nhttps://detail.1688.com/offer/2.html\nzzz\n")
    with pytest.raises(ConfigError, match="line 5: 'zzz' is neither a product id"):
        parse_arguments(ItemArgs, {"file": str(path)})
    path.write_text("1\n#c\n\nhttps://detail.1688.com/offer/2.html\n")
    assert parse_arguments(ItemArgs, {"file": str(path)}).seeds() == [{"file": str(path)}]
