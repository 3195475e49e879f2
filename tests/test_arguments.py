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


BAD_SETTINGS = {
    "TMAPI_TOKEN": "has a space",
    "TMAPI_BASE_URL": "ftp://api.tmapi.io",
    "TMAPI_ALLOW_HTTP": "maybe",
    "TMAPI_REMEMBER_LIMIT": "perhaps",
    "TMAPI_LANGUAGE": "fr",
    "TMAPI_MAX_CALLS": "-1",
    "TMAPI_CONCURRENCY": "lots",
    "TMAPI_RETRY_TIMES": "-2",
    "TMAPI_RETRY_BACKOFF": "-1",
    "TMAPI_RETRY_BACKOFF_MAX": "soon",
    "TMAPI_QUOTA_WAIT": "-5",
    "TMAPI_QUOTA_PROBE": "0",
    "TMAPI_QUOTA_PROBE_MAX": "0",
    "TMAPI_FAILURES_FILE": "",
    "TMAPI_PROGRESS_INTERVAL": "-1",
    "TMAPI_IDLE_TIMEOUT": "-1",
    "TMAPI_LEASE_TIMEOUT": "0",
    "TMAPI_INNER_DOWNLOAD_HANDLER": "no.such.Handler",
    "TMAPI_GATE_CLASS": "tmapi_crawler.calls.gate.NoSuchGate",
    "TMAPI_MEDIA_CLAIMS_CLASS": "tmapi_crawler.cluster.claims.NoSuchClaims",
    "TMAPI_PRICE_RATE": "0",
    "TMAPI_PRICE_MARKUP": "cheap",
    "TMAPI_SHOPIFY_MAX_VARIANTS": "0",
    "TMAPI_ALERT_WEBHOOK": "hooks.example.com/tmapi",
    "TMAPI_ALERT_FAILURE_SHARE": "1.5",
    "TMAPI_STALL_TIMEOUT": "0",
    "TMAPI_STORE": "mysql://catalog.example/db",
    "TMAPI_DETAIL_MAX_AGE": "-1",
    "TMAPI_DESC_MAX_AGE": "a month",
    "TMAPI_CHANGES_FILE": "",
    "TMAPI_MEDIA_CONCURRENCY": "0",
    "TMAPI_MEDIA_CONCURRENCY_PER_HOST": "many",
    "TMAPI_MEDIA_RETRY_TIMES": "-1",
    "TMAPI_MEDIA_TIMEOUT": "0",
    "TMAPI_MEDIA_MAXSIZE": "0",
    "TMAPI_MEDIA_MAX_PENDING": "0",
    "TMAPI_REDIS_OUTAGE_TIMEOUT": "0",
    "TMAPI_STORE_OUTAGE_TIMEOUT": "a minute",
    "TMAPI_EXPORT_STATUS": "published",
    "TMAPI_EXPORT_BOM": "maybe",
    "TMAPI_MEDIA_URL_BASE": "cdn.example.com/media/",
    "TMAPI_MEDIA_HOSTS": "img.*.com",
    "TMAPI_REFRESH_BUDGET": "lots",
    "TMAPI_REFRESH_POLICY": "random",
    "TMAPI_WATCH": "/no/such/watch.txt",
    "TMAPI_NOTIFY": "bogus://not-a-service",
    "TMAPI_NOTIFY_REPORT": "maybe",
    "TMAPI_WATCH_MAX_AGE": "-1",
    "TMAPI_EXPORT_HTML": "unsafe",
    "TMAPI_CSV_FORMULAS": "maybe",
    "TMAPI_ALERT_CHANGES": "price_jump",
    "TMAPI_ALERT_MAX_CHANGES": "0",
    "TMAPI_ALERT_FORMAT": "teams",
    "TMAPI_CHANGES_RETENTION": "a year",
}


def test_every_setting_is_checked():
    from tmapi_crawler.config import DEFAULTS

    assert set(BAD_SETTINGS) == set(DEFAULTS)


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS.items())
def test_a_bad_setting_is_one_line_naming_it_and_the_value(name, value):
    from scrapy.settings import Settings

    from tmapi_crawler.config import SECRET_SETTINGS, ConfigError, config_from_settings

    with pytest.raises(ConfigError) as info:
        config_from_settings(Settings({name: value}))
    message = str(info.value)
    assert name in message
    if name in SECRET_SETTINGS:  # what is wrong, never the value: it holds a token
        assert value not in message
    else:
        assert repr(value) in message or value in message
    assert "\n" not in message


BAD_ARGUMENTS = [
    ("shop", {"member_id": "a b"}, "member_id"),
    ("shop", {"member_id": "m", "sort": "cheap"}, "sort"),
    ("shop", {"member_id": "m", "shop_cat_id": "x;y"}, "shop_cat_id"),
    ("shop", {"member_id": "m", "price_start": "cheap"}, "price_start"),
    ("shop", {"member_id": "m", "price_end": "-1"}, "price_end"),
    ("shop", {"member_id": "m", "price_start": "9", "price_end": "1"}, "price_start=9 is above price_end=1"),
    ("shop", {"member_id": "m", "page_size": "0"}, "page_size"),
    ("shop", {"member_id": "m", "page_size": "101"}, "page_size"),
    ("shop", {"member_id": "m", "max_pages": "-1"}, "max_pages"),
    ("shop", {}, "no seed"),
    ("category", {"cat_id": "shoes"}, "cat_id"),
    ("category", {"cat_id": "1", "free_shipping": "perhaps"}, "free_shipping"),
    ("category", {"cat_id": "1", "super_factory": "2"}, "super_factory"),
    ("category", {"cat_id": "1", "support_dropshipping": "x"}, "support_dropshipping"),
    ("category", {"cat_id": "1", "max_pages": "0"}, "max_pages"),
    ("item", {"item_ids": "12,abc"}, "item_ids"),
    ("item", {"urls": "https://example.com/x.html"}, "not a 1688 product URL"),
    ("item", {"file": "/nonexistent/ids.txt"}, "no such file"),
    ("item", {"item_ids": "1", "follow": "listing"}, "follow=listing needs a listing"),
    ("item", {"item_ids": "1", "language": "fr"}, "language"),
    ("item", {"item_ids": "1", "scene": "retail"}, "scene"),
    ("item", {"item_ids": "1", "optimize_title": "sometimes"}, "optimize_title"),
    ("shop", {"member_id": "m", "follow": "everything"}, "follow"),
    ("shop", {"member_id": "m", "colour": "red"}, "colour"),
    ("shop", {"member_id": "m", "media": "main,thumbnail"}, "media"),
    ("shop", {"member_id": "m", "media": "main"}, "media=main needs FILES_STORE"),
    ("shop", {"member_id": "m", "media": "main", "follow": "listing"}, "media needs product records"),
    ("item", {"item_ids": "1", "media": "desc", "follow": "detail"}, "media=desc needs the description"),
]


@pytest.mark.parametrize(("spider", "kwargs", "expected"), BAD_ARGUMENTS)
def test_every_bad_argument_is_one_line_naming_it(spider, kwargs, expected):
    from scrapy.settings import Settings

    from tmapi_crawler.config import ConfigError
    from tmapi_crawler.spiders.category import CategorySpider
    from tmapi_crawler.spiders.item import ItemSpider
    from tmapi_crawler.spiders.shop import ShopSpider

    spidercls = {"shop": ShopSpider, "category": CategorySpider, "item": ItemSpider}[spider]
    with pytest.raises(ConfigError) as info:
        spidercls.check_arguments(kwargs, Settings())
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_spider_built_without_the_command_still_needs_a_seed():
    from scrapy.utils.test import get_crawler

    from tmapi_crawler.config import ConfigError
    from tmapi_crawler.spiders.shop import ShopSpider

    settings = {"TMAPI_TOKEN": "a-token-for-tests", "ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0}}
    with pytest.raises(ConfigError, match="no seed: give -a member_id="):
        ShopSpider.from_crawler(get_crawler(ShopSpider, settings))
    # A worker of a distributed crawl takes its seeds from Redis.
    worker = ShopSpider.from_crawler(get_crawler(ShopSpider, {**settings, "REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert worker.args.seeds() == []


def test_an_ids_file_saved_with_a_bom_reads_its_first_line(tmp_path):
    """Windows Notepad and Excel save UTF-8 with a byte-order mark."""
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\ufeff652702302959\r\nhttps://detail.1688.com/offer/859086919394.html\r\n".encode())
    args = parse_arguments(ItemArgs, {"file": str(ids)})
    assert list(args.json_seeds({})) == [
        {"item_id": 652702302959},
        {"url": "https://detail.1688.com/offer/859086919394.html"},
    ]


@pytest.mark.parametrize(
    ("model", "given"),
    [
        (ItemArgs, {"item_ids": "99999999999999999999"}),
        (ItemArgs, {"item_ids": str(2**63)}),
        (ItemArgs, {"urls": "https://detail.1688.com/offer/99999999999999999999.html"}),
        (CategoryArgs, {"cat_id": "99999999999999999999"}),
    ],
)
def test_ids_past_64_bits_are_refused(model, given):
    with pytest.raises(ConfigError, match="1688"):
        parse_arguments(model, given)
    largest = parse_arguments(ItemArgs, {"item_ids": str(2**63 - 1)})
    assert isinstance(largest, ItemArgs) and largest.item_ids == [2**63 - 1]


def test_an_ids_file_with_an_id_past_64_bits_is_refused(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("652702302959\n99999999999999999999\n")
    with pytest.raises(ConfigError, match="line 2: '99999999999999999999' is out of the range of 1688's ids"):
        parse_arguments(ItemArgs, {"file": str(ids)})
