"""When what the crawler depends on fails: a real redis-server killed and
started again (with and without its append-only file), a real PostgreSQL
restarted and stopped, for real ``scrapy crawl`` processes crawling the
sandbox over HTTP."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.helpers import SCRAPY, PostgresServer, RedisServer, SandboxProcess, needs, scrapy_env, starts_process
from tests.test_cluster import SHOP_A, Worker, assert_each_product_once, assert_nothing_left
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.url import parse_store_url

#: Exit codes of the two ways a Redis fault ends a worker (docs/operations.md).
EXIT_REDIS_UNAVAILABLE, EXIT_REDIS_STATE_LOST = 7, 8


@starts_process
def redis_aof(tmp_path: Path):
    """A redis-server of this test's own, with its append-only file."""
    needs("redis")
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", persist=True)
    yield server
    with contextlib.suppress(Exception):
        server.kill()


@starts_process
def redis_volatile(tmp_path: Path):
    """A redis-server of this test's own, in memory only."""
    needs("redis")
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    yield server
    with contextlib.suppress(Exception):
        server.kill()


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def feed_records(workers: list[Worker]) -> list[dict]:
    """Every whole record in the workers' feeds (a worker stopped mid-write
    may leave half a line: its request was not acknowledged)."""
    records = []
    for w in workers:
        for line in w.out.read_text().splitlines() if w.out.exists() else ():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def assert_quiet(workers: list[Worker]) -> str:
    """No traceback, no dead loop, no failure record made of a Redis error."""
    logs = "".join(w.log.read_text() for w in workers)
    assert "Traceback" not in logs
    assert "Error calling the" not in logs
    assert "loop failed" not in logs
    assert not any(w.failures.exists() for w in workers)
    return logs


def start_workers(sb: SandboxProcess, redis: RedisServer, cwd: Path, tag: str, **settings) -> list[Worker]:
    seed = ("-a", f"member_id={SHOP_A}")
    values = {"TMAPI_CONCURRENCY": 8, **settings}
    return [
        Worker(f"{tag}{i}", "shop", *(seed if i == 0 else ()), sandbox=sb, redis=redis, cwd=cwd, settings=values)
        for i in range(2)
    ]


def test_redis_killed_and_back_is_a_pause(make_sandbox, redis_aof, tmp_path):
    """Redis dies with SIGKILL mid-crawl and comes back 3 s later (longer than
    the leases, TMAPI_LEASE_TIMEOUT=2): both workers pause, keep what they
    hold, and finish the crawl; every product once, no call billed twice."""
    sb = make_sandbox("--shop-size", "300", "--latency-ms", "20")
    workers = start_workers(sb, redis_aof, tmp_path, "w")
    wait_for(lambda: sum(w.lines() for w in workers) >= 60)
    redis_aof.kill()
    time.sleep(3)
    paused_at = sb.stats()["calls"]
    time.sleep(0.5)
    assert sb.stats()["calls"] == paused_at  # no API call while Redis is away
    redis_aof.restart()
    assert [w.wait() for w in workers] == [0, 0]
    assert_each_product_once(sb, workers, 300)
    logs = assert_quiet(workers)
    assert logs.count("does not answer") == 2  # one line each when it goes...
    assert logs.count("answers again after") == 2  # ...and one when it is back
    assert_nothing_left(redis_aof)


def test_redis_away_too_long_stops_resumably(make_sandbox, redis_aof, tmp_path):
    """Past TMAPI_REDIS_OUTAGE_TIMEOUT each worker stops with its own exit
    code; with Redis back, the same command finishes the crawl: nothing
    lost, and written twice at most what the workers had in hand."""
    sb = make_sandbox("--shop-size", "300", "--latency-ms", "20")
    workers = start_workers(sb, redis_aof, tmp_path, "a", TMAPI_REDIS_OUTAGE_TIMEOUT=2)
    wait_for(lambda: sum(w.lines() for w in workers) >= 60)
    redis_aof.kill()
    started = time.monotonic()
    assert [w.wait() for w in workers] == [EXIT_REDIS_UNAVAILABLE] * 2
    assert time.monotonic() - started < 20
    logs = assert_quiet(workers)
    assert logs.count("did not answer for") == 2
    assert "tmapi_redis_unavailable" in logs
    redis_aof.restart()
    again = start_workers(sb, redis_aof, tmp_path, "b")
    assert [w.wait() for w in again] == [0, 0]
    ids = Counter(r["item_id"] for r in feed_records(workers + again))
    assert len(ids) == 300  # nothing lost
    duplicates = sum(n - 1 for n in ids.values())
    # At most what the two workers had in hand: 8 calls in flight each, and
    # the records written since their last acknowledgement.
    assert duplicates <= 2 * 2 * 8, duplicates
    assert sb.stats()["billed_twice"] <= 2 * 2 * 8 * 2
    assert_nothing_left(redis_aof)


def test_redis_back_without_the_crawl_stops_every_worker(make_sandbox, redis_volatile, tmp_path):
    """Redis restarted empty (no persistence): the workers see that the
    crawl's marker is gone and stop at once, with their own exit code; never
    a freeze, never "finished"."""
    sb = make_sandbox("--shop-size", "300", "--latency-ms", "20")
    workers = start_workers(sb, redis_volatile, tmp_path, "w")
    wait_for(lambda: sum(w.lines() for w in workers) >= 60)
    redis_volatile.kill()
    time.sleep(1)
    redis_volatile.restart()
    assert [w.wait(timeout=30) for w in workers] == [EXIT_REDIS_STATE_LOST] * 2
    logs = assert_quiet(workers)
    assert logs.count("no longer holds this crawl") == 2
    assert "(finished)" not in logs
    # Nothing written to the empty Redis to mislead the next run.
    assert redis_volatile.client().zcard("shop:requests") == 0


def test_cluster_clear_while_workers_run_stops_them(make_sandbox, redis_volatile, tmp_path):
    """The same check when the crawl's keys are deleted under the workers."""
    sb = make_sandbox("--shop-size", "300", "--latency-ms", "20")
    workers = start_workers(sb, redis_volatile, tmp_path, "w")
    wait_for(lambda: sum(w.lines() for w in workers) >= 40)
    redis_volatile.client().flushall()
    assert [w.wait(timeout=30) for w in workers] == [EXIT_REDIS_STATE_LOST] * 2
    assert_quiet(workers)


# -- the catalog store's database -------------------------------------------------------

STORE_SHOP, STORE_PRODUCTS = "b2b-sandbox0000", 400


@starts_process
def pg():
    """A PostgreSQL cluster of this test's own, to restart and stop."""
    needs("postgres")
    server = PostgresServer()
    yield server
    server.stop()


def store_crawl(sb: SandboxProcess, cwd: Path, store: str, *settings: str) -> subprocess.Popen[str]:
    cmd = [SCRAPY, "crawl", "shop", "-a", f"member_id={STORE_SHOP}", "-o", "products.jsonl",
           "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"TMAPI_STORE={store}",
           "-s", "TMAPI_PROGRESS_INTERVAL=0"]  # fmt: skip
    for setting in settings:
        cmd += ["-s", setting]
    return subprocess.Popen(
        cmd, cwd=cwd, env=scrapy_env({"TMAPI_TOKEN": sb.token}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def stored_ids(store: str) -> set[int]:
    db = CatalogDB(parse_store_url(store))
    try:
        return {row[0] for row in db.query("SELECT item_id FROM products")}
    finally:
        db.close()


def test_a_postgresql_restart_is_waited_out(make_sandbox, pg, tmp_path):
    """``pg_ctl restart -m fast`` mid-crawl: the store's writes and lookups
    wait for it and go on; the crawl finishes with exit 0, every product
    once in the feed and in the store, no call billed twice."""
    sb = make_sandbox("--shops", "1", "--shop-size", str(STORE_PRODUCTS), "--latency-ms", "10")
    feed = tmp_path / "products.jsonl"
    proc = store_crawl(sb, tmp_path, pg.url)
    wait_for(lambda: feed.exists() and feed.read_bytes().count(b"\n") >= 50)
    assert pg.pg_ctl("restart", "-m", "fast").returncode == 0
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert "TMAPI_STORE_OUTAGE_TIMEOUT" in stderr and "answers again after" in stderr
    assert "Traceback" not in stderr
    ids = [json.loads(line)["item_id"] for line in feed.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == STORE_PRODUCTS
    assert stored_ids(pg.url) == set(ids)
    stats = sb.stats()
    assert stats["billed_twice"] == 0
    assert stats["billed"] == STORE_PRODUCTS // 20 + 2 * STORE_PRODUCTS


def test_a_store_down_too_long_stops_and_resumes_storing_everything(make_sandbox, pg, tmp_path):
    """PostgreSQL stopped for longer than TMAPI_STORE_OUTAGE_TIMEOUT: the
    crawl stops (exit 5) without acknowledging a product it did not store;
    the same command (JOBDIR), with PostgreSQL back, stores every one."""
    sb = make_sandbox("--shops", "1", "--shop-size", str(STORE_PRODUCTS), "--latency-ms", "10")
    feed = tmp_path / "products.jsonl"
    settings = (f"JOBDIR={tmp_path / 'job'}", "TMAPI_STORE_OUTAGE_TIMEOUT=1.5")
    proc = store_crawl(sb, tmp_path, pg.url, *settings)
    wait_for(lambda: feed.exists() and feed.read_bytes().count(b"\n") >= 50)
    assert pg.pg_ctl("stop", "-m", "fast").returncode == 0
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 5, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "ERROR: " in line and "finish reason" not in line]
    assert len(errors) == 1 and "TMAPI_STORE_OUTAGE_TIMEOUT" in errors[0], errors
    in_flight = in_flight_at_the_stop(stderr)
    kept = re.search(r"Kept (\d+) answers that were paid for", stderr)
    assert kept is not None, stderr[-3000:]
    assert pg.pg_ctl("start").returncode == 0
    again = store_crawl(sb, tmp_path, pg.url, *settings)
    _, stderr = again.communicate(timeout=180)
    assert again.returncode == 0, stderr[-3000:]
    assert f"{kept.group(1)} answers paid for by an earlier run are used instead of calls" in stderr
    ids = [json.loads(line)["item_id"] for line in feed.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == STORE_PRODUCTS
    assert stored_ids(pg.url) == set(ids)  # nothing acknowledged that was not stored
    # The answers of the products fetched but not stored were kept: what is
    # billed twice is at most what was in flight when the crawl stopped.
    assert sb.stats()["billed_twice"] <= in_flight, (sb.stats()["billed_twice"], in_flight)


def in_flight_at_the_stop(stderr: str) -> int:
    """The most calls the gate let be in flight in a crawl (its stats)."""
    found = re.findall(r"'tmapi/throttle/limit': (\d+)", stderr)
    assert found, stderr[-3000:]
    return int(found[-1])


def test_a_store_down_too_long_without_jobdir_says_what_was_paid_for_nothing(make_sandbox, pg, tmp_path):
    """Without JOBDIR nothing can be kept: the stop says how many calls were
    paid for products that were not stored, and that JOBDIR keeps them."""
    sb = make_sandbox("--shops", "1", "--shop-size", str(STORE_PRODUCTS), "--latency-ms", "10")
    feed = tmp_path / "products.jsonl"
    proc = store_crawl(sb, tmp_path, pg.url, "TMAPI_STORE_OUTAGE_TIMEOUT=1.5")
    wait_for(lambda: feed.exists() and feed.read_bytes().count(b"\n") >= 50)
    assert pg.pg_ctl("stop", "-m", "fast").returncode == 0
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 5, stderr[-3000:]
    said = re.search(r"WARNING: (\d+) calls were paid for products that were not written or stored", stderr)
    assert said is not None, stderr[-3000:]
    assert "With -s JOBDIR=DIR their answers are kept" in stderr
    stored = len(stored_ids_after_start(pg))
    billed = sb.stats()["billed"]
    # Every billed detail and description is a stored product's, or counted.
    assert billed - STORE_PRODUCTS // 20 - 2 * stored <= int(said.group(1)) <= billed


def stored_ids_after_start(pg: PostgresServer) -> set[int]:
    assert pg.pg_ctl("start").returncode == 0
    return stored_ids(pg.url)
