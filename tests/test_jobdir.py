"""Crash-safe JOBDIR: a real ``scrapy crawl`` process killed with SIGKILL at
several moments, then run again with the same command, loses nothing: every
product once in the feed, every line whole JSON, and the calls billed twice
within the bound (calls in flight at the kill, plus those whose records were
written after the last commit)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import SCRAPY, SandboxProcess, run_scrapy, scrapy_env
from tmapi_crawler.durable.jobdir import COMMIT_INTERVAL, STATE_FILE

SHOP = "b2b-sandbox0000"
PRODUCTS = 200
#: The account's limit and latency of these tests: 8 calls in flight at the
#: most, about 100 calls a second.
LIMIT, LATENCY_MS = 8, 80
#: What a kill may bill twice: the calls in flight, and the calls whose
#: records were written after the last commit (a commit interval of calls at
#: the account's rate; twice that, for a commit that waited a tick).
BOUND = LIMIT + 2 * COMMIT_INTERVAL * LIMIT * 1000 / LATENCY_MS


@pytest.fixture
def shop(make_sandbox) -> SandboxProcess:
    return make_sandbox(
        "--shops", "1", "--shop-size", str(PRODUCTS), "--latency-ms", str(LATENCY_MS), "--concurrency", str(LIMIT)
    )


def command(sb: SandboxProcess, *feed: str) -> list[str]:
    return [
        SCRAPY, "crawl", "shop", "-a", f"member_id={SHOP}", *(feed or ("-o", "products.jsonl")),
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "JOBDIR=crawls/shop-1", "-s", "TMAPI_PROGRESS_INTERVAL=0",
    ]  # fmt: skip


def start(sb: SandboxProcess, cwd: Path, *feed: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(sb, *feed),
        cwd=cwd,
        env=scrapy_env({"TMAPI_TOKEN": sb.token}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen[str], ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        assert proc.poll() is None, "the crawl ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def resume(sb: SandboxProcess, cwd: Path, *feed: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command(sb, *feed), cwd=cwd, env=scrapy_env({"TMAPI_TOKEN": sb.token}),
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_each_product_once(sb: SandboxProcess, feed: Path) -> dict:
    lines = feed.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line whole JSON
    ids = [r["item_id"] for r in records]
    assert len(ids) == len(set(ids)) == PRODUCTS, (len(ids), len(set(ids)))
    assert all(r["detail_html"] is not None for r in records)
    stats = sb.stats()
    assert stats["billed_twice"] <= BOUND, stats["billed_twice_keys"]
    assert not (feed.parent / "failures.jsonl").exists()
    return stats


def calls(sb: SandboxProcess, endpoint: str | None = None) -> int:
    stats = sb.stats()
    if endpoint is None:
        return int(stats["calls"])
    return int(stats["calls_per_endpoint"].get(endpoint, 0))


def test_killed_before_page_1_is_done(shop, tmp_path):
    proc = start(shop, tmp_path)
    kill_when(proc, lambda: calls(shop) >= 1)  # page 1 sent, not answered
    assert shop.stats()["billed"] <= 1
    resume(shop, tmp_path)
    assert_each_product_once(shop, tmp_path / "products.jsonl")


def test_killed_in_the_middle(shop, tmp_path):
    proc = start(shop, tmp_path)
    feed = tmp_path / "products.jsonl"
    kill_when(proc, lambda: feed.exists() and feed.stat().st_size > 100_000)
    killed_at = shop.stats()["billed"]
    assert 0 < killed_at < 2 * PRODUCTS
    resume(shop, tmp_path)
    stats = assert_each_product_once(shop, feed)
    assert stats["billed"] - stats["billed_twice"] == PRODUCTS * 2 + PRODUCTS // 20


def test_killed_while_descriptions_are_in_flight(shop, tmp_path):
    proc = start(shop, tmp_path, "-O", "products.jsonl")  # -O too: the same command resumes
    kill_when(proc, lambda: shop.stats()["in_flight"] >= 4 and calls(shop, "item_desc") >= 20)
    resume(shop, tmp_path, "-O", "products.jsonl")
    assert_each_product_once(shop, tmp_path / "products.jsonl")


def test_three_kills_in_a_row(shop, tmp_path):
    feed = tmp_path / "products.jsonl"
    for billed in (60, 160, 300):
        proc = start(shop, tmp_path)
        kill_when(proc, lambda billed=billed: shop.stats()["billed"] >= billed)
    done = resume(shop, tmp_path)
    assert "Resuming the crawl in" in done.stderr
    stats = assert_each_product_once(shop, feed)
    assert stats["billed_twice"] <= 3 * BOUND


def test_a_half_line_is_cut_and_a_finished_crawl_starts_anew(shop, tmp_path):
    """The same command with a JOBDIR whose crawl finished (the cron line of
    docs/operations.md, the next day) is a new crawl, not a resume that has
    nothing to do; a half line at the feed's end is cut first."""
    resume(shop, tmp_path)
    feed = tmp_path / "products.jsonl"
    with feed.open("ab") as f:
        f.write(b'{"item_id": 1, "tit')  # as a kill mid-write leaves it
    billed = shop.stats()["billed"]
    again = resume(shop, tmp_path)
    assert "cut 19 bytes written after the last commit" in again.stderr
    assert "holds a crawl that finished (finished, " in again.stderr
    assert shop.stats()["billed"] == 2 * billed  # the whole shop again, a new crawl
    records = [json.loads(line) for line in feed.read_text(encoding="utf-8").splitlines()]  # whole lines
    assert len(records) == 2 * PRODUCTS  # -o appends: both days'


def test_a_cron_line_with_a_fixed_jobdir_crawls_every_day(shop, tmp_path):
    """Three "days" of the same command (-O, a fixed JOBDIR): each day a
    whole crawl, each day's feed the day's products only."""
    for day in range(3):
        done = resume(shop, tmp_path, "-O", "products.jsonl")
        assert ("holds a crawl that finished" in done.stderr) == (day > 0)
        assert_each_product_once_today(tmp_path / "products.jsonl")
    assert shop.stats()["billed"] == 3 * (2 * PRODUCTS + PRODUCTS // 20)


def assert_each_product_once_today(feed: Path) -> None:
    ids = [json.loads(line)["item_id"] for line in feed.read_text(encoding="utf-8").splitlines()]
    assert len(ids) == len(set(ids)) == PRODUCTS


def test_a_jobdir_from_scrapys_own_scheduler_is_refused_in_one_line(shop, tmp_path):
    (tmp_path / "crawls" / "shop-1" / "requests.queue").mkdir(parents=True)
    done = run_scrapy(*command(shop)[1:], cwd=tmp_path, env={"TMAPI_TOKEN": shop.token})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "holds a crawl of an older version (Scrapy's own queue, which is not crash-safe)" in done.stderr
    assert shop.stats()["calls"] == 0


def test_a_damaged_or_foreign_state_is_refused_in_one_line(shop, tmp_path):
    state = tmp_path / "crawls" / "shop-1" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_bytes(b"this is not a database" * 100)
    done = run_scrapy(*command(shop)[1:], cwd=tmp_path, env={"TMAPI_TOKEN": shop.token})
    assert done.returncode == 2
    assert "is damaged" in done.stderr and "give a new JOBDIR to start again" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    state.unlink()
    db = sqlite3.connect(state)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('spider', 'category')")
    db.commit()
    db.close()
    done = run_scrapy(*command(shop)[1:], cwd=tmp_path, env={"TMAPI_TOKEN": shop.token})
    assert done.returncode == 2
    assert "holds a crawl of the 'category' spider, not 'shop'" in done.stderr
    assert shop.stats()["calls"] == 0


def test_requests_in_the_state_are_json_and_hold_no_token(shop, tmp_path):
    proc = start(shop, tmp_path)
    kill_when(proc, lambda: shop.stats()["billed"] >= 100)
    db = sqlite3.connect(tmp_path / "crawls" / "shop-1" / STATE_FILE)
    payloads = [row[0] for row in db.execute("SELECT payload FROM requests")]
    db.close()
    assert payloads
    for payload in payloads:
        request = json.loads(payload)
        assert request["url"].startswith(shop.url)
        assert shop.token not in bytes(payload).decode()
    for path in (tmp_path / "crawls").rglob("*"):
        if path.is_file():
            assert shop.token.encode() not in path.read_bytes(), path


def test_a_kill_bills_again_at_most_about_twice_the_calls_in_flight(shop, tmp_path):
    """Acknowledgements commit as soon as as many requests are safe as
    calls may be in flight (not only every COMMIT_INTERVAL): what a kill
    bills twice is the calls in flight plus fewer than as many again."""
    feed = tmp_path / "products.jsonl"
    kills = 0
    for billed in (80, 200, 320):
        proc = start(shop, tmp_path)
        kill_when(proc, lambda billed=billed: shop.stats()["billed"] >= billed)
        kills += 1
    resume(shop, tmp_path)
    stats = assert_each_product_once(shop, feed)
    print(f"billed twice after {kills} kills at {LIMIT} calls in flight: {stats['billed_twice']}")
    assert stats["billed_twice"] <= kills * 2 * LIMIT, stats["billed_twice_keys"]


def test_the_progress_line_carries_on_after_a_resume(shop, tmp_path):
    """A resumed crawl's progress line has the whole crawl's pages and an ETA
    (page 1, which says how many there are, is not read again)."""
    proc = start(shop, tmp_path)
    kill_when(proc, lambda: shop.stats()["billed"] >= 120)
    done = subprocess.run(
        [*command(shop), "-s", "TMAPI_PROGRESS_INTERVAL=0.3"], cwd=tmp_path,
        env=scrapy_env({"TMAPI_TOKEN": shop.token}), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    progress = [line for line in done.stderr.splitlines() if "Progress: " in line]
    assert progress, done.stderr[-2000:]
    assert all(re.search(r"pages \d+/10, products \d+, .* ETA \d+:\d\d:\d\d", line) for line in progress), progress


def test_two_crawls_on_one_jobdir_one_is_refused_and_the_other_is_whole(shop, tmp_path):
    """The cron line of docs/operations.md whose crawl outlasts its interval:
    two identical commands started together.  One crawls (every product
    once, nothing billed twice); the other is refused before any call, in
    one line that names the first's pid, with exit 10.  Three times."""
    for attempt in range(3):
        before = shop.stats()["billed"]
        first, second = start(shop, tmp_path, "-O", "products.jsonl"), start(shop, tmp_path, "-O", "products.jsonl")
        outcomes = {}
        for proc in (first, second):
            _, err = proc.communicate(timeout=180)
            outcomes[proc.pid] = (proc.returncode, err)
        codes = sorted(code for code, _ in outcomes.values())
        assert codes == [0, 10], (attempt, {pid: (code, err[-2000:]) for pid, (code, err) in outcomes.items()})
        winner = next(pid for pid, (code, _) in outcomes.items() if code == 0)
        refused = next(err for code, err in outcomes.values() if code == 10)
        assert refused.strip().count("\n") == 0, refused
        assert f"JOBDIR=crawls/shop-1 is in use by another crawl (pid {winner}): wait for it to end" in refused
        assert_each_product_once_today(tmp_path / "products.jsonl")
        assert shop.stats()["billed"] - before == 2 * PRODUCTS + PRODUCTS // 20  # one crawl's calls, once


def test_a_killed_crawl_leaves_no_lock_behind(shop, tmp_path):
    """The lock is the kernel's (flock): it goes with a SIGKILLed process."""
    proc = start(shop, tmp_path)
    kill_when(proc, lambda: calls(shop) >= 20)
    assert (tmp_path / "crawls" / "shop-1" / "tmapi-crawl.lock").exists()
    resume(shop, tmp_path)
    assert_each_product_once(shop, tmp_path / "products.jsonl")


def test_two_crawls_given_one_output_file_one_is_refused(shop, tmp_path):
    """Two crawls with the same -O file (and no JOBDIR): the second would
    truncate the first's records; it is refused in one line, exit 10, and
    the first's file is whole."""
    cmd = [SCRAPY, "crawl", "shop", "-a", f"member_id={SHOP}", "-O", "out/products.jsonl"]
    cmd += ["-s", f"TMAPI_BASE_URL={shop.url}", "-s", "TMAPI_PROGRESS_INTERVAL=0"]
    env = scrapy_env({"TMAPI_TOKEN": shop.token})
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while calls(shop) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    _, err = first.communicate(timeout=180)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 10, second.stderr[-2000:]
    assert second.stderr.strip().count("\n") == 0
    assert f"out/products.jsonl is in use by another crawl (pid {first.pid})" in second.stderr
    assert_each_product_once_today(tmp_path / "out" / "products.jsonl")
    # Two crawls into different files need no lock of each other's.
    assert "in use" not in err


def test_a_sigterm_keeps_what_was_paid_for_and_the_next_run_resumes(shop, tmp_path):
    """SIGTERM mid-crawl (a reboot, a scheduler's stop): exit 130; the answers
    of the requests in hand are kept in JOBDIR, so that the same command
    resumes (not a new crawl), writes every product once, and pays again at
    most for the calls that were in flight."""
    proc = start(shop, tmp_path)
    deadline = time.monotonic() + 60
    while calls(shop) < 120 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    done = resume(shop, tmp_path)
    assert "holds a crawl that finished" not in done.stderr
    assert "Resuming the crawl" in done.stderr
    stats = assert_each_product_once(shop, tmp_path / "products.jsonl")
    assert stats["billed_twice"] <= LIMIT, stats["billed_twice_keys"]
