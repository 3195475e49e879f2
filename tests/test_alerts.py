"""Change alerts: the rules, the digest, the three formats against local
receivers that check each service's documented shape and limits, and one
alert per crawl in distributed mode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import crawl, read_jsonl, run_scrapy
from tests.test_cluster import Worker
from tests.test_operations import Receiver, receiver  # noqa: F401 - the fixture
from tmapi_crawler.notify.digest import (
    DISCORD_CONTENT_CHARS,
    DISCORD_MOST_MESSAGES,
    SLACK_HEADER_CHARS,
    SLACK_MOST_BLOCKS,
    SLACK_SECTION_CHARS,
    Digest,
    parse_rules,
    relative_change,
    render,
)
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.url import parse_store_url

SHOP = "b2b-sandbox0000"
RULES = "price_drop,price_rise:1%,sold_out,back_in_stock,delisted,new"


def change(kind: str, item_id: int = 1, old=None, new=None, skuid=None) -> dict:
    return {"change": kind, "item_id": item_id, "skuid": skuid, "field": None, "old": old, "new": new,
            "detected_at": "2026-11-30T03:00:00Z", "source": None}  # fmt: skip


def test_rules_parse_and_match():
    rules = parse_rules("price_drop:10%, price_rise, sold_out")
    assert [str(r) for r in rules] == ["price_drop:10%", "price_rise", "sold_out"]
    digest = Digest(rules, most=2)
    assert not digest.add(change("price", old="10.00", new="9.50"))  # -5%: under 10%
    assert digest.add(change("price", 2, old="10.00", new="8.00"))  # -20%
    assert digest.add(change("price", 3, old="10.00", new="10.10"))  # any rise
    assert digest.add(change("sold_out", 4))
    assert not digest.add(change("stock", 5, old=3, new=2))
    assert digest.matched == 3 and digest.by_kind == {"price": 2, "sold_out": 1}
    # The two kept: the largest price moves first.
    assert [c["item_id"] for c in digest.changes()] == [2, 3]
    assert relative_change(change("price", old="8", new="6")) == pytest.approx(-0.25)
    for bad, message in (("price_jump", "unknown rule 'price_jump'"), ("sold_out:5%", "sold_out takes no amount"),
                         ("price_drop:lots", "the amount is a percentage"), ("", "no rule")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_rules(bad)


def report(changes: int, failed: int = 0) -> dict:
    digest = Digest(parse_rules("price_drop"), most=changes)
    for n in range(changes):
        digest.add({**change("price", 1000 + n, old="100.00", new=f"{99 - n % 90}.00"), "title": "睡衣 " * 40,
                    "url": f"https://detail.1688.com/offer/{1000 + n}.html", "sku": "颜色:白色;尺码:L"})  # fmt: skip
    return {"spider": "shop", "finish_reason": "finished", "changes": digest.changes(), "changes_matched": changes,
            "changes_by_kind": digest.by_kind, "more_changes": 7,
            "failed_monitors": [{"monitor": f"m{n}", "reason": "x" * 500} for n in range(failed)]}  # fmt: skip


def check_slack(payload: dict) -> None:
    """Slack's incoming webhooks: ``text`` and ``blocks``, at most 50 blocks;
    a header's text at most 150 characters, a section's 3,000."""
    assert set(payload) == {"text", "blocks"}
    assert isinstance(payload["text"], str) and payload["text"]
    assert 1 <= len(payload["blocks"]) <= SLACK_MOST_BLOCKS
    for block in payload["blocks"]:
        assert block["type"] in ("header", "section", "context")
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert len(block["text"]["text"]) <= SLACK_HEADER_CHARS
        elif block["type"] == "section":
            assert block["text"]["type"] == "mrkdwn"
            assert 0 < len(block["text"]["text"]) <= SLACK_SECTION_CHARS
        else:
            assert all(len(e["text"]) <= SLACK_SECTION_CHARS for e in block["elements"])


def check_discord(payloads: list[dict]) -> None:
    """Discord's webhooks: ``content`` of at most 2,000 characters, and no
    mention that pings anyone (``allowed_mentions``)."""
    assert 1 <= len(payloads) <= DISCORD_MOST_MESSAGES
    for payload in payloads:
        assert set(payload) == {"content", "allowed_mentions"}
        assert payload["allowed_mentions"] == {"parse": []}
        assert 0 < len(payload["content"]) <= DISCORD_CONTENT_CHARS


@pytest.mark.parametrize(("changes", "failed"), [(1, 0), (50, 2), (500, 30)])
def test_every_format_keeps_to_its_service_limits(changes, failed):
    big = report(changes, failed)
    check_slack(render(big, "slack")[0])
    check_discord(render(big, "discord"))
    [structured] = render(big, "json")
    assert len(structured["changes"]) == changes and "睡衣" in structured["text"]
    if changes >= 500:  # too much for a message: cut, and said
        assert "more" in render(big, "discord")[-1]["content"]
        assert any(
            b["type"] == "context" and "more" in b["elements"][0]["text"] for b in render(big, "slack")[0]["blocks"]
        )


def alert_settings(tmp_path: Path, store: str, tag: str, **more) -> dict:
    return {"TMAPI_STORE": store, "TMAPI_CHANGES_FILE": str(tmp_path / f"changes-{tag}.jsonl"), **more}


def matching(changes: list[dict]) -> list[dict]:
    digest = Digest(parse_rules(RULES), most=10**6)
    return [c for c in changes if digest.add(c)]


@deferred_f_from_coro_f
async def test_one_alert_per_crawl_with_the_changes_that_match(make_sandbox, tmp_path, receiver):  # noqa: F811
    sb = make_sandbox("--shops", "1", "--shop-size", "200")
    store = str(tmp_path / "catalog.sqlite")
    quiet = receiver()
    await crawl("shop", sb, tmp_path, alert_settings(tmp_path, store, "1", TMAPI_ALERT_WEBHOOK=quiet.url,
                                                    TMAPI_ALERT_CHANGES=RULES), member_id=SHOP)  # fmt: skip
    assert len(quiet.posts) == 1  # day 1: every product is new
    assert quiet.posts[0]["changes_by_kind"] == {"new": 200}
    for day, form in ((2, "json"), (3, "slack"), (4, "discord")):
        sb.revise(0.3, delist=0.05)
        hook = receiver()
        settings = alert_settings(tmp_path, store, str(day), TMAPI_ALERT_WEBHOOK=hook.url, TMAPI_ALERT_CHANGES=RULES,
                                  TMAPI_ALERT_MAX_CHANGES=10, TMAPI_ALERT_FORMAT=form)  # fmt: skip
        result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP)
        assert result.reason == "finished"
        expected = matching(read_jsonl(tmp_path / f"changes-{day}.jsonl"))
        assert expected
        if form == "json":
            [alert] = hook.posts
            assert alert["changes_matched"] == len(expected)
            assert alert["more_changes"] == len(expected) - 10
            assert len(alert["changes"]) == 10
            moves = [abs(c["relative_change"]) for c in alert["changes"] if c["change"] == "price"]
            assert moves == sorted(moves, reverse=True)  # the largest price moves first
            assert moves[0] == max(abs(c["relative_change"] or 0) for c in alert["changes"])
            for c in alert["changes"]:
                assert c["title"] and c["url"] == f"https://detail.1688.com/offer/{c['item_id']}.html"
                if c["skuid"]:
                    assert c["sku"]  # the SKU's option names
            assert "**TMAPI crawl of shop ended (finished)" in alert["text"]
        elif form == "slack":
            [alert] = hook.posts
            check_slack(alert)
        else:
            check_discord(hook.posts)
    # Nothing changed and every monitor passed: no alert.
    hook = receiver()
    settings = alert_settings(tmp_path, store, "5", TMAPI_ALERT_WEBHOOK=hook.url, TMAPI_ALERT_CHANGES="delisted")
    await crawl("shop", sb, tmp_path, settings, member_id=SHOP)
    assert hook.posts == []


def test_a_bad_rule_is_one_line_before_any_call(sandbox, tmp_path):
    done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-s", f"TMAPI_BASE_URL={sandbox.url}",
                      "-s", "TMAPI_ALERT_CHANGES=price_drop,price_jump", cwd=tmp_path,
                      env={"TMAPI_TOKEN": sandbox.token})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "TMAPI_ALERT_CHANGES" in done.stderr and "unknown rule 'price_jump'" in done.stderr
    assert sandbox.stats()["calls"] == 0


def test_two_workers_send_one_alert(make_sandbox, redis_server, postgres, tmp_path, receiver):  # noqa: F811
    sb = make_sandbox("--shops", "1", "--shop-size", "200", "--latency-ms", "5")
    hook = receiver()
    apprise = receiver()  # TMAPI_NOTIFY's json:// too: one message a run of workers

    def workers(tag: str) -> list[Worker]:
        made = []
        for n in range(2):
            settings = {"TMAPI_STORE": postgres, "TMAPI_CHANGES_FILE": tmp_path / f"{tag}{n}-changes.jsonl",
                        "TMAPI_ALERT_WEBHOOK": hook.url, "TMAPI_ALERT_CHANGES": RULES,
                        "TMAPI_NOTIFY": apprise.url.replace("http://", "json://"),
                        "TMAPI_ALERT_MAX_CHANGES": 20}  # fmt: skip
            seed = ("-a", f"member_id={SHOP}") if n == 0 else ()
            made.append(Worker(f"{tag}{n}", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path,
                               settings=settings))  # fmt: skip
        return made

    first = workers("a")
    assert [w.wait() for w in first] == [0, 0]
    assert len(hook.posts) == 1  # one alert for the crawl, not one a worker
    assert hook.posts[0]["changes_by_kind"] == {"new": 200}
    assert hook.posts[0]["workers"] == 2
    assert len(apprise.posts) == 1 and "changes: 200 new" in apprise.posts[0]["title"]
    redis_server.client().delete("shop:dupefilter")  # the same seed again, a day later
    sb.revise(0.3, delist=0.05)
    second = workers("b")
    assert [w.wait() for w in second] == [0, 0]
    assert len(hook.posts) == 2
    assert len(apprise.posts) == 2
    alert = hook.posts[1]
    expected = matching([c for n in range(2) for c in read_jsonl(tmp_path / f"b{n}-changes.jsonl")])
    assert alert["changes_matched"] == len(expected) > 20
    assert len(alert["changes"]) == 20
    assert alert["calls"] == sum(calls_of(w) for w in second)
    assert json.dumps(alert).count("apiToken") == 0
    # The store has one row per crawl, every worker's numbers added up.
    db = CatalogDB(parse_store_url(postgres), create=False)
    try:
        crawls = db.query("SELECT workers, products, calls, finish_reason FROM crawls ORDER BY started_at")
    finally:
        db.close()
    products = sum(len(w.records()) for w in second)
    assert [(row[0], row[1], row[3]) for row in crawls] == [(2, 200, "finished"), (2, products, "finished")]
    assert crawls[1][2] == alert["billed"]


def calls_of(worker: Worker) -> int:
    """The calls a worker made (none: no stat at all)."""
    found = re.findall(r"'tmapi/calls': (\d+)", worker.log.read_text())
    return int(found[-1]) if found else 0


@pytest.mark.parametrize("workers", [2, 3])
def test_a_clean_distributed_crawl_fails_no_monitor_and_pages_no_one(
    make_sandbox,
    redis_server,
    tmp_path,
    receiver,  # noqa: F811
    workers,
):
    """Every worker's records against the listings of the whole crawl: in a
    clean crawl no worker's monitor fails, and the webhook receives nothing
    (each worker has only its share of the products)."""
    sb = make_sandbox("--shops", "1", "--shop-size", "300", "--latency-ms", "5")
    hook = receiver()
    crawl = [
        Worker(f"w{n}", "shop", *(("-a", f"member_id={SHOP}") if n == 0 else ()), sandbox=sb, redis=redis_server,
               cwd=tmp_path, settings={"TMAPI_ALERT_WEBHOOK": hook.url})
        for n in range(workers)
    ]  # fmt: skip
    assert [w.wait() for w in crawl] == [0] * workers
    ids = [r["item_id"] for w in crawl for r in w.records()]
    assert len(ids) == len(set(ids)) == 300
    logs = [w.log.read_text() for w in crawl]
    assert all("[Spidermon] FAIL" not in log for log in logs), [log[-3000:] for log in logs]
    assert sum("'tmapi/run/last_worker': 1" in log for log in logs) == 1  # one worker judged the crawl
    assert all("'tmapi/run/products': 300" in log for log in logs if "'tmapi/run/last_worker': 1" in log)
    assert hook.posts == []


def test_a_distributed_crawl_that_lost_products_still_fails_its_monitor(make_sandbox, redis_server, tmp_path, receiver):  # noqa: F811
    """Page 3 of the shop is broken: its 20 products are lost, and the
    crawl's one alert says so, from the last worker, on the crawl's totals."""
    sb = make_sandbox("--shops", "1", "--shop-size", "300", "--latency-ms", "5", "--broken", f"shop:{SHOP}:3:html")
    hook = receiver()
    crawl = [
        Worker(f"w{n}", "shop", *(("-a", f"member_id={SHOP}") if n == 0 else ()), sandbox=sb, redis=redis_server,
               cwd=tmp_path, settings={"TMAPI_ALERT_WEBHOOK": hook.url})
        for n in range(2)
    ]  # fmt: skip
    assert [w.wait() for w in crawl] == [0, 0]
    assert len({r["item_id"] for w in crawl for r in w.records()}) == 280
    assert len(hook.posts) == 1
    failed = hook.posts[0]["failed_monitors"]
    assert [f["monitor"] for f in failed] == ["products/every announced product"], failed
    assert "the listings announced 300 products, 280 ended as a record or a failure" in failed[0]["reason"]
