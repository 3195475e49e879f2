"""Distributed mode: real worker processes (the real ``scrapy crawl``), a real
redis-server on a loopback port, the sandbox over HTTP."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import JsonRequest
from scrapy.utils.test import get_crawler

from tests.helpers import SCRAPY, TOKEN, RedisServer, SandboxProcess, needs, read_jsonl, run_scrapy, scrapy_env
from tmapi_crawler.cluster.connection import safe_url
from tmapi_crawler.durable import codec
from tmapi_crawler.records import ProductItem
from tmapi_crawler.spiders.shop import ShopSpider

SHOP_A, SHOP_B = "b2b-sandbox0000", "b2b-sandbox0001"


class Worker:
    """One ``scrapy crawl`` worker process with its own feed, failures and log."""

    def __init__(
        self,
        name: str,
        spider: str,
        *args: str,
        sandbox: SandboxProcess,
        redis: RedisServer,
        cwd: Path,
        settings: dict[str, Any] | None = None,
    ):
        self.out = cwd / f"{name}.jsonl"
        self.failures = cwd / f"{name}-failures.jsonl"
        self.log = cwd / f"{name}.log"
        values = {
            "TMAPI_BASE_URL": sandbox.url,
            "REDIS_URL": redis.url,
            "TMAPI_FAILURES_FILE": str(self.failures),
            "TMAPI_IDLE_TIMEOUT": 1.5,
            "TMAPI_LEASE_TIMEOUT": 2,
            "TMAPI_RETRY_BACKOFF": 0.01,
            "TMAPI_PROGRESS_INTERVAL": 0,
            "LOG_FILE": str(self.log),
            **(settings or {}),
        }
        cmd = [SCRAPY, "crawl", spider, *args, "-o", str(self.out)]
        for key, value in values.items():
            cmd += ["-s", f"{key}={value}"]
        self.output = cwd / f"{name}.out"
        with self.output.open("wb") as output:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=scrapy_env({"TMAPI_TOKEN": TOKEN}), stdout=output, stderr=subprocess.STDOUT
            )

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out)

    def lines(self) -> int:
        """Lines written so far (the last one may still be half written)."""
        return self.out.read_bytes().count(b"\n") if self.out.exists() else 0

    def stat(self, name: str) -> int:
        """A number from the stats dump at the end of the log."""
        found = re.findall(rf"'{re.escape(name)}': (\d+)", self.log.read_text())
        assert found, f"no {name} in the stats of {self.log.name}"
        return int(found[-1])


def shop_minimum(products: int, page_size: int = 20) -> int:
    return -(-products // page_size) + 2 * products


def assert_each_product_once(sandbox: SandboxProcess, workers: list[Worker], products: int) -> dict[str, Any]:
    """Every product in exactly one worker's feed, and billed exactly once."""
    ids = Counter(r["item_id"] for w in workers for r in w.records())
    assert len(ids) == products
    assert set(ids.values()) == {1}
    stats = sandbox.stats()
    assert stats["billed"] == shop_minimum(products)
    assert stats["billed_twice"] == 0
    return stats


def assert_nothing_left(redis: RedisServer, spider: str = "shop") -> None:
    r = redis.client()
    assert r.zcard(f"{spider}:requests") == 0
    assert r.zcard(f"{spider}:leases") == 0
    assert r.hlen(f"{spider}:requests:data") == 0
    assert r.zcard("tmapi:gate:holders") == 0


def test_three_workers_share_one_crawl_and_one_limit(make_sandbox, redis_server, tmp_path):
    """Three workers, each told the account's limit of 6: together they never
    go over it (no 503 at all), and every product is written exactly once."""
    sb = make_sandbox("--shop-size", "200", "--latency-ms", "10", "--concurrency", "6")
    told = {"TMAPI_CONCURRENCY": 6}
    workers = [
        Worker("w0", "shop", "-a", f"member_id={SHOP_A},{SHOP_B}", sandbox=sb, redis=redis_server, cwd=tmp_path,
               settings=told),
        Worker("w1", "shop", sandbox=sb, redis=redis_server, cwd=tmp_path, settings=told),
        Worker("w2", "shop", sandbox=sb, redis=redis_server, cwd=tmp_path, settings=told),
    ]  # fmt: skip
    assert [w.wait() for w in workers] == [0, 0, 0]
    stats = assert_each_product_once(sb, workers, 400)
    assert all(len(w.records()) > 0 for w in workers), [len(w.records()) for w in workers]
    assert stats["codes"].get("503", 0) == 0
    assert 2 <= stats["max_in_flight"] <= 6  # in parallel, never over
    assert not any(w.failures.exists() for w in workers)
    assert_nothing_left(redis_server)


def test_two_workers_find_the_shared_limit_alone(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox("--shop-size", "200", "--latency-ms", "10", "--concurrency", "5")
    workers = [
        Worker("w0", "shop", "-a", f"member_id={SHOP_A}", sandbox=sb, redis=redis_server, cwd=tmp_path),
        Worker("w1", "shop", "-a", f"member_id={SHOP_A}", sandbox=sb, redis=redis_server, cwd=tmp_path),
    ]
    assert [w.wait() for w in workers] == [0, 0]
    stats = assert_each_product_once(sb, workers, 200)
    # The limit is found in the first round trips, cluster-wide: 503s come
    # from the slow start's overshoot (calls sent before the news of the
    # first 503 reaches the other worker: it depends on how busy the machine
    # is) and from the probes of one call more (tmapi_crawler.calls.ceiling).
    # Were the limit not shared, the two workers would keep 10 calls in
    # flight against 5, and half the calls would answer 503.
    assert stats["codes"].get("503", 0) <= 0.1 * stats["calls"]
    logs = "".join(w.log.read_text() for w in workers)
    assert "calls in flight in the cluster: at most" in logs
    # The ceiling as the workers count (a call from its send to its answer
    # handled, the release through Redis included: at 10 ms a call, as long
    # as the call itself), at least the account's 5; the account's places
    # all used, never one more.
    assert int(redis_server.client().hget("tmapi:gate", "ceiling")) >= 5
    assert stats["max_in_flight"] == 5


def test_a_killed_worker_loses_nothing(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox("--shop-size", "300", "--latency-ms", "20")
    seed = ("-a", f"member_id={SHOP_A}")
    doomed = Worker("doomed", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path)
    other = Worker("other", "shop", sandbox=sb, redis=redis_server, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while doomed.lines() < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.wait()
    taken_over = Worker("late", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path)
    assert other.wait() == 0
    assert taken_over.wait() == 0
    # The killed worker's feed may end with half a line (what it was writing
    # when it died): that request was not acknowledged, so it was redone.
    lines = doomed.out.read_text().splitlines()
    complete = [json.loads(line) for line in lines[:-1]]
    with contextlib.suppress(ValueError):
        complete.append(json.loads(lines[-1]))
    records = complete + other.records() + taken_over.records()
    ids = Counter(r["item_id"] for r in records)
    assert len(ids) == 300  # nothing lost
    duplicates = sum(n - 1 for n in ids.values())
    # At most what the killed worker had in hand and had not acknowledged.
    assert duplicates <= 64, duplicates
    assert not any(w.failures.exists() for w in (other, taken_over))
    assert "back in the queue" in other.log.read_text() + taken_over.log.read_text()
    assert_nothing_left(redis_server)


def test_seeds_pushed_as_json_and_a_bad_seed(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox()
    env = {"TMAPI_TOKEN": TOKEN}
    redis = ["-s", f"REDIS_URL={redis_server.url}"]
    pushed = run_scrapy("cluster", "push", "category", "-a", "cat_id=1032001,1032002", "-a", "max_pages=1",
                        "-a", "follow=listing", *redis, cwd=tmp_path, env=env)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "2 seeds pushed to tmapi:category:seeds" in pushed.stdout
    r = redis_server.client()
    assert [json.loads(s) for s in r.lrange("tmapi:category:seeds", 0, -1)] == [
        {"cat_id": 1032001, "max_pages": "1", "follow": "listing"},
        {"cat_id": 1032002, "max_pages": "1", "follow": "listing"},
    ]
    r.rpush(
        "tmapi:category:seeds", json.dumps({"cat_id": "shoes"}), b"\x80\x04not json", json.dumps({"cat_id": 1031910})
    )
    refused = run_scrapy("cluster", "push", "category", "-a", "cat_id=shoes", *redis, cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "cat_id" in refused.stderr

    worker = Worker("w", "category", sandbox=sb, redis=redis_server, cwd=tmp_path, settings={"TMAPI_CONCURRENCY": 4})
    assert worker.wait() == 0
    records = worker.records()
    by_cat = Counter(rec["source"]["cat_id"] for rec in records)
    assert by_cat[1032001] == 20  # listing records, one page each
    assert by_cat[1032002] == 20
    assert by_cat[1031910] > 0  # that seed has the default follow (detail+desc)
    bad = read_jsonl(worker.failures)
    assert [f["endpoint"] for f in bad] == ["seed", "seed"]
    assert "cat_id" in bad[0]["msg"]
    assert bad[1]["params"]["seed"].endswith("not json")
    log = worker.log.read_text()
    assert "Skipped a bad seed" in log
    assert "spider_exceptions" not in log
    assert r.llen("tmapi:category:seeds") == 0

    status = run_scrapy("cluster", "status", "category", *redis, cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert "category" in status.stdout


def test_stop_and_restart_resume_with_no_pickle_and_no_token_in_redis(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox("--latency-ms", "5", "--fault-rate", "0.1", "--error-style", "mixed")
    seed = ("-a", f"member_id={SHOP_A},{SHOP_B}")
    budget = {"TMAPI_MAX_CALLS": 70, "TMAPI_CONCURRENCY": 4}
    first = [
        Worker(f"a{i}", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path, settings=budget) for i in range(2)
    ]
    assert [w.wait() for w in first] == [0, 0]  # the budget: exit 0
    assert all("tmapi_budget_exhausted" in w.log.read_text() for w in first)

    r = redis_server.client()
    assert r.zcard("shop:requests") > 0  # pending work stays
    assert r.zcard("shop:leases") == 0  # what the workers held went back
    dump = redis_server.dump()
    assert not any(TOKEN.encode() in v for vs in dump.values() for v in vs)
    # No pickle anywhere: every value is a fingerprint (the dupefilter's
    # 20-byte digests), a number, an id, or JSON.
    for key, vs in dump.items():
        for v in vs:
            if key == b"shop:dupefilter":
                assert len(v) == 20
            elif not v.isdigit():
                assert isinstance(json.loads(v), (dict, int, float)), (key, v)
    for payload in r.hvals("shop:requests:data"):
        request = codec.loads(payload)
        assert "apiToken" not in request["url"]

    second = [Worker(f"b{i}", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path) for i in range(2)]
    assert [w.wait() for w in second] == [0, 0]
    workers = first + second
    ids = Counter(rec["item_id"] for w in workers for rec in w.records())
    failed = {f["item_id"] for w in workers for f in read_jsonl(w.failures) if f["endpoint"] != "item_desc"}
    assert len(ids) + len(failed) == 120  # every product: a record or a failure record
    assert set(ids.values()) == {1}
    assert sb.stats()["billed_twice"] == 0
    assert_nothing_left(redis_server)


def test_a_worker_without_seeds_waits_then_stops_when_the_cluster_is_idle(sandbox, redis_server, tmp_path):
    started = time.monotonic()
    worker = Worker("idle", "shop", sandbox=sandbox, redis=redis_server, cwd=tmp_path)
    assert worker.wait() == 0
    assert time.monotonic() - started >= 1.5
    assert "No work anywhere in the cluster" in worker.log.read_text()

    service = Worker(
        "service", "shop", sandbox=sandbox, redis=redis_server, cwd=tmp_path, settings={"TMAPI_IDLE_TIMEOUT": 0}
    )
    with pytest.raises(subprocess.TimeoutExpired):
        service.wait(timeout=4)
    redis_server.client().rpush("tmapi:shop:seeds", json.dumps({"member_id": SHOP_A, "max_pages": 1}))
    deadline = time.monotonic() + 30
    while service.lines() < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    service.proc.send_signal(signal.SIGINT)
    assert service.wait() == 130
    assert len(service.records()) == 20


def test_redis_unreachable_or_wrong_is_one_line(tmp_path, sandbox):
    env = {"TMAPI_TOKEN": TOKEN}
    for url, expected in (
        ("redis://:s3cret@127.0.0.1:1/0", "cannot reach Redis at redis://:***@127.0.0.1:1/0"),
        ("http://127.0.0.1:6379", "is not a Redis URL"),
    ):
        result = run_scrapy("crawl", "shop", "-a", "member_id=x", "-s", f"REDIS_URL={url}", cwd=tmp_path, env=env)
        assert result.returncode == 2
        assert expected in result.stderr
        assert result.stderr.count("\n") == 1
        assert "s3cret" not in result.stderr


def test_safe_url_masks_the_password():
    assert safe_url("rediss://user:pw@host:6380/1") == "rediss://user:***@host:6380/1"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"


def test_requests_round_trip_through_json():
    crawler = get_crawler(ShopSpider, {"TMAPI_TOKEN": TOKEN, "ADDONS": {"tmapi_crawler.addon.TmapiAddon": 0}})
    spider = ShopSpider.from_crawler(crawler, member_id="m")
    product = ProductItem(item_id=5, title="睡衣", source={"spider": "shop"})
    desc = Request(
        "https://api.tmapi.io/1688/item_desc?item_id=5",
        callback=spider.parse_desc,
        errback=spider.on_error,
        meta={"product": product, "tmapi": {"endpoint": "item_desc", "params": {"item_id": 5}}},
        priority=20,
    )
    post = JsonRequest("https://api.tmapi.io/1688/item_detail_by_url", data={"url": "https://x"}, meta={"n": (1, 2)})
    for request in (desc, post):
        payload = codec.dumps(request.to_dict(spider=spider))
        assert b"\x80" not in payload[:1]
        back = codec.loads(payload)
        from scrapy.utils.request import request_from_dict

        again = request_from_dict(back, spider=spider)
        assert again.url == request.url
        assert again.body == request.body
        assert again.priority == request.priority
        assert again.headers == request.headers
    restored = request_from_dict(codec.loads(codec.dumps(desc.to_dict(spider=spider))), spider=spider)
    assert isinstance(restored.meta["product"], ProductItem)
    assert restored.meta["product"] == product
    assert restored.callback == spider.parse_desc
    with pytest.raises(codec.CodecError):
        codec.loads(b"\x80\x04\x95pickled")
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        codec.dumps({"url": "u", "meta": {"x": object()}})


def test_a_439_pauses_every_worker_until_the_top_up(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox("--shop-size", "200", "--quota", "150", "--latency-ms", "5")
    settings = {"TMAPI_QUOTA_PROBE": 0.2, "TMAPI_CONCURRENCY": 8}

    def top_up_later() -> None:
        while sb.stats()["codes"].get("439", 0) == 0:
            time.sleep(0.05)
        time.sleep(1.0)
        sb.topup(1000)

    helper = threading.Thread(target=top_up_later)
    workers = [
        Worker(f"w{i}", "shop", "-a", f"member_id={SHOP_A}", sandbox=sb, redis=redis_server, cwd=tmp_path,
               settings=settings)
        for i in range(2)
    ]  # fmt: skip
    helper.start()
    assert [w.wait() for w in workers] == [0, 0]
    helper.join()
    stats = assert_each_product_once(sb, workers, 200)
    # Paused together: the calls in flight when the balance ran out, then
    # one probe at a time for the whole cluster.
    assert stats["codes"]["439"] <= 8 + 10
    for w in workers:
        log = w.log.read_text()
        assert "all workers paused" in log
        assert w.stat("tmapi/throttle/pauses") == 1


def test_a_439_that_lasts_stops_every_worker_and_the_restart_resumes(make_sandbox, redis_server, tmp_path):
    sb = make_sandbox("--quota", "60", "--latency-ms", "5")
    settings = {"TMAPI_QUOTA_WAIT": 0.6, "TMAPI_QUOTA_PROBE": 0.1, "TMAPI_CONCURRENCY": 4}
    seed = ("-a", f"member_id={SHOP_A}")
    first = [
        Worker(f"a{i}", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path, settings=settings)
        for i in range(2)
    ]
    assert [w.wait() for w in first] == [4, 4]
    assert all("Top up the balance" in w.log.read_text() for w in first)
    r = redis_server.client()
    assert r.zcard("shop:requests") > 0
    assert r.zcard("shop:leases") == 0
    sb.topup(1000)
    second = Worker("b", "shop", *seed, sandbox=sb, redis=redis_server, cwd=tmp_path, settings=settings)
    assert second.wait() == 0
    ids = Counter(rec["item_id"] for w in [*first, second] for rec in w.records())
    assert len(ids) == 60
    assert set(ids.values()) == {1}
    assert sb.stats()["billed_twice"] == 0
    assert_nothing_left(redis_server)


def test_a_malformed_queue_entry_is_logged_and_skipped(sandbox, redis_server, tmp_path):
    r = redis_server.client()
    # One entry that is not JSON, one whose request is gone.
    r.zadd("shop:requests", {"planted-1": -100, "planted-2": -100})
    r.hset("shop:requests:data", mapping={"planted-1": b"\x80\x04\x95 not a request"})
    worker = Worker("w", "shop", "-a", f"member_id={SHOP_A}", "-a", "max_pages=1", sandbox=sandbox,
                    redis=redis_server, cwd=tmp_path)  # fmt: skip
    assert worker.wait() == 0
    assert len(worker.records()) == 20
    assert "Skipped a request in Redis that is not one of ours" in worker.log.read_text()
    assert worker.stat("tmapi/cluster/skipped") == 2
    assert_nothing_left(redis_server)


def test_a_password_protected_redis(sandbox, tmp_path):
    needs("redis")
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password="s3cret-pw")
    try:
        env = {"TMAPI_TOKEN": TOKEN}
        ok = run_scrapy("cluster", "push", "shop", "-a", f"member_id={SHOP_A}", "-a", "max_pages=1",
                        "-s", f"REDIS_URL={server.url}", cwd=tmp_path, env=env)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        # A seed carries its own options: this worker has none.
        worker = Worker("w", "shop", sandbox=sandbox, redis=server, cwd=tmp_path)
        assert worker.wait() == 0
        assert len(worker.records()) == 20
        wrong = server.url.replace("s3cret-pw", "wrong-pw")
        refused = run_scrapy("crawl", "shop", "-a", "member_id=x", "-s", f"REDIS_URL={wrong}", cwd=tmp_path, env=env)
        assert refused.returncode == 2
        assert "cannot reach Redis at redis://:***@127.0.0.1" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert "wrong-pw" not in refused.stderr
    finally:
        server.stop()
