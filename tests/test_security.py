"""The token never leaks; hostile answers never crash a crawl or lose data."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scrapy.http import Request, TextResponse
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from tests.helpers import TOKEN, crawl, run_scrapy
from tmapi_crawler import api
from tmapi_crawler.api import Endpoint, MalformedAnswer
from tmapi_crawler.records import FailureItem, ProductItem, validate
from tmapi_crawler.redaction import RedactingFilter
from tmapi_crawler.spiders.shop import ShopSpider

CANARY = "leak-canary-7f3a9d1e"
SHOP = "b2b-sandbox0000"


def assert_no_token_anywhere(result: subprocess.CompletedProcess[str], workdir: Path) -> list[Path]:
    """The crawl (logging at DEBUG to crawl.log) succeeded, wrote failure
    records, and the token is in none of its files nor its output."""
    assert result.returncode == 0, result.stderr
    log = (workdir / "crawl.log").read_text()
    assert "Crawled (200) <GET " in log
    assert "apiToken" not in log
    assert (workdir / "failures.jsonl").exists()
    written = [p for p in workdir.rglob("*") if p.is_file()]
    for path in written:
        assert CANARY.encode() not in path.read_bytes(), path
    assert CANARY not in result.stderr + result.stdout
    return written


def test_the_token_is_nowhere_a_crawl_wrote(make_sandbox, tmp_path):
    sb = make_sandbox(
        "--fault-rate", "0.2", "--concurrency", "3", "--latency-ms", "3",
        "--removed", "700020000002", "--broken", "700020000003:html,desc:700020000004:truncated",
        "--error-style", "mixed",
        token=CANARY,
    )  # fmt: skip
    result = run_scrapy(
        "crawl", "shop", "-a", f"member_id={SHOP}", "-a", "max_pages=2", "-o", "out.jsonl",
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "LOG_LEVEL=DEBUG", "-s", "LOG_FILE=crawl.log",
        "-s", "HTTPCACHE_ENABLED=True", "-s", f"HTTPCACHE_DIR={tmp_path / 'cache'}", "-s", "JOBDIR=job",
        "-s", "TMAPI_RETRY_BACKOFF=0.01",
        cwd=tmp_path,
        env={"TMAPI_TOKEN": CANARY},
    )  # fmt: skip
    written = assert_no_token_anywhere(result, tmp_path)
    assert any("cache" in p.parts for p in written)
    assert any("job" in p.parts for p in written)
    stats = sb.stats()
    assert stats["codes"].get("503", 0) > 0
    assert stats["billed_twice"] == 0


def test_the_token_is_nowhere_a_distributed_crawl_wrote(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox("--fault-rate", "0.2", "--error-style", "mixed", "--concurrency", "3", "--latency-ms", "3",
                      "--removed", "700020000002", token=CANARY)  # fmt: skip
    result = run_scrapy(
        "crawl", "shop", "-a", f"member_id={SHOP}", "-a", "max_pages=2", "-o", "out.jsonl",
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"REDIS_URL={redis_server.url}", "-s", "TMAPI_IDLE_TIMEOUT=1",
        "-s", "LOG_LEVEL=DEBUG", "-s", "LOG_FILE=crawl.log", "-s", "TMAPI_RETRY_BACKOFF=0.01",
        "-s", "HTTPCACHE_ENABLED=True", "-s", f"HTTPCACHE_DIR={tmp_path / 'cache'}",
        cwd=tmp_path,
        env={"TMAPI_TOKEN": CANARY},
    )  # fmt: skip
    assert_no_token_anywhere(result, tmp_path)
    dump = redis_server.dump()
    assert b"shop:dupefilter" in dump
    assert not any(CANARY.encode() in value for values in dump.values() for value in values)
    assert sb.stats()["codes"].get("503", 0) > 0


def test_a_token_that_reaches_a_log_line_is_masked(caplog):
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter(CANARY))
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "url %s", (f"?apiToken={CANARY}",), None)
    try:
        raise RuntimeError(f"boom {CANARY}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert handler.filter(record)
    assert CANARY not in record.getMessage()
    assert record.exc_text is not None
    assert CANARY not in record.exc_text
    assert "boom ***" in record.exc_text


BROKEN = {
    700020000001: "html",
    700020000002: "truncated",
    700020000003: "no-code",
    700020000004: "no-data",
    700020000005: "wrong-data",
    700020000006: "bad-item-id",
    700020000007: "huge",
}


@deferred_f_from_coro_f
async def test_hostile_answers_become_failure_records(make_sandbox, tmp_path):
    spec = ",".join(f"{k}:{v}" for k, v in BROKEN.items()) + ",desc:700020000008:wrong-data"
    sb = make_sandbox("--broken", spec)
    result = await crawl(
        "shop", sb, tmp_path, member_id=SHOP, max_pages="1", settings={"DOWNLOAD_MAXSIZE": 1024 * 1024}
    )
    assert "spider_exceptions/count" not in result.stats
    failed = {f["item_id"]: f for f in result.failures}
    assert set(failed) == set(BROKEN) | {700020000008}
    assert len(result.records) == 20 - len(BROKEN)  # the broken description still gives its product
    assert "not JSON" in failed[700020000001]["msg"]
    assert "502 Bad Gateway" in failed[700020000001]["msg"]  # the start of the body
    assert "not JSON" in failed[700020000002]["msg"]
    assert "not a {code, msg, data} envelope" in failed[700020000003]["msg"]
    assert "has no data" in failed[700020000004]["msg"]
    assert "not an object" in failed[700020000005]["msg"]
    assert "item_id is not a number" in failed[700020000006]["msg"]
    assert "max size" in failed[700020000007]["msg"] or "maxsize" in failed[700020000007]["msg"].lower()
    assert failed[700020000008]["endpoint"] == "item_desc"
    assert all(f["code"] is None for f in result.failures)
    assert all(validate(FailureItem(f)) is None for f in result.failures)
    assert result.stats["tmapi/failures"] == len(BROKEN) + 1


@deferred_f_from_coro_f
async def test_hostile_listings_become_failure_records(make_sandbox, tmp_path):
    sb = make_sandbox("--broken", "shop:b2b-sandbox0001:items-not-list,category:1032001:bad-item-id")
    shop = await crawl("shop", sb, tmp_path / "s", member_id="b2b-sandbox0001")
    (failure,) = shop.failures
    assert failure["endpoint"] == "shop_items"
    assert "no list of items" in failure["msg"]
    cat = await crawl("category", sb, tmp_path / "c", cat_id="1032001", max_pages="1", follow="listing")
    assert len(cat.records) == 19
    (bad,) = cat.failures
    assert "item_id is not a number" in bad["msg"]
    assert bad["listing"]["item_id"] == "not-a-number"
    assert "spider_exceptions/count" not in shop.stats
    assert "spider_exceptions/count" not in cat.stats


@pytest.fixture(scope="module")
def spider():
    crawler = get_crawler(ShopSpider, {"TMAPI_TOKEN": TOKEN, "ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0}})
    return ShopSpider.from_crawler(crawler, member_id="m")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {"code": st.sampled_from([200, 200, 200, 417, "200", None]), "msg": st.text(max_size=10)},
    optional={
        "data": json_values
        | st.fixed_dictionaries(
            {"item_id": st.integers() | st.text(max_size=12), "title": st.text(max_size=10)},
            optional={"items": json_values, "total_count": json_values, "has_next_page": json_values},
        )
    },
).map(lambda d: json.dumps(d).encode())
bodies = envelopes | st.binary(max_size=200) | envelopes.map(lambda b: b[: len(b) // 2])


def fake_response(endpoint: Endpoint, params: dict, body: bytes, cb_kwargs: dict | None = None) -> TextResponse:
    request = api.build_request("https://api.tmapi.io", endpoint, params, cb_kwargs=cb_kwargs)
    return TextResponse(request.url, status=200, body=body, request=request)


@settings(max_examples=300, deadline=None)
@given(body=bodies)
def test_fuzz_every_answer_is_a_record_a_failure_or_a_request(spider, body):
    """Random and hostile bodies through the callbacks: nothing escapes but
    records, failure records and requests; a malformed envelope is caught
    where the middleware would catch it."""
    source = {"spider": "shop", "member_id": "m", "page": 1, "position": 0}
    opts = {**spider.options(spider.args), "page_size": 20}
    detail_kwargs = {"source": source, "listing": {}, "item_id": 5, "opts": opts}
    cases: list[tuple[Endpoint, dict, dict, Any]] = [
        (Endpoint.SHOP_ITEMS, {"member_id": "m", "page": 1}, {"opts": opts, "pages": None}, spider.parse_page),
        (Endpoint.ITEM_DETAIL, {"item_id": 5}, detail_kwargs, spider.parse_detail),
        (
            Endpoint.ITEM_DESC,
            {"item_id": 5},
            {"product": ProductItem(item_id=5, title="t", source=source), "item_id": 5, "source": source},
            spider.parse_desc,
        ),
    ]
    for endpoint, params, cb_kwargs, callback in cases:
        response = fake_response(endpoint, params, body, cb_kwargs)
        try:
            api.envelope_of(response)
        except MalformedAnswer:
            continue  # the middleware turns it into a failure record
        for out in callback(response, **cb_kwargs):
            assert isinstance(out, (ProductItem, FailureItem, Request)), out
            if isinstance(out, FailureItem):
                assert validate(out) is None


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | envelopes, status=st.sampled_from([200, 417, 500, 503, 502]))
def test_fuzz_parse_envelope_raises_nothing_else(body, status):
    if status != 200:
        # An error status is an envelope whatever the body is.
        env = api.parse_envelope(status, body)
        assert isinstance(env.code, int)
        assert env.code != 200
        return
    try:
        env = api.parse_envelope(status, body)
    except MalformedAnswer as exc:
        snippet = exc.snippet
    else:
        assert isinstance(env.code, int)
        return
    assert len(snippet) <= 200
