"""Freshness per call: the rate estimator on simulated histories, the
planner's choice and its budget, the watch list, and crawls of a living
sandbox (``--living``) with a store."""

from __future__ import annotations

import math
import random
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import logged_stat as stat
from tests.helpers import needs, read_jsonl, run_scrapy
from tests.test_report import open_in_chromium
from tmapi_crawler.config import ConfigError
from tmapi_crawler.store.freshness import (
    RefreshPlanner,
    estimate_rate,
    format_history,
    listing_counters,
    matters,
    parse_budget,
    parse_history,
)
from tmapi_crawler.store.lookup import Stored
from tmapi_crawler.store.watch import read_watch

SHOP = "b2b-sandbox0000"
DAY = 86400.0
NOW = datetime(2026, 12, 1, tzinfo=UTC)


# -- the estimator -------------------------------------------------------------------


@pytest.mark.parametrize("per_day", [3.0, 1.0, 1 / 7, 1 / 30])
def test_the_estimator_recovers_known_rates_from_irregular_intervals(per_day):
    """Intervals of an hour to two weeks, each saying only whether a change
    happened: the estimate is within 20% of the true rate, where counting
    the intervals that changed is far off for the fast products."""
    rng = random.Random(int(per_day * 1000))
    rate = per_day / DAY
    history = []
    for _ in range(600):
        t = rng.choice([3600, 6 * 3600, DAY, 3 * DAY, 14 * DAY]) * rng.uniform(0.5, 1.5)
        history.append((t, rng.random() < -math.expm1(-rate * t)))
    estimate = estimate_rate(history, prior_rate=1 / (7 * DAY))
    assert abs(estimate / rate - 1) < 0.2, (estimate * DAY, per_day)
    naive = sum(changed for _, changed in history) / sum(t for t, _ in history)
    if per_day >= 1:
        assert naive < 0.5 * rate  # what the estimator corrects


def test_little_history_stays_near_the_shops_rate():
    shop = 1 / (2 * DAY)
    assert estimate_rate([], prior_rate=shop) == shop
    one = estimate_rate([(DAY, True)], prior_rate=shop)
    assert shop < one < 3 * shop  # one change seen moves it, within reason
    quiet = estimate_rate([(DAY, False)] * 3, prior_rate=shop)
    assert quiet < shop


def test_a_change_that_matters():
    assert matters([{"change": "price"}])
    assert matters([{"change": "stock", "old": "5", "new": "0"}])  # a SKU sold out
    assert matters([{"change": "stock", "old": 0, "new": 12}])  # back in stock
    assert matters([{"change": "sku_added"}]) and matters([{"change": "sold_out"}])
    assert not matters([{"change": "stock", "old": "50", "new": "47"}])  # a sale, nothing more
    assert not matters([{"change": "title"}, {"change": "new"}])
    assert parse_history(format_history([(3600.4, True), (86400, False)])) == [(3600.0, True), (86400.0, False)]


def test_the_listing_counters():
    shop = {"sale_info": {"orders_count_30days": "12", "sale_quantity_30days": "40"}}
    assert listing_counters(shop) == (12, 40)
    assert listing_counters({"sales_count": "7"}) == (7, 7)
    assert listing_counters(None) == (None, None)


# -- the planner --------------------------------------------------------------------


def stored(item_id: int, *, hours: float = 24.0, orders: int | None = 0, units: int | None = 0,
           min_stock: int | None = 100, rate: float | None = 1 / (7 * DAY)) -> Stored:  # fmt: skip
    return Stored(item_id=item_id, detail=b"{}", detail_fetched_at=(NOW - timedelta(hours=hours)).isoformat(),
                  description=None, desc_fetched_at=None, listing_sig=None, language="zh", shop="s",
                  refresh_rate=rate, orders_seen=orders, units_seen=units, min_stock=min_stock)  # fmt: skip


def entry(orders: int, units: int) -> dict[str, Any]:
    return {"sale_info": {"orders_count_30days": str(orders), "sale_quantity_30days": str(units)}}


def test_a_product_ordered_a_lot_with_little_stock_comes_before_one_no_one_orders():
    planner = RefreshPlanner(budget=1)
    popular = planner.candidate(stored(1, orders=100, units=300, min_stock=3), entry(140, 330), NOW)
    quiet = planner.candidate(stored(2, hours=100, orders=0, units=0), entry(0, 0), NOW)
    assert popular.value > quiet.value and popular.stale > 0.9
    assert planner.choose([quiet, popular], share=0.5) == {1}


def test_the_budget_is_never_exceeded_and_nothing_waits_forever():
    planner = RefreshPlanner(budget=25)
    rng = random.Random(3)
    chosen: set[int] = set()
    for page in range(50):
        cands = [planner.candidate(stored(page * 20 + k, hours=rng.uniform(1, 200), orders=rng.randint(0, 50)),
                                   entry(rng.randint(0, 60), rng.randint(0, 90)), NOW) for k in range(20)]  # fmt: skip
        chosen |= planner.choose(cands, share=0.0, expected_left=(49 - page) * 20)
    assert len(chosen) == planner.spent <= 25
    assert planner.spent >= 20  # the budget is spread over the listing, not all spent on page 1
    # A product nobody orders, far past the max age, outranks a fresh popular one.
    old = planner.candidate(stored(9001, hours=24 * 60, rate=1e-12), entry(0, 0), NOW)
    fresh = planner.candidate(stored(9002, hours=0.1, orders=5, rate=1e-12), entry(5, 5), NOW)
    assert old.value > fresh.value


def test_the_default_spends_what_the_max_age_implies():
    """Unset: the listing's share is the time since its last read over the
    max age (a day of a week: a seventh), so that a daily crawl refreshes
    about what the age rule did, chosen by value."""
    planner = RefreshPlanner(budget=None, max_age=7 * DAY, listing_reads={"l": (NOW - timedelta(days=1)).isoformat()})
    share = planner.share_of("l", NOW)
    assert share == pytest.approx(1 / 7)
    rng = random.Random(5)
    for page in range(35):
        cands = [planner.candidate(stored(page * 20 + k, hours=rng.uniform(1, 160)), entry(rng.randint(0, 9), 0), NOW)
                 for k in range(20)]  # fmt: skip
        planner.choose(cands, share)
    assert planner.budget == 100 and 90 <= planner.spent <= 100  # 700 listed / 7
    assert planner.share_of("never read", NOW) == pytest.approx(1 / 7)  # a day, when nothing says


def test_watched_products_due_come_first_within_the_budget():
    planner = RefreshPlanner(budget=2, watch=frozenset({5, 6, 7}), watch_max_age=3600)
    cands = [planner.candidate(stored(n, hours=2, orders=0), entry(0, 0), NOW) for n in (1, 5, 6, 7)]
    cands.append(planner.candidate(stored(8, hours=1 / 60), entry(0, 0), NOW))
    assert planner.choose(cands, share=1.0) <= {5, 6, 7}
    assert planner.spent == planner.watched == 2 and planner.waited == 1


@pytest.mark.parametrize(("given", "parsed"), [(None, None), ("", None), ("500", 500), ("5%", 0.05), ("0", 0)])
def test_budgets(given, parsed):
    assert parse_budget(given) == parsed
    for bad in ("lots", "-5", "150%", "1.5"):
        with pytest.raises(ValueError, match=r"calls|share"):
            parse_budget(bad)


# -- the watch list ------------------------------------------------------------------


def test_a_watch_list_of_ids_urls_and_shop_csvs(tmp_path):
    lines = tmp_path / "watch.txt"
    lines.write_bytes(
        "\ufeff# what we sell\n652702302959\nhttps://detail.1688.com/offer/859086919394.html\n\n".encode()
    )
    assert read_watch(lines) == {652702302959, 859086919394}
    shopify = tmp_path / "products_export.csv"
    shopify.write_text("Handle,Title,Variant SKU\n1688-700020000001,A,5000\n1688-700020000001,,5001\n"
                       "my-own-thing,B,x\n1688-700020000002,C,5002\n", encoding="utf-8-sig")  # fmt: skip
    assert read_watch(shopify) == {700020000001, 700020000002}
    woo = tmp_path / "wc-product-export.csv"
    woo.write_text('ID,Type,SKU,Name,Parent\n1,variable,1688-700020000003,"A, b",\n2,variation,5003,,'
                   "1688-700020000003\n", encoding="utf-8")  # fmt: skip
    assert read_watch(woo) == {700020000003}
    empty = tmp_path / "empty.csv"
    empty.write_text("Handle,Title\nmy-own-thing,B\n")
    with pytest.raises(ConfigError, match="names no product"):
        read_watch(empty)
    with pytest.raises(ConfigError, match="no such file"):
        read_watch(tmp_path / "none.txt")


# -- crawls of a living sandbox ------------------------------------------------------------


def living_crawl(sb: Any, cwd: Path, *settings: str) -> Any:
    args = ["crawl", "shop", "-a", f"member_id={SHOP}", "-O", "products.jsonl", "-s", f"TMAPI_BASE_URL={sb.url}"]
    args += ["-s", "TMAPI_STORE=catalog.sqlite", "-s", "TMAPI_PROGRESS_INTERVAL=0"]
    for setting in settings:
        args += ["-s", setting]
    done = run_scrapy(*args, cwd=cwd, env={"TMAPI_TOKEN": sb.token}, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_crawl_spends_its_budget_where_orders_are_and_says_what_it_bought(make_sandbox, tmp_path):
    sb = make_sandbox("--shops", "1", "--shop-size", "200", "--living")
    living_crawl(sb, tmp_path)
    watched = [r["item_id"] for r in read_jsonl(tmp_path / "products.jsonl")][:3]
    (tmp_path / "watch.txt").write_text("\n".join(map(str, watched)) + "\n")
    for _ in range(2):
        sb.admin("advance", "POST")
    sb.reset()
    done = living_crawl(sb, tmp_path, "TMAPI_REFRESH_BUDGET=20", "TMAPI_WATCH=watch.txt", "TMAPI_WATCH_MAX_AGE=0")
    assert stat(done.stderr, "tmapi/refresh/spent") == 20 == stat(done.stderr, "tmapi/refresh/budget")
    # Every watched product was fetched again: by the budget, or for a reason
    # of its own (its listing entry changed: outside the budget).
    assert stat(done.stderr, "tmapi/refresh/watched") <= 3
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    marks = ",".join("?" * len(watched))
    query = f"SELECT detail_fetched_at FROM products WHERE item_id IN ({marks})"  # noqa: S608 - marks only
    fetched = [at for (at,) in db.execute(query, watched)]
    second_crawl = db.execute("SELECT MAX(started_at) FROM crawls").fetchone()[0]
    db.close()
    assert len(fetched) == 3 and all(at >= second_crawl for at in fetched), (fetched, second_crawl)
    assert 0 < stat(done.stderr, "tmapi/refresh/estimated_current") <= 1
    line = next(line for line in done.stderr.splitlines() if line.strip().startswith("refreshed"))
    # The line says what the stats say: the watched products the budget refreshed.
    watched_by_budget = int(stat(done.stderr, "tmapi/refresh/watched"))
    assert re.search(
        rf"refreshed\s+20 of \d+ stored \(budget 20, {watched_by_budget} watched\), \d+ changes caught; "
        r"about \d+% of orders",
        line,
    )
    details = sb.stats()["calls_per_endpoint"].get("item_detail", 0)
    fetched_outside = stat(done.stderr, "tmapi/store/detail_fetched/listing") + stat(
        done.stderr, "tmapi/store/detail_fetched/new"
    )
    assert details == 20 + fetched_outside  # the budget, and only what it does not cover besides
    # The crawls table keeps the figures, for the report's freshness panel.
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    row = db.execute(
        "SELECT refresh_budget, refresh_spent, estimated_current FROM crawls ORDER BY started_at DESC"
    ).fetchone()
    db.close()
    assert row[0] == row[1] == 20 and 0 < row[2] <= 1
    # The report's freshness panel, as a browser shows it.
    needs("chromium")
    report = run_scrapy("catalog", "report", "--store", "catalog.sqlite", "-O", "report.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    dom, _ = open_in_chromium(tmp_path / "report.html", tmp_path)
    panel = dom[dom.index('<section id="freshness">') :]
    panel = panel[: panel.index("</section>")]
    assert panel.count("<tr>") == 1 + 2  # a row a crawl
    cells = re.findall(r"<td class=\"n\">([^<]*)</td>", panel)
    assert cells[:3] == ["20", "20", str(int(stat(done.stderr, "tmapi/refresh/caught")))]
    assert cells[3].endswith("%")


def test_a_watch_list_that_cannot_be_used_is_one_line_before_any_call(sandbox, tmp_path):
    (tmp_path / "watch.csv").write_text("Handle,Title\nmy-own-thing,B\n")
    for value, words in (("watch.csv", "names no product"), ("none.txt", "no such file")):
        done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-s", f"TMAPI_BASE_URL={sandbox.url}",
                          "-s", "TMAPI_STORE=catalog.sqlite", "-s", f"TMAPI_WATCH={value}", cwd=tmp_path,
                          env={"TMAPI_TOKEN": sandbox.token})  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and words in done.stderr
    assert sandbox.stats()["calls"] == 0


def test_a_jobdir_resume_does_not_spend_the_budget_again(make_sandbox, tmp_path):
    """A crawl with a budget of calls stopped by SIGTERM and resumed: the
    two runs spend the budget once between them."""
    import signal
    import subprocess
    import time

    from tests.helpers import SCRAPY, scrapy_env

    sb = make_sandbox("--shops", "1", "--shop-size", "400", "--living", "--latency-ms", "20", "--concurrency", "4")
    living_crawl(sb, tmp_path)
    for _ in range(3):
        sb.admin("advance", "POST")
    args = [SCRAPY, "crawl", "shop", "-a", f"member_id={SHOP}", "-o", "again.jsonl", "-s", f"TMAPI_BASE_URL={sb.url}",
            "-s", "TMAPI_STORE=catalog.sqlite", "-s", "JOBDIR=job", "-s", "TMAPI_REFRESH_BUDGET=40",
            "-s", "TMAPI_PROGRESS_INTERVAL=0"]  # fmt: skip
    sb.reset()
    proc = subprocess.Popen(args, cwd=tmp_path, env=scrapy_env({"TMAPI_TOKEN": sb.token}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while sb.stats()["calls_per_endpoint"].get("item_detail", 0) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, first = proc.communicate(timeout=60)
    assert proc.returncode == 130, first[-3000:]
    done = subprocess.run(args, cwd=tmp_path, env=scrapy_env({"TMAPI_TOKEN": sb.token}), capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming the crawl" in done.stderr
    # The resumed run knows what the first spent (what JOBDIR kept with its
    # last commit), and spends at most what is left.
    before = stat(done.stderr, "tmapi/resumed/refresh/spent")
    assert 0 < before <= 40 and before >= stat(first, "tmapi/refresh/spent") - 4 * 2  # in hand at the stop
    assert stat(done.stderr, "tmapi/refresh/budget") == 40 - before
    assert before + stat(done.stderr, "tmapi/refresh/spent") <= 40


def test_two_workers_share_one_budget(make_sandbox, redis_server, postgres, tmp_path):
    """Distributed mode: a number of calls is the crawl's, not each worker's."""
    from tests.test_cluster import Worker

    sb = make_sandbox("--shops", "1", "--shop-size", "300", "--living", "--latency-ms", "5")

    def run(tag: str, **settings: Any) -> list[Any]:
        workers = [
            Worker(f"{tag}{n}", "shop", *(("-a", f"member_id={SHOP}") if n == 0 else ()), sandbox=sb,
                   redis=redis_server, cwd=tmp_path, settings={"TMAPI_STORE": postgres, **settings})
            for n in range(2)
        ]  # fmt: skip
        assert [w.wait() for w in workers] == [0, 0]
        return workers

    run("a")
    redis_server.client().delete("shop:dupefilter")  # the same seed again, the next day
    for _ in range(3):
        sb.admin("advance", "POST")
    second = run("b", TMAPI_REFRESH_BUDGET=30)
    spent = [stat(w.log.read_text(), "tmapi/refresh/spent") for w in second]
    assert 0 < sum(spent) <= 30, spent
    assert len({r["item_id"] for w in second for r in w.records()}) == 300
