"""End-to-end crawls in process against the sandbox over real HTTP.

Each checks the records written by Scrapy's feed exports and the sandbox's
own counters: billed calls equal the minimum (one call per page, one detail
and one description per distinct product), nothing billed twice.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import SandboxProcess, base_settings, crawl, minimum_calls

EXAMPLES = Path(__file__).resolve().parent.parent / "tmapi_crawler" / "sandbox" / "data"
DOC_SELLER = "b2b-22146365959302bc20"


def assert_bill(sandbox: SandboxProcess, expected: int) -> dict:
    stats = sandbox.stats()
    assert stats["billed"] == expected, stats
    assert stats["billed_twice"] == 0, stats["billed_twice_keys"]
    return stats


@deferred_f_from_coro_f
async def test_shop_crawl_writes_one_record_per_product(sandbox, tmp_path):
    result = await crawl("shop", sandbox, tmp_path, member_id=DOC_SELLER)
    assert result.reason == "finished"
    ids = result.ids()
    assert len(ids) == 60
    assert len(set(ids)) == 60
    assert all(isinstance(i, int) for i in ids)
    stats = assert_bill(sandbox, minimum_calls(pages=3, products=60))
    assert stats["calls"] == stats["billed"] == result.stats["tmapi/calls"]
    assert result.stats["tmapi/products"] == 60
    assert not result.failures_path.exists()  # created only when there is one

    documented = json.loads((EXAMPLES / "item_detail.json").read_text("utf-8"))["data"]
    record = next(r for r in result.records if r["item_id"] == 859086919394)
    for key, value in documented.items():
        assert record[key] == value, key
    assert record["source"] == {"spider": "shop", "member_id": DOC_SELLER, "page": 1, "position": 0}
    assert record["listing"]["item_id"] == "859086919394"  # the listing as returned
    assert record["language"] == "zh"
    assert isinstance(record["detail_imgs"], list)
    assert record["detail_html"].startswith("<img")
    datetime.fromisoformat(record["crawled_at"])
    # Stable key order: the API's fields first, then ours.
    assert list(record)[:2] == ["item_id", "product_url"]
    ours = ["detail_imgs", "detail_html", "detail_fetched_at", "desc_fetched_at", "listing", "source", "language"]
    assert list(record)[-8:] == [*ours, "crawled_at"]
    assert record["detail_fetched_at"] <= record["desc_fetched_at"]


@deferred_f_from_coro_f
async def test_feed_keeps_non_ascii_text_readable(sandbox, tmp_path):
    result = await crawl("item", sandbox, tmp_path, item_ids="859086919394", follow="detail")
    text = result.output.read_text("utf-8")
    assert "睡衣" in text
    assert "\\u" not in text


@deferred_f_from_coro_f
async def test_shop_max_pages_page_size_and_several_shops(sandbox, tmp_path):
    result = await crawl(
        "shop", sandbox, tmp_path, member_id="b2b-sandbox0000,b2b-sandbox0001", page_size="10", max_pages="2"
    )
    assert len(result.records) == 40
    assert {r["source"]["member_id"] for r in result.records} == {"b2b-sandbox0000", "b2b-sandbox0001"}
    assert {r["source"]["page"] for r in result.records} == {1, 2}
    assert_bill(sandbox, minimum_calls(pages=4, products=40))


@deferred_f_from_coro_f
async def test_shop_sort_and_filters_are_sent(sandbox, tmp_path):
    result = await crawl(
        "shop",
        sandbox,
        tmp_path,
        member_id="b2b-sandbox0002",
        sort="price_up",
        price_start="10",
        price_end="100",
        follow="listing",
    )
    in_listing_order = sorted(result.records, key=lambda r: (r["source"]["page"], r["source"]["position"]))
    prices = [float(r["price"]) for r in in_listing_order]
    assert prices
    assert prices == sorted(prices)
    assert all(10 <= p <= 100 for p in prices)


@deferred_f_from_coro_f
async def test_documented_shop_total_count_drives_paging(sandbox, tmp_path):
    result = await crawl("shop", sandbox, tmp_path, member_id="jane727", follow="listing", page_size="100")
    assert len(result.records) == 2465
    assert result.stats["tmapi/pages"] == result.stats["tmapi/pages_known"] == 25
    assert_bill(sandbox, minimum_calls(pages=25, products=2465, follow="listing"))


@deferred_f_from_coro_f
async def test_category_pages_until_has_next_page_is_false(sandbox, tmp_path):
    result = await crawl("category", sandbox, tmp_path, cat_id="1032001")
    assert len(result.records) == 60
    assert_bill(sandbox, minimum_calls(pages=3, products=60))
    record = result.records[0]
    assert record["source"]["spider"] == "category"
    assert record["source"]["cat_id"] == 1032001
    assert isinstance(record["listing"]["item_id"], int)


@deferred_f_from_coro_f
async def test_products_listed_twice_are_fetched_once(sandbox, tmp_path):
    # Categories 1032001 and 1032002 share 30 of their 60 products.
    result = await crawl("category", sandbox, tmp_path, cat_id="1032001,1032002")
    ids = result.ids()
    assert len(ids) == len(set(ids)) == 90
    assert result.stats["tmapi/duplicates"] == 30
    assert_bill(sandbox, minimum_calls(pages=6, products=90))


@deferred_f_from_coro_f
async def test_products_listed_twice_in_one_listing(make_sandbox, tmp_path):
    sb = make_sandbox("--repeat-every", "5")
    result = await crawl("category", sb, tmp_path, cat_id="1032001", follow="detail")
    assert len(result.ids()) == len(set(result.ids())) == 60
    assert result.stats["tmapi/duplicates"] == 12
    assert_bill(sb, minimum_calls(pages=4, products=60, follow="detail"))


@deferred_f_from_coro_f
async def test_category_filters_and_max_pages(sandbox, tmp_path):
    result = await crawl("category", sandbox, tmp_path, cat_id="1032001", free_shipping="true", max_pages="1")
    assert result.records
    assert all(r["delivery_info"]["delivery_fee"] == 0 for r in result.records)
    assert result.stats["tmapi/pages"] == 1


@deferred_f_from_coro_f
async def test_follow_listing_makes_one_call_per_page(sandbox, tmp_path):
    result = await crawl("category", sandbox, tmp_path, cat_id="1031910", max_pages="3", follow="listing")
    assert len(result.records) == 6  # the documented category has 2 a page
    assert all(isinstance(r["item_id"], int) for r in result.records)
    assert set(result.records[0]) >= {"item_id", "title", "source", "crawled_at"}
    assert "detail_imgs" not in result.records[0]
    assert_bill(sandbox, 3)


@deferred_f_from_coro_f
async def test_follow_detail_skips_descriptions(sandbox, tmp_path):
    result = await crawl("shop", sandbox, tmp_path, member_id="b2b-sandbox0000", follow="detail", max_pages="1")
    assert len(result.records) == 20
    assert all(r["detail_imgs"] is None and r["detail_html"] is None for r in result.records)
    stats = assert_bill(sandbox, minimum_calls(pages=1, products=20, follow="detail"))
    assert "item_desc" not in stats["calls_per_endpoint"]


@deferred_f_from_coro_f
async def test_item_spider_ids_urls_and_file(sandbox, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(
        "# products to watch\n700000000001\n\n  https://detail.1688.com/offer/700000000002.html  \n700000000003\n"
    )
    result = await crawl(
        "item",
        sandbox,
        tmp_path,
        item_ids="700000000004,700000000005,700000000004",
        urls="https://detail.1688.com/offer/700000000006.html",
        file=str(ids_file),
    )
    assert sorted(result.ids()) == [700000000000 + i for i in range(1, 7)]
    by_input = {r["source"]["input"]: r for r in result.records}
    assert by_input["https://detail.1688.com/offer/700000000002.html"]["item_id"] == 700000000002
    assert by_input["700000000004"]["listing"] is None
    stats = assert_bill(sandbox, minimum_calls(pages=0, products=6))
    assert stats["calls_per_endpoint"]["item_detail_by_url"] == 2


@deferred_f_from_coro_f
async def test_language_scene_and_optimize_title_reach_the_detail_calls(sandbox, tmp_path):
    result = await crawl(
        "item", sandbox, tmp_path, item_ids="700000000011", language="en", scene="drop_shipping", optimize_title="true"
    )
    (record,) = result.records
    assert record["language"] == "en"
    assert record["title"].isascii()
    zh = await crawl("item", sandbox, tmp_path / "zh", item_ids="700000000011", settings={"TMAPI_LANGUAGE": "zh"})
    assert zh.records[0]["language"] == "zh"
    assert zh.records[0]["title"] != record["title"]


@deferred_f_from_coro_f
async def test_default_language_comes_from_the_setting(sandbox, tmp_path):
    result = await crawl("item", sandbox, tmp_path, item_ids="700000000012", settings={"TMAPI_LANGUAGE": "ja"})
    assert result.records[0]["language"] == "ja"
    assert result.records[0]["title"].startswith("[ja]")


@deferred_f_from_coro_f
async def test_removed_products_become_failure_records(make_sandbox, tmp_path):
    removed = [700020000003, 700020000011]
    sb = make_sandbox("--removed", ",".join(map(str, removed)))
    result = await crawl("shop", sb, tmp_path, member_id="b2b-sandbox0000", max_pages="1")
    assert len(result.records) == 18
    assert sorted(f["item_id"] for f in result.failures) == removed
    failure = result.failures[0]
    assert failure["endpoint"] == "item_detail"
    assert failure["code"] == 417
    assert failure["attempts"] == 4  # 1 + TMAPI_RETRY_TIMES
    assert failure["params"]["item_id"] == failure["item_id"]
    assert "apiToken" not in failure["params"]
    assert failure["source"]["member_id"] == "b2b-sandbox0000"
    assert failure["listing"]["item_id"] == str(failure["item_id"])
    datetime.fromisoformat(failure["failed_at"])
    # The accounting rule: every listed product is a record or a failure.
    assert len(result.records) + len(result.failures) == 20
    stats = assert_bill(sb, minimum_calls(pages=1, products=18))
    assert stats["codes"]["417"] == 8
    assert result.stats["tmapi/failures"] == 2
    assert result.stats["tmapi/retries/count"] == 6


@deferred_f_from_coro_f
async def test_failed_description_still_writes_the_product(make_sandbox, tmp_path):
    sb = make_sandbox("--removed-desc", "700020000004")
    result = await crawl("shop", sb, tmp_path, member_id="b2b-sandbox0000", max_pages="1")
    assert len(result.records) == 20
    record = next(r for r in result.records if r["item_id"] == 700020000004)
    assert record["detail_imgs"] is None
    assert record["detail_html"] is None
    assert record["title"]
    (failure,) = result.failures
    assert failure["endpoint"] == "item_desc"
    assert failure["item_id"] == 700020000004
    assert failure["listing"]["item_id"] == "700020000004"


@deferred_f_from_coro_f
async def test_invalid_records_become_failure_records(make_sandbox, tmp_path):
    sb = make_sandbox("--invalid", "700020000005")
    result = await crawl("shop", sb, tmp_path, member_id="b2b-sandbox0000", max_pages="1")
    assert len(result.records) == 19
    (failure,) = result.failures
    assert failure["endpoint"] == "record"
    assert failure["item_id"] == 700020000005
    assert "title" in failure["msg"]
    assert failure["listing"]["item_id"] == "700020000005"
    assert result.stats["tmapi/invalid/title"] == 1
    assert len(result.records) + len(result.failures) == 20


@deferred_f_from_coro_f
async def test_unknown_seed_gives_nothing_and_finishes(sandbox, tmp_path):
    result = await crawl("shop", sandbox, tmp_path, member_id="nobody")
    assert result.records == []
    assert result.reason == "finished"
    assert_bill(sandbox, 1)


@deferred_f_from_coro_f
async def test_transient_faults_are_retried_until_every_product_is_there(make_sandbox, tmp_path):
    sb = make_sandbox("--fault-rate", "0.2", "--error-style", "mixed", "--seed", "11")
    result = await crawl("shop", sb, tmp_path, member_id="b2b-sandbox0001", settings={"TMAPI_RETRY_TIMES": 10})
    assert len(set(result.ids())) == 60
    assert result.failures == []
    stats = assert_bill(sb, minimum_calls(pages=3, products=60))
    errors = sum(n for code, n in stats["codes"].items() if code != "200")
    assert errors > 0
    assert stats["calls"] == stats["billed"] + errors == result.stats["tmapi/calls"]


@deferred_f_from_coro_f
async def test_progress_line_and_summary(sandbox, tmp_path, caplog):
    caplog.set_level("INFO")
    await crawl("shop", sandbox, tmp_path, member_id="b2b-sandbox0000", settings={"TMAPI_PROGRESS_INTERVAL": 0.05})
    text = caplog.text
    assert re.search(r"Progress: pages \d+/\d+, products \d+, failures 0, [\d.]+ calls/s", text)
    assert "TMAPI summary" in text
    assert re.search(r"calls sent\s+123 \(shop_items 3, item_detail 60, item_desc 60\)", text)


@deferred_f_from_coro_f
async def test_an_ids_file_is_read_as_the_crawl_goes(make_sandbox, tmp_path):
    """A file of ids is not turned into requests all at once: when the first
    product is written, only what the downloader holds has been read."""
    from scrapy import signals
    from scrapy.crawler import AsyncCrawlerRunner
    from scrapy.utils.project import get_project_settings

    sb = make_sandbox("--latency-ms", "5", "--concurrency", "4")
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(700_000_000_001 + n) for n in range(3000)) + "\n")
    settings = get_project_settings()
    settings.setdict(base_settings(sb, tmp_path, TMAPI_CONCURRENCY=4), priority="cmdline")
    runner = AsyncCrawlerRunner(settings)
    crawler = runner.create_crawler("item")
    scheduled_at_first_product: list[int] = []

    def item_scraped() -> None:
        if not scheduled_at_first_product:
            assert crawler.stats is not None
            scheduled_at_first_product.append(crawler.stats.get_value("scheduler/enqueued", 0))

    crawler.signals.connect(item_scraped, signal=signals.item_scraped)
    await runner.crawl(crawler, file=str(ids), follow="detail")
    assert crawler.stats is not None
    assert crawler.stats.get_value("tmapi/products") == 3000
    assert scheduled_at_first_product[0] < 300  # 2 * TMAPI_CONCURRENCY in the downloader, and a little more


@deferred_f_from_coro_f
async def test_a_counter_told_of_records_before_the_feed_exports_is_refused(sandbox, tmp_path, caplog):
    """FeedGuard.item_failed is set while the feed exports write a record:
    a component that reads it must be told after them (a user's EXTENSIONS
    priority below 0 would count what no file holds)."""
    settings = {"EXTENSIONS": {"tmapi_crawler.extensions.TmapiStats": -10}}
    result = await crawl("shop", sandbox, tmp_path, settings, member_id="b2b-sandbox0000")
    assert result.reason == "tmapi_feed_failed"
    assert "TmapiStats is told of each record before the feed exports" in caplog.text
    assert sandbox.stats()["calls"] == 0
