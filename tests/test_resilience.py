"""Crawls against the sandbox's faults: limits, 439, budgets, stop and resume.

Each asserts from the sandbox's counters: every product exactly once, no call
billed twice, failure records only for what really failed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import ROOT, SandboxProcess, crawl, minimum_calls, read_jsonl

SHOP = "b2b-sandbox0000"  # 60 products: 3 pages, 120 detail and desc calls
FULL = minimum_calls(pages=3, products=60)


def assert_once(sandbox: SandboxProcess, ids: list[int]) -> dict:
    assert len(ids) == len(set(ids)) == 60
    stats = sandbox.stats()
    assert stats["billed"] == FULL, stats
    assert stats["billed_twice"] == 0, stats["billed_twice_keys"]
    return stats


@deferred_f_from_coro_f
async def test_the_account_limit_is_found_without_being_told(make_sandbox, tmp_path):
    sb = make_sandbox("--concurrency", "3", "--latency-ms", "20")
    result = await crawl("shop", sb, tmp_path, member_id=SHOP)
    stats = assert_once(sb, result.ids())
    assert result.failures == []
    # As the crawler counts (send to answer handled): the account's 3, or
    # more when probes found answers on their way (tmapi_crawler.calls.ceiling).
    assert 3 <= result.stats["tmapi/throttle/ceiling"] <= 6
    assert stats["max_in_flight"] == 3
    assert stats["codes"].get("503", 0) <= 0.05 * stats["calls"]
    assert result.stats.get("tmapi/retries/count", 0) == 0  # a 503 is not an attempt


@deferred_f_from_coro_f
async def test_a_limit_we_are_told_is_never_exceeded(make_sandbox, tmp_path):
    sb = make_sandbox("--concurrency", "3", "--latency-ms", "20")
    result = await crawl("shop", sb, tmp_path, member_id=SHOP, settings={"TMAPI_CONCURRENCY": 3})
    stats = assert_once(sb, result.ids())
    assert "503" not in stats["codes"]


@deferred_f_from_coro_f
async def test_439_pauses_until_the_balance_is_topped_up(make_sandbox, tmp_path):
    sb = make_sandbox("--quota", "40", "--latency-ms", "5")

    def top_up_later() -> None:
        while sb.stats()["codes"].get("439", 0) == 0:
            time.sleep(0.05)
        time.sleep(0.5)
        sb.topup(1000)

    helper = threading.Thread(target=top_up_later)
    helper.start()
    result = await crawl("shop", sb, tmp_path, member_id=SHOP, settings={"TMAPI_QUOTA_PROBE": 0.2})
    helper.join()
    assert result.reason == "finished"
    assert_once(sb, result.ids())
    assert result.failures == []
    assert result.stats["tmapi/throttle/pauses"] == 1
    assert result.stats["tmapi/throttle/paused_seconds"] >= 0.4


@deferred_f_from_coro_f
async def test_439_that_lasts_stops_and_the_resume_pays_nothing_twice(make_sandbox, tmp_path):
    sb = make_sandbox("--quota", "50", "--latency-ms", "5")
    settings = {"JOBDIR": str(tmp_path / "job"), "TMAPI_QUOTA_WAIT": 0.5, "TMAPI_QUOTA_PROBE": 0.1}
    first = await crawl("shop", sb, tmp_path / "1", settings=settings, member_id=SHOP)
    assert first.reason == "tmapi_quota_exhausted"
    assert 0 < len(first.records) < 60
    assert first.failures == []
    assert sb.stats()["billed"] == 50
    sb.topup(1000)
    second = await crawl("shop", sb, tmp_path / "2", settings=settings, member_id=SHOP)
    assert second.reason == "finished"
    assert_once(sb, first.ids() + second.ids())


@deferred_f_from_coro_f
async def test_budget_starts_only_what_it_can_finish_and_resumes(sandbox, tmp_path):
    """TMAPI_MAX_CALLS=50: a product is started only when its detail and its
    description fit (a detail costs 2 of the budget), so the crawl sends 49
    or 50 calls, never more, and every detail it paid for ends as a record."""
    job = {"JOBDIR": str(tmp_path / "job")}
    first = await crawl("shop", sandbox, tmp_path / "1", settings={**job, "TMAPI_MAX_CALLS": 50}, member_id=SHOP)
    assert first.reason == "tmapi_budget_exhausted"
    assert 49 <= first.stats["tmapi/calls"] <= 50
    stats = sandbox.stats()
    assert stats["calls"] == first.stats["tmapi/calls"]
    details = stats["calls_per_endpoint"]["item_detail"]
    assert details == stats["calls_per_endpoint"]["item_desc"] == len(first.records) > 0  # none billed for nothing
    assert first.failures == []
    second = await crawl("shop", sandbox, tmp_path / "2", settings=job, member_id=SHOP)
    assert second.reason == "finished"
    assert_once(sandbox, first.ids() + second.ids())
    assert sandbox.stats()["calls"] == FULL


@deferred_f_from_coro_f
async def test_faults_with_few_retries_fail_only_what_failed(make_sandbox, tmp_path):
    sb = make_sandbox("--fault-rate", "0.3", "--error-style", "mixed", "--seed", "4", "--latency-ms", "2")
    result = await crawl("shop", sb, tmp_path, member_id=SHOP, settings={"TMAPI_RETRY_TIMES": 1})
    stats = sb.stats()
    assert stats["billed_twice"] == 0
    assert result.failures  # with 30% faults and one retry, some calls fail twice
    for failure in result.failures:
        assert failure["code"] in (417, 499, 500)
        assert failure["attempts"] == 2
    detail_failures = {f["item_id"] for f in result.failures if f["endpoint"] == "item_detail"}
    failed_pages = {f["params"]["page"] for f in result.failures if f["endpoint"] == "shop_items"}
    listed = 0 if 1 in failed_pages else 60 - 20 * len(failed_pages)
    # The accounting rule: each listed product is a record or a detail failure.
    assert not set(result.ids()) & detail_failures
    assert len(result.ids()) + len(detail_failures) == listed
    assert stats["billed"] == result.stats["tmapi/billed"]


def test_ctrl_c_then_the_same_command_resumes(make_sandbox, tmp_path):
    sb = make_sandbox("--latency-ms", "150", "--concurrency", "4")
    cmd = [
        str(Path(sys.executable).parent / "scrapy"),
        "crawl", "shop", "-a", f"member_id={SHOP}", "-o", "out.jsonl",
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"TMAPI_TOKEN={sb.token}", "-s", "JOBDIR=job",
    ]  # fmt: skip
    env = {"SCRAPY_SETTINGS_MODULE": "tmapi_crawler.settings", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sb.stats()["billed"] < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Spider closed (shutdown)" in err
    stopped_at = sb.stats()["billed"]
    assert stopped_at < FULL
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    ids = [r["item_id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert_once(sb, ids)


@deferred_f_from_coro_f
async def test_a_shop_page_that_fails_for_good_does_not_stop_the_pages_after_it(make_sandbox, tmp_path):
    """A long shop is paged PAGES_AHEAD at a time: page p + 8 is asked for when
    page p is done, and also when it failed (through the errback, or as a
    malformed listing)."""
    spec = f"shop:{SHOP}:5:html,shop:{SHOP}:12:items-not-list"
    sb = make_sandbox("--shop-size", "400", "--broken", spec)
    result = await crawl("shop", sb, tmp_path, member_id=SHOP)
    assert sorted(f["params"]["page"] for f in result.failures) == [5, 12]
    assert all(f["endpoint"] == "shop_items" for f in result.failures)
    assert len(set(result.ids())) == len(result.ids()) == 400 - 2 * 20
    pages = {rec["source"]["page"] for rec in result.records}
    assert pages == set(range(1, 21)) - {5, 12}
    stats = sb.stats()
    assert stats["calls_per_endpoint"]["shop_items"] == 20
    assert stats["billed_twice"] == 0
    assert "spider_exceptions/count" not in result.stats


@deferred_f_from_coro_f
async def test_the_budget_bills_nothing_it_cannot_finish(make_sandbox, tmp_path):
    """TMAPI_MAX_CALLS=100 on a shop of 400 products with 32 calls in flight:
    when the budget is reached, every detail billed has ended in a product
    record (its description was sent too), and the resume bills each of the
    others once."""
    sb = make_sandbox("--shop-size", "400", "--latency-ms", "30")
    job = {"JOBDIR": str(tmp_path / "job"), "TMAPI_CONCURRENCY": 32}
    first = await crawl("shop", sb, tmp_path / "1", settings={**job, "TMAPI_MAX_CALLS": 100}, member_id=SHOP)
    assert first.reason == "tmapi_budget_exhausted"
    stats = sb.stats()
    assert stats["calls"] <= 100
    per_endpoint = stats["calls_per_endpoint"]
    assert per_endpoint["item_detail"] == per_endpoint["item_desc"] == len(first.records) > 30
    assert first.failures == []
    second = await crawl("shop", sb, tmp_path / "2", settings=job, member_id=SHOP)
    assert second.reason == "finished"
    ids = first.ids() + second.ids()
    assert len(ids) == len(set(ids)) == 400
    assert sb.stats()["billed_twice"] == 0
