"""Files the crawl cannot write: a real tmpfs that fills up, a real mount
remounted read-only, for the real ``scrapy crawl`` against the sandbox.

Mounting needs root (CI runs as root); elsewhere these tests are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import SCRAPY, SandboxProcess, needs, run_scrapy, scrapy_env, starts_process

SHOP = "b2b-sandbox0000"
PRODUCTS = 200
EXIT_FEED_FAILED = 6


@starts_process
def tmpfs(tmp_path: Path):
    """A real 4 MB tmpfs, unmounted after the test."""
    needs("root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill *disk* until *leave* bytes are free; the filler's path."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


@pytest.fixture
def shop(make_sandbox) -> SandboxProcess:
    return make_sandbox("--shops", "1", "--shop-size", str(PRODUCTS), "--latency-ms", "10")


def crawl(sb: SandboxProcess, cwd: Path, feed: Path, *settings: str, timeout: float = 120):
    args = ["crawl", "shop", "-a", f"member_id={SHOP}", "-o", str(feed), "-s", f"TMAPI_BASE_URL={sb.url}"]
    args += ["-s", "TMAPI_PROGRESS_INTERVAL=0"]
    for setting in settings:
        args += ["-s", setting]
    return run_scrapy(*args, cwd=cwd, env={"TMAPI_TOKEN": sb.token}, timeout=timeout)


def whole_records(feed: Path) -> list[dict]:
    """Every line of *feed*, each of which must be whole JSON."""
    return [json.loads(line) for line in feed.read_text(encoding="utf-8").splitlines()]


def summary_count(stderr: str, row: str) -> int:
    found = re.search(rf"^\s+{row}\s+(\d+)", stderr, re.MULTILINE)
    assert found, stderr[-3000:]
    return int(found.group(1))


def assert_stopped_for(done: subprocess.CompletedProcess[str], feed: Path, cause: str) -> list[dict]:
    assert done.returncode == EXIT_FEED_FAILED, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if f"ERROR: cannot write {feed}: {cause}" in line]
    assert len(errors) == 1, done.stderr[-3000:]  # one line, once
    assert "Traceback" not in done.stderr
    assert "(tmapi_feed_failed)" in done.stderr
    assert "FAIL: finish reason" in done.stderr  # a failed monitor
    records = whole_records(feed)
    assert 0 < len(records) < PRODUCTS
    # The summary counts what was written, not what was scraped.
    assert summary_count(done.stderr, "products") == len(records)
    return records


def test_an_unwritable_output_is_refused_before_any_call(shop, tmp_path, tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for settings, named in (
        ((), "the feed"),
        ((f"TMAPI_FAILURES_FILE={tmpfs / 'failures.jsonl'}",), "TMAPI_FAILURES_FILE"),
    ):
        feed = tmpfs / "products.jsonl" if not settings else tmp_path / "products.jsonl"
        done = crawl(shop, tmp_path, feed, *settings)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1
        assert f"Error: cannot write {named}" in done.stderr
        assert "read-only mount" in done.stderr
    assert shop.stats()["calls"] == 0


def test_a_full_disk_stops_the_crawl_with_its_own_exit_code(shop, tmp_path, tmpfs):
    fill(tmpfs, leave=150_000)
    feed = tmpfs / "products.jsonl"
    done = crawl(shop, tmp_path, feed)
    assert_stopped_for(done, feed, "No space left on device (ENOSPC)")


def test_a_full_disk_with_jobdir_resumes_once_space_is_freed(shop, tmp_path, tmpfs):
    filler = fill(tmpfs, leave=150_000)
    feed = tmpfs / "products.jsonl"
    jobdir = f"JOBDIR={tmp_path / 'job'}"
    first = crawl(shop, tmp_path, feed, jobdir)
    written = assert_stopped_for(first, feed, "No space left on device (ENOSPC)")
    assert "the same command resumes where it stopped" in first.stderr
    in_flight = int(re.findall(r"'tmapi/throttle/limit': (\d+)", first.stderr)[-1])
    assert re.search(r"Kept \d+ answers that were paid for", first.stderr), first.stderr[-3000:]
    filler.unlink()  # space freed
    again = crawl(shop, tmp_path, feed, jobdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming the crawl" in again.stderr
    # The products answered but not written were kept in JOBDIR, and not
    # paid for again: what is billed twice is at most what was in flight.
    assert shop.stats()["billed_twice"] <= in_flight
    records = whole_records(feed)
    ids = [r["item_id"] for r in records]
    assert len(ids) == len(set(ids)) == PRODUCTS  # nothing lost, nothing twice
    assert {r["item_id"] for r in written} <= set(ids)
    assert not (tmp_path / "failures.jsonl").exists()


def test_a_mount_that_turns_read_only_mid_crawl(make_sandbox, tmp_path, tmpfs):
    """The failures file goes to a mount that is writable when the crawl
    starts and read-only when the first failure comes (page 8 names a
    product removed from 1688): the crawl stops with the one line."""
    removed = 700020000150  # the 151st product of the shop
    sb = make_sandbox("--shops", "1", "--shop-size", str(PRODUCTS), "--latency-ms", "10", "--removed", str(removed))
    feed, failures = tmp_path / "products.jsonl", tmpfs / "failures.jsonl"
    proc = subprocess.Popen(
        [SCRAPY, "crawl", "shop", "-a", f"member_id={SHOP}", "-o", str(feed), "-s", f"TMAPI_BASE_URL={sb.url}",
         "-s", "TMAPI_PROGRESS_INTERVAL=0", "-s", f"TMAPI_FAILURES_FILE={failures}", "-s", "TMAPI_RETRY_BACKOFF=0.5"],
        cwd=tmp_path, env=scrapy_env({"TMAPI_TOKEN": sb.token}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (feed.exists() and feed.read_bytes().count(b"\n") >= 20):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(Exception):
            proc.kill()
    assert proc.returncode == EXIT_FEED_FAILED, stderr[-3000:]
    assert [line for line in stderr.splitlines() if "ERROR: cannot write" in line] == [
        line for line in stderr.splitlines() if f"ERROR: cannot write {failures}: Read-only file system (EROFS)" in line
    ]
    assert stderr.count(f"ERROR: cannot write {failures}") == 1
    assert "Traceback" not in stderr
    assert not failures.exists()
    records = whole_records(feed)
    assert removed not in {r["item_id"] for r in records}
    assert summary_count(stderr, "failures") == 0  # the failure record was not written


def test_a_full_disk_under_jobdir_stops_and_the_resume_loses_nothing(shop, tmp_path, tmpfs):
    """The crawl's own state (JOBDIR) is on the disk that fills: the crawl
    stops like for a feed (exit 6, one line naming the state), and once
    space is freed the same command resumes from the last commit."""
    filler = fill(tmpfs, leave=120_000)
    feed = tmp_path / "products.jsonl"
    jobdir = f"JOBDIR={tmpfs / 'job'}"
    first = crawl(shop, tmp_path, feed, jobdir)
    assert first.returncode == EXIT_FEED_FAILED, first.stderr[-3000:]
    errors = [line for line in first.stderr.splitlines() if "ERROR: cannot write" in line]
    assert len(errors) == 1, first.stderr[-3000:]
    assert "tmapi-crawl.sqlite" in errors[0] and "full" in errors[0]
    assert "Traceback" not in first.stderr
    filler.unlink()
    again = crawl(shop, tmp_path, feed, jobdir)
    assert again.returncode == 0, again.stderr[-3000:]
    ids = [r["item_id"] for r in whole_records(feed)]
    assert len(ids) == len(set(ids)) == PRODUCTS


@pytest.mark.parametrize("jobdir", [False, True], ids=["plain", "jobdir"])
def test_a_record_that_cannot_be_written_stops_the_crawl_like_a_full_disk(shop, tmp_path, jobdir):
    """Any error writing one record (here an exporter that fails on the 20th,
    as orjson fails on an integer past 64 bits) takes the path of a file
    that cannot be written: one line naming the file and the error, exit 6,
    the summary counts what the file holds; with JOBDIR the same command
    then writes every product once."""
    (tmp_path / "refuse-once").touch()
    feed = tmp_path / "products.jsonl"
    settings = ['FEED_EXPORTERS={"jsonl": "tests.helpers.RefusingExporter"}']
    settings += [f"JOBDIR={tmp_path / 'job'}"] if jobdir else []
    first = crawl(shop, tmp_path, feed, *settings)
    assert first.returncode == EXIT_FEED_FAILED, first.stderr[-3000:]
    errors = [line for line in first.stderr.splitlines() if "ERROR: cannot write" in line]
    assert len(errors) == 1, first.stderr[-3000:]
    assert f"cannot write a record to {feed}: TypeError: Integer exceeds 64-bit range" in errors[0]
    assert "Traceback" not in first.stderr
    written = whole_records(feed)
    assert 19 <= len(written) < PRODUCTS
    summary = re.search(r"^  products\s+(\d+)$", first.stderr, re.MULTILINE)
    assert summary is not None and int(summary.group(1)) == len(written), first.stderr[-3000:]
    if jobdir:
        again = crawl(shop, tmp_path, feed, *settings)
        assert again.returncode == 0, again.stderr[-3000:]
        ids = [r["item_id"] for r in whole_records(feed)]
        assert len(ids) == len(set(ids)) == PRODUCTS
