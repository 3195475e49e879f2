"""Media: product images and videos downloaded through Scrapy's files
pipeline into FILES_STORE and tied to their records.  The sandbox serves
real JPEG images and an MP4 video for its generated products, on its own
host and port (the API's), and counts every file it was asked for."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import TOKEN, SandboxProcess, crawl, minimum_calls, read_jsonl, run_scrapy, starts_process
from tmapi_crawler.media.downloads import looks_like
from tmapi_crawler.records import ProductItem, add_media, media_urls, validate

SHOP = "b2b-sandbox0000"
PRODUCTS, PAGES = 60, 3
FIRST = 700_020_000_000  # the first product of b2b-sandbox0000 (seed 0)
ALL = "main,sku,desc,video"


def media_settings(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"FILES_STORE": str(tmp_path / "files"), "TMAPI_RETRY_BACKOFF": 0.01, **more}


def urls_of(records: list[dict[str, Any]]) -> set[str]:
    return {e["url"] for r in records for e in r["media"]}


# -- the record's entries ---------------------------------------------------------------


def test_entries_list_every_kind_in_order_once():
    record = ProductItem(
        item_id=1,
        main_imgs=["https://a/1.jpg", "//a/2.jpg", "https://a/1.jpg", ""],
        sku_props=[
            {"values": [{"imageUrl": "https://a/s.jpg"}, {"imageUrl": ""}, {"name": "no image"}]},
            {"values": [{"imageUrl": "https://a/s.jpg"}]},
        ],
        detail_imgs=["https://a/d.jpg"],
        video_url="https://v/1.mp4",
    )
    assert media_urls(record, "main") == ["https://a/1.jpg", "https://a/2.jpg", "https://a/1.jpg"]
    add_media(record, ["video", "main", "sku"])
    assert [(e["kind"], e["url"]) for e in record["media"]] == [
        ("main", "https://a/1.jpg"),
        ("main", "https://a/2.jpg"),
        ("sku", "https://a/s.jpg"),
        ("video", "https://v/1.mp4"),
    ]
    assert all(e["path"] is None and e["checksum"] is None for e in record["media"])
    assert add_media(ProductItem(item_id=2, video_url=""), ["video"])["media"] == []


def test_an_image_is_told_from_an_error_page():
    jpeg = Path(__file__).parent.parent / "tmapi_crawler" / "sandbox" / "data" / "video.mp4"
    assert looks_like("video", jpeg.read_bytes())
    assert looks_like("main", b"\xff\xd8\xff\xe0\x00\x10JFIF")
    assert looks_like("sku", b"\x89PNG\r\n\x1a\n....")
    assert looks_like("desc", b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    assert not looks_like("main", b"<html><body>Access denied</body></html>")
    assert not looks_like("video", b"\xff\xd8\xff\xe0")


# -- a crawl with media -------------------------------------------------------------------


@deferred_f_from_coro_f
async def test_every_file_once_tied_to_its_record_never_an_api_call(make_sandbox, tmp_path):
    """The media host is the API's host and port: still no token reaches
    it, no media request counts as a call or against TMAPI_MAX_CALLS, and a
    SKU image shared by products is fetched once."""
    sb = make_sandbox()
    budget = minimum_calls(PAGES, PRODUCTS)
    settings = media_settings(tmp_path, TMAPI_MAX_CALLS=budget)
    result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP, media=ALL)
    assert len(result.records) == PRODUCTS and not result.failures
    stats = sb.stats()
    assert stats["calls"] == result.stats["tmapi/calls"] == budget
    media = stats["media"]
    urls = urls_of(result.records)
    assert media["with_token"] == 0
    assert media["requests"] == media["files"] == len(urls) == result.stats["tmapi/media/downloaded"]
    kinds = Counter(e["kind"] for r in result.records for e in r["media"])
    assert set(kinds) == {"main", "sku", "desc", "video"}
    sku = [e["url"] for r in result.records for e in r["media"] if e["kind"] == "sku"]
    assert len(set(sku)) < len(sku)  # shared by products, downloaded once
    store = tmp_path / "files"
    for record in result.records:
        assert validate(ProductItem(record)) is None
        assert [e["url"] for e in record["media"]] == [
            u for kind in ("main", "sku", "desc", "video") for u in dict.fromkeys(media_urls(record, kind))
        ]
        for entry in record["media"]:
            data = (store / entry["path"]).read_bytes()
            assert looks_like(entry["kind"], data)
            assert entry["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
            assert entry["path"].endswith(".mp4" if entry["kind"] == "video" else ".jpg")


@deferred_f_from_coro_f
async def test_a_stored_file_is_not_downloaded_again_until_it_expires(make_sandbox, tmp_path):
    sb = make_sandbox()
    first = await crawl("shop", sb, tmp_path, media_settings(tmp_path), member_id=SHOP, media="main,video")
    files = sb.stats()["media"]["files"]
    assert files == len(urls_of(first.records))
    sb.reset()
    again = await crawl("shop", sb, tmp_path, media_settings(tmp_path), member_id=SHOP, media="main,video")
    assert sb.stats()["media"]["requests"] == 0
    assert again.stats["tmapi/media/uptodate"] == files
    paths = {r["item_id"]: r["media"] for r in first.records}
    assert all(r["media"] == paths[r["item_id"]] for r in again.records)
    sb.reset()
    await crawl("shop", sb, tmp_path, media_settings(tmp_path, FILES_EXPIRES=0), member_id=SHOP, media="main,video")
    assert sb.stats()["media"]["requests"] == files


@deferred_f_from_coro_f
async def test_a_failed_file_is_a_failure_record_and_the_product_is_still_written(make_sandbox, tmp_path):
    faults = {1: "404", 2: "html", 3: "huge", 4: "slow", 5: "flaky"}
    sb = make_sandbox("--media-fault", ",".join(f"{FIRST + n}:{kind}" for n, kind in faults.items()))
    settings = media_settings(tmp_path, TMAPI_MEDIA_TIMEOUT=1, TMAPI_MEDIA_MAXSIZE=100_000, TMAPI_MEDIA_RETRY_TIMES=1)
    result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP, media="main,desc,video")
    # The accounting rule: every product is a record; the files are failures of their own.
    assert len(result.records) == PRODUCTS
    assert result.stats.get("tmapi/products_failed", 0) == 0
    by_id = {r["item_id"]: r for r in result.records}
    failures: dict[int, list[dict[str, Any]]] = {}
    for failure in result.failures:
        assert failure["endpoint"] == "media" and validate_failure(failure)
        failures.setdefault(failure["item_id"], []).append(failure)
    assert set(failures) == {FIRST + n for n in (1, 2, 3, 4)}
    expected = {
        1: (404, "HTTP 404", 1),
        2: (200, "not an image (text/html", 1),
        3: (None, "over TMAPI_MEDIA_MAXSIZE", 1),
    }
    expected[4] = (None, "DownloadTimeoutError", 2)
    for n, (code, msg, attempts) in expected.items():
        record = by_id[FIRST + n]
        entries = [e for e in record["media"] if e["kind"] != "video"]
        assert all(e["path"] is None and e["checksum"] is None for e in entries)
        assert {f["params"]["url"] for f in failures[FIRST + n] if f["params"]["kind"] != "video"} == {
            e["url"] for e in entries
        }
        for failure in failures[FIRST + n]:
            assert (failure["code"], failure["attempts"]) == (code, attempts)
            assert failure["msg"].startswith(msg)
            assert failure["source"]["member_id"] == SHOP
    # 503 once, then the file: retried, stored.
    assert all(e["path"] for e in by_id[FIRST + 5]["media"])
    assert result.stats["tmapi/media/retries/count"] >= len(by_id[FIRST + 5]["media"])


@deferred_f_from_coro_f
async def test_redirects_are_followed_five_times_at_most(make_sandbox, tmp_path):
    """Scrapy's RedirectMiddleware follows a file's redirects (API calls
    follow none); a file that redirects for ever is a failure after five."""
    sb = make_sandbox("--media-fault", f"{FIRST + 1}:moved,{FIRST + 2}:loop")
    result = await crawl("shop", sb, tmp_path, media_settings(tmp_path), member_id=SHOP, media="main")
    by_id = {r["item_id"]: r for r in result.records}
    assert len(result.records) == PRODUCTS
    moved = by_id[FIRST + 1]["media"]
    assert moved and all(e["path"] and (tmp_path / "files" / e["path"]).is_file() for e in moved)
    looping = [f for f in result.failures if f["item_id"] == FIRST + 2]
    assert looping and {f["params"]["kind"] for f in looping} == {"main"}
    assert all(f["msg"] == "more than 5 redirects" and f["attempts"] == 1 for f in looping)
    assert all(e["path"] is None for e in by_id[FIRST + 2]["media"])
    assert [f["item_id"] for f in result.failures if f["item_id"] != FIRST + 2] == []
    # A moved file: one redirect; a looping one: redirected at its first ask
    # and at each of its five hops, then given up.
    assert sb.stats()["media"]["codes"]["302"] == len(moved) + 6 * len(by_id[FIRST + 2]["media"])


def validate_failure(record: dict[str, Any]) -> bool:
    from tmapi_crawler.records import FailureItem

    return validate(FailureItem(record)) is None


@deferred_f_from_coro_f
async def test_thumbnails_through_the_images_pipeline(make_sandbox, tmp_path):
    sb = make_sandbox("--media-fault", f"{FIRST + 2}:html")
    settings = media_settings(tmp_path, IMAGES_THUMBS={"small": (32, 32)})
    result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP, media="main,video")
    store = tmp_path / "files"
    images = [e for r in result.records for e in r["media"] if e["kind"] == "main" and e["path"]]
    videos = [e for r in result.records for e in r["media"] if e["kind"] == "video"]
    assert images and videos and all(v["path"] for v in videos)
    assert result.stats["tmapi/media/downloaded/main"] == len(images)
    for entry in images:
        assert (store / entry["path"]).read_bytes()[:3] == b"\xff\xd8\xff"
        assert (store / "thumbs" / "small" / Path(entry["path"]).name).is_file()
    assert {f["item_id"] for f in result.failures} == {FIRST + 2}


@deferred_f_from_coro_f
async def test_records_waiting_for_files_are_bounded(make_sandbox, tmp_path):
    """Files far slower than products (one video at a time, 20 ms each):
    API calls wait while TMAPI_MEDIA_MAX_PENDING records wait for their
    files, so that about a hundred products with a video never wait at once."""
    sb = make_sandbox("--media-latency-ms", "20", "--shop-size", "300")
    settings = media_settings(tmp_path, TMAPI_MEDIA_MAX_PENDING=4, TMAPI_CONCURRENCY=4, TMAPI_MEDIA_CONCURRENCY=1)
    result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP, media="video", follow="detail")
    assert len(result.records) == 300 and not result.failures
    with_video = sum(1 for r in result.records if r["media"])
    assert with_video > 80
    assert result.stats["tmapi/media/api_waits"] > 0
    # Beyond the 4: the calls already in Scrapy's downloader when the limit
    # was reached (CONCURRENT_REQUESTS: 2 x 4 + 1) and their answers.
    assert 4 <= result.stats["tmapi/media/pending_max"] <= 4 + 2 * (2 * 4 + 1)
    assert sb.stats()["media"]["max_in_flight"] == 1


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-a", "media=main,thumbnail"], "invalid argument: media='thumbnail': Input should be 'main', 'sku'"),
        (["-a", "media=main"], "media=main needs FILES_STORE"),
        (["-a", "media=main", "-s", "FILES_STORE=http://example.com/files"], "is not a store Scrapy has"),
        (["-a", "media=main", "-s", "FILES_STORE=/proc/no/such"], "cannot be written"),
        (["-a", "media=main", "-s", "FILES_STORE=files", "-s", "IMAGES_THUMBS=small"], "is not thumbnail sizes"),
    ],
)
def test_bad_media_input_is_one_line_before_any_call(sandbox: SandboxProcess, tmp_path, args, message):
    done = run_scrapy(
        "crawl", "shop", "-a", f"member_id={SHOP}", *args, "-s", f"TMAPI_BASE_URL={sandbox.url}",
        "-o", str(tmp_path / "out.jsonl"), cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"Error: {done.stderr.strip().removeprefix('Error: ')}"]
    assert message in done.stderr
    assert sandbox.stats()["calls"] == 0


# -- distributed ---------------------------------------------------------------------------


def test_workers_share_the_files_and_download_each_once(make_sandbox, redis_server, tmp_path):
    """Seeds pushed with media; two workers, one FILES_STORE: every file is
    downloaded once across both (claims in Redis)."""
    from tests.test_cluster import Worker

    products = 120
    sb = make_sandbox("--shop-size", str(products), "--media-latency-ms", "5")
    env = {"TMAPI_TOKEN": TOKEN}
    pushed = run_scrapy(
        "cluster", "push", "shop", "-a", f"member_id={SHOP}", "-a", f"media={ALL}",
        "-s", f"REDIS_URL={redis_server.url}", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    store = tmp_path / "files"
    workers = [
        Worker(f"w{n}", "shop", sandbox=sb, redis=redis_server, cwd=tmp_path, settings={"FILES_STORE": store})
        for n in range(2)
    ]
    assert [w.wait() for w in workers] == [0, 0], [w.log.read_text()[-2000:] for w in workers]
    records = [r for w in workers for r in w.records()]
    assert len(records) == len({r["item_id"] for r in records}) == products
    assert all(w.records() for w in workers)
    media = sb.stats()["media"]
    assert media["asked_twice"] == 0 and media["with_token"] == 0
    assert media["files"] == len(urls_of(records))
    assert all(e["path"] and (store / e["path"]).is_file() for r in records for e in r["media"])
    assert not [f for w in workers for f in read_jsonl(w.failures)]


def test_a_worker_without_files_store_says_so(make_sandbox, redis_server, tmp_path):
    from tests.test_cluster import Worker

    sb = make_sandbox()
    pushed = run_scrapy(
        "cluster", "push", "shop", "-a", f"member_id={SHOP}", "-a", "media=main",
        "-s", f"REDIS_URL={redis_server.url}", cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN},
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    worker = Worker("w", "shop", sandbox=sb, redis=redis_server, cwd=tmp_path)
    assert worker.wait() == 0, worker.log.read_text()[-2000:]
    failures = read_jsonl(worker.failures)
    assert len(failures) == 1 and failures[0]["endpoint"] == "seed"
    assert "media=main needs FILES_STORE" in failures[0]["msg"]
    assert sb.stats()["calls"] == 0


def test_a_worker_without_files_store_handed_products_with_media(make_sandbox, redis_server, tmp_path):
    """A seed with media taken by a worker with FILES_STORE; a second worker
    without it takes some of its products: their files are failure records
    that say what to do, never silently dropped."""
    from tests.test_cluster import Worker

    products = 120
    sb = make_sandbox("--shop-size", str(products), "--media-latency-ms", "5")
    store = tmp_path / "files"
    seeded = ("-a", f"member_id={SHOP}", "-a", "media=main")
    workers = [
        Worker("with", "shop", *seeded, sandbox=sb, redis=redis_server, cwd=tmp_path, settings={"FILES_STORE": store}),
        Worker("without", "shop", sandbox=sb, redis=redis_server, cwd=tmp_path),
    ]
    assert [w.wait() for w in workers] == [0, 0], [w.log.read_text()[-2000:] for w in workers]
    with_store, without = (w.records() for w in workers)
    assert len(with_store) + len(without) == products and without
    assert all(e["path"] for r in with_store for e in r["media"])
    assert all(e["path"] is None for r in without for e in r["media"])
    failures = read_jsonl(workers[1].failures)
    assert sorted(f["item_id"] for f in failures) == sorted(r["item_id"] for r in without if r["media"])
    assert all(f["endpoint"] == "media" and "this worker has no FILES_STORE" in f["msg"] for f in failures)
    assert not read_jsonl(workers[0].failures)


@starts_process
def ftp_store(tmp_path: Path):
    """``(FILES_STORE URL, its directory)``: Twisted's FTP server on a free loopback port."""
    root = tmp_path / "ftp"
    root.mkdir()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "ftp_server.py"), str(root), "media", "secret"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    yield f"ftp://media:secret@127.0.0.1:{port}/store", root / "store"
    server.terminate()
    server.wait(timeout=10)
    server.stdout.close()


@deferred_f_from_coro_f
async def test_files_on_an_ftp_store(make_sandbox, tmp_path, ftp_store):
    """FILES_STORE on another of Scrapy's stores (FTP, as S3 and GCS are
    out of reach here): stored there, checked there on the next crawl."""
    url, root = ftp_store
    sb = make_sandbox()
    first = await crawl("shop", sb, tmp_path, {"FILES_STORE": url}, member_id=SHOP, media="main,video")
    assert not first.failures
    entries = [e for r in first.records for e in r["media"]]
    for entry in entries:
        data = (root / entry["path"]).read_bytes()
        assert entry["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    sb.reset()
    again = await crawl("shop", sb, tmp_path, {"FILES_STORE": url}, member_id=SHOP, media="main,video")
    assert sb.stats()["media"]["requests"] == 0
    assert again.stats["tmapi/media/uptodate"] == len({e["url"] for e in entries})
    before = {r["item_id"]: r["media"] for r in first.records}
    assert {r["item_id"]: r["media"] for r in again.records} == before


@deferred_f_from_coro_f
async def test_ftp_uploads_in_parallel_into_new_directories(ftp_store):
    """Scrapy's FTP store makes a file's directories as it uploads it; two
    uploads making the same one at once used to fail with 550 "exists"."""
    from scrapy.pipelines.files import FilesPipeline
    from scrapy.settings import Settings
    from scrapy.utils.defer import maybe_deferred_to_future
    from twisted.internet.defer import DeferredList

    from tmapi_crawler.media.downloads import _FTPStore

    url, root = ftp_store
    FilesPipeline._update_stores(Settings())
    store = _FTPStore(url)
    uploads = [store.persist_file(f"full/{n % 3}/{n}.jpg", BytesIO(b"%d" % n), None) for n in range(24)]
    results = await maybe_deferred_to_future(DeferredList(uploads, consumeErrors=True))
    assert [ok for ok, _ in results] == [True] * 24, [r for ok, r in results if not ok][:1]
    assert sorted(p.name for p in root.glob("full/*/*.jpg")) == sorted(f"{n}.jpg" for n in range(24))


def test_killed_while_files_are_in_flight(make_sandbox, tmp_path):
    """JOBDIR and SIGKILL while files are downloading: the same command
    resumes; every product once, every file in the store, and no file asked
    for twice but those in flight at the kill."""
    import signal

    from tests.helpers import SCRAPY, scrapy_env

    products = 150
    sb = make_sandbox("--shops", "1", "--shop-size", str(products), "--media-latency-ms", "30")
    cmd = [
        SCRAPY, "crawl", "shop", "-a", f"member_id={SHOP}", "-a", "media=main,video", "-o", "products.jsonl",
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "JOBDIR=crawls/shop-1", "-s", "FILES_STORE=files",
        "-s", "TMAPI_PROGRESS_INTERVAL=0",
    ]  # fmt: skip
    env = scrapy_env({"TMAPI_TOKEN": sb.token})
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sb.stats()["media"]["files"] < 200 and time.monotonic() < deadline:
        assert proc.poll() is None, "the crawl ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_jsonl(tmp_path / "products.jsonl")
    assert sorted(r["item_id"] for r in records) == sorted({r["item_id"] for r in records})
    assert len(records) == products
    assert all(e["path"] and (tmp_path / "files" / e["path"]).is_file() for r in records for e in r["media"])
    media = sb.stats()["media"]
    assert media["files"] == len(urls_of(records))
    assert media["asked_twice"] <= 16  # TMAPI_MEDIA_CONCURRENCY: the files in flight


def test_a_store_password_never_shows_in_the_log(sandbox: SandboxProcess, tmp_path, ftp_store):
    """Scrapy logs its settings as given; the FTP password in FILES_STORE is
    masked there and in every later line."""
    url, root = ftp_store
    done = run_scrapy(
        "crawl", "item", "-a", "item_ids=700020000001", "-a", "media=main", "-s", f"FILES_STORE={url}",
        "-s", f"TMAPI_BASE_URL={sandbox.url}", "-o", str(tmp_path / "out.jsonl"), cwd=tmp_path,
        env={"TMAPI_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'FILES_STORE': 'ftp://media:***@127.0.0.1:" in done.stderr
    assert "secret" not in done.stderr
    assert all(e["path"] and (root / e["path"]).is_file() for e in read_jsonl(tmp_path / "out.jsonl")[0]["media"])


def test_thumbnails_asked_for_on_the_command_line(sandbox: SandboxProcess, tmp_path):
    done = run_scrapy(
        "crawl", "item", "-a", "item_ids=700020000001", "-a", "media=main", "-s", "FILES_STORE=files",
        "-s", 'IMAGES_THUMBS={"small": [32, 32]}', "-s", f"TMAPI_BASE_URL={sandbox.url}",
        "-o", str(tmp_path / "out.jsonl"), cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    entries = read_jsonl(tmp_path / "out.jsonl")[0]["media"]
    assert entries and all((tmp_path / "files" / "thumbs" / "small" / Path(e["path"]).name).is_file() for e in entries)


def test_the_summary_counts_failed_files_apart_from_failed_products(make_sandbox, tmp_path):
    sb = make_sandbox("--media-fault", f"{FIRST + 2}:404,{FIRST + 3}:404")
    done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-a", "max_pages=1", "-a", "media=main",
                      "-O", "out.jsonl", "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"FILES_STORE={tmp_path / 'files'}",
                      "-s", "TMAPI_RETRY_BACKOFF=0.01", cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    failed_files = [f for f in read_jsonl(tmp_path / "failures.jsonl") if f["endpoint"] == "media"]
    assert failed_files
    summary = done.stderr[done.stderr.index("TMAPI summary") :]
    assert re.search(r"^\s+products\s+20$", summary, re.MULTILINE)
    assert re.search(r"^\s+failures\s+0$", summary, re.MULTILINE)  # no product failed
    assert re.search(rf"^\s+media files failed\s+{len(failed_files)} in failures.jsonl", summary, re.MULTILINE)
