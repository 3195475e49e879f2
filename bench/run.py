"""The benchmarks: ``python -m bench`` (see ``--help``).

Each scenario starts its own sandbox (loopback only), runs the real commands
against it, and reads the sandbox's counters: calls, answers per code, billed
calls, and ``busy_seconds`` (from the first call to the last answer).  The
table is printed and written as JSON (``bench/results/latest.json``).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness import ROOT, TOKEN, RedisServer, SandboxProcess

if TYPE_CHECKING:
    from collections.abc import Sequence

BIN = Path(sys.executable).parent


@dataclass
class Row:
    scenario: str
    crawler: str
    products: int
    calls: int
    billed: int
    minimum: int
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)


def project_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMAPI_", "SCRAPY_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["SCRAPY_SETTINGS_MODULE"] = "tmapi_crawler.settings"
    return env


def ours_command(
    sandbox: SandboxProcess,
    *settings: str,
    member_id: str = "b2b-sandbox0000",
    follow: str = "",
    media: str = "",
    prefix: Sequence[str] = (),
) -> list[str]:
    """``scrapy crawl shop`` of the sandbox's first shop, with *settings*;
    *prefix*: a command to run it under (the interpreter given, for valgrind)."""
    scrapy = [*prefix, sys.executable, str(BIN / "scrapy")] if prefix else [str(BIN / "scrapy")]
    cmd = [*scrapy, "crawl", "shop", "-a", f"member_id={member_id}", "-O", "out.jsonl"]
    if follow:
        cmd += ["-a", f"follow={follow}"]
    if media:
        cmd += ["-a", f"media={media}", "-s", "FILES_STORE=files"]
    cmd += ["-s", f"TMAPI_BASE_URL={sandbox.url}", "-s", f"TMAPI_TOKEN={TOKEN}", "-s", "LOG_LEVEL=WARNING"]
    for s in settings:
        cmd += ["-s", s]
    return cmd


def run_ours(
    sandbox: SandboxProcess,
    workdir: Path,
    *settings: str,
    follow: str = "",
    media: str = "",
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    cmd = ours_command(sandbox, *settings, follow=follow, media=media, prefix=prefix)
    return _run(cmd, workdir, project_env())


def run_bare(
    sandbox: SandboxProcess, workdir: Path, *settings: str, member_id: str = "b2b-sandbox0000"
) -> dict[str, Any]:
    """The bare spider with Scrapy's defaults (not this project's settings)."""
    cmd = [str(BIN / "scrapy"), "runspider", str(ROOT / "bench" / "bare_spider.py"), "-O", "out.jsonl"]
    cmd += ["-a", f"base={sandbox.url}", "-a", f"token={TOKEN}", "-a", f"member_id={member_id}"]
    cmd += ["-s", "LOG_LEVEL=WARNING"]
    for s in settings:
        cmd += ["-s", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMAPI_", "SCRAPY_"))}
    return _run(cmd, workdir, env)


def _run(cmd: list[str], workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    return _wait([_start(cmd, workdir, env)])


def _start(cmd: list[str], workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=err)
    return proc, workdir, time.monotonic()


def _wait(started: list[tuple[subprocess.Popen[bytes], Path, float]]) -> dict[str, Any]:
    """Wait for crawler processes; their products, CPU seconds (user +
    system, from the kernel's accounting of each process) and peak RSS."""
    products, cpu, rss, wall = 0, 0.0, 0, 0.0
    for proc, workdir, t0 in started:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = max(wall, time.monotonic() - t0)
        if proc.returncode not in (0, 1):
            stderr = (workdir / "stderr.txt").read_text()[-2000:]
            raise RuntimeError(f"a crawler in {workdir} exited {proc.returncode}: {stderr}")
        out = workdir / "out.jsonl"
        products += sum(1 for _ in out.open()) if out.exists() else 0
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss)  # KiB on Linux
    return {"products": products, "wall": wall, "cpu": cpu, "max_rss_mb": round(rss / 1024, 1)}


def measure(sandbox: SandboxProcess, scenario: str, crawler: str, minimum: int, run: dict[str, Any]) -> Row:
    stats = sandbox.admin("stats")
    sandbox.admin("reset", "POST")
    calls = stats["calls"]
    return Row(
        scenario=scenario,
        crawler=crawler,
        products=run["products"],
        calls=stats["calls"],
        billed=stats["billed"],
        minimum=minimum,
        seconds=stats["busy_seconds"],
        figures={
            "codes": stats["codes"],
            "billed_twice": stats["billed_twice"],
            "max_in_flight": stats["max_in_flight"],
            "cpu_ms_per_call": round(1000 * run["cpu"] / calls, 2) if calls and run["cpu"] else None,
            "max_rss_mb": run["max_rss_mb"],
        },
    )


def run_minimal(sandbox: SandboxProcess, calls: int, threads: int = 16) -> dict[str, Any]:
    """The simplest client there is: *threads* threads, each with one
    keep-alive connection, sending ``item_detail`` calls back to back.  What
    it reaches is the sandbox's practical ceiling."""
    host, port = sandbox.url.removeprefix("http://").split(":")
    ids = iter(range(700_000_100_001, 700_000_100_001 + calls))
    lock = threading.Lock()

    def worker() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                item_id = next(ids, None)
            if item_id is None:
                return
            connection.request("GET", f"/1688/item_detail?apiToken={TOKEN}&item_id={item_id}")
            connection.getresponse().read()

    started = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"products": calls, "wall": time.monotonic() - started, "cpu": 0.0, "max_rss_mb": 0.0}


# -- scenarios --------------------------------------------------------------------


def ceiling(tmp: Path, quick: bool) -> list[Row]:
    """--latency-ms 100 --concurrency 16: at most 160 calls a second."""
    size = 200 if quick else 1000
    pages = -(-size // 20)
    minimum = pages + 2 * size
    ceiling_rate = 16 / 0.1
    rows: list[Row] = []
    with SandboxProcess("--latency-ms", "100", "--concurrency", "16", "--shops", "1", "--shop-size", str(size)) as sb:
        runs = [
            ("ours, limit found alone", lambda d: run_ours(sb, d)),
            ("ours, told TMAPI_CONCURRENCY=16", lambda d: run_ours(sb, d, "TMAPI_CONCURRENCY=16")),
            (
                "bare Scrapy told the limit (16 in flight)",
                lambda d: run_bare(sb, d, "CONCURRENT_REQUESTS=16", "CONCURRENT_REQUESTS_PER_DOMAIN=16"),
            ),
            ("minimal client: 16 threads, http.client", lambda d: run_minimal(sb, minimum)),
            (
                "bare Scrapy + AutoThrottle (defaults, 60 s at most)",
                lambda d: run_bare(sb, d, "AUTOTHROTTLE_ENABLED=True", "CLOSESPIDER_TIMEOUT=60"),
            ),
        ]
        for name, fn in runs:
            row = measure(sb, "ceiling", name, minimum, fn(tmp / f"ceiling-{len(rows)}"))
            rate = row.billed / row.seconds if row.seconds else 0.0
            n503 = row.figures["codes"].get("503", 0)
            row.figures.update(
                {
                    "billed_per_second": round(rate, 1),
                    "share_of_ceiling": round(rate / ceiling_rate, 3),
                    "share_503": round(n503 / row.calls, 4) if row.calls else 0.0,
                }
            )
            rows.append(row)
    return rows


def cpu(tmp: Path, quick: bool) -> list[Row]:
    """Latency 0, no limit: CPU per call of our whole crawl (validation,
    throttling, records, feed export) next to the bare spider's."""
    size = 200 if quick else 1000
    minimum = -(-size // 20) + 2 * size
    with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
        ours = measure(sb, "cpu", "ours (defaults)", minimum, run_ours(sb, tmp / "cpu-ours"))
        bare = measure(sb, "cpu", "bare Scrapy spider (Scrapy's defaults)", minimum, run_bare(sb, tmp / "cpu-bare"))
    ratio = ours.figures["cpu_ms_per_call"] / bare.figures["cpu_ms_per_call"]
    ours.figures["cpu_vs_bare"] = round(ratio, 2)
    return [ours, bare]


def memory(tmp: Path, quick: bool) -> list[Row]:
    """Peak RSS of one process crawling 1,000 and 100,000 products
    (``follow=detail``: 105,000 calls fit the time the benchmarks have)."""
    sizes = (1000, 10_000) if quick else (1000, 100_000)
    rows = []
    for size in sizes:
        with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
            run = run_ours(sb, tmp / f"memory-{size}", "TMAPI_PROGRESS_INTERVAL=0", follow="detail")
            rows.append(measure(sb, "memory", f"ours, {size:,} products, follow=detail", -(-size // 20) + size, run))
    rows[-1].figures["rss_vs_smaller"] = round(rows[-1].figures["max_rss_mb"] / rows[0].figures["max_rss_mb"], 2)
    return rows


def bill(tmp: Path, quick: bool) -> list[Row]:
    """Billed calls over the minimum, with 10% faults (417/499/500, as the
    HTTP status or in the body)."""
    size = 200 if quick else 1000
    minimum = -(-size // 20) + 2 * size
    flags = ("--shops", "1", "--shop-size", str(size), "--fault-rate", "0.1", "--error-style", "mixed")
    with SandboxProcess(*flags) as sb:
        run = run_ours(sb, tmp / "bill", "TMAPI_RETRY_BACKOFF=0.05", "TMAPI_RETRY_TIMES=5")
        row = measure(sb, "bill", "ours, 10% faults", minimum, run)
    row.figures["calls_over_minimum"] = round(row.calls / minimum, 2)
    return [row]


def workers(tmp: Path, quick: bool) -> list[Row]:
    """1, 2 and 4 workers sharing one crawl through Redis: against the
    limit of 16 calls in flight (latency 100 ms: 160 calls/s), and with no
    limit and no latency (what this machine's cores allow)."""
    size = 200 if quick else 1000
    minimum = -(-size // 20) + 2 * size
    rows = []
    with tempfile.TemporaryDirectory(prefix="tmapi-redis-") as redis_dir:
        redis = RedisServer(Path(redis_dir))
        try:
            for limited in (True, False):
                flags = ("--latency-ms", "100", "--concurrency", "16") if limited else ()
                with SandboxProcess("--shops", "1", "--shop-size", str(size), *flags) as sb:
                    for n in (1, 2, 4):
                        redis.client().flushall()
                        settings = (f"REDIS_URL={redis.url}", "TMAPI_IDLE_TIMEOUT=1", "TMAPI_PROGRESS_INTERVAL=0")
                        procs = [
                            _start(ours_command(sb, *settings), tmp / f"workers-{limited}-{n}-{i}", project_env())
                            for i in range(n)
                        ]
                        run = _wait(procs)
                        label = f"{n} worker{'s' if n > 1 else ''}, " + ("limit 16 shared" if limited else "no limit")
                        row = measure(sb, "workers", label, minimum, run)
                        rate = row.billed / row.seconds if row.seconds else 0.0
                        row.figures["billed_per_second"] = round(rate, 1)
                        if limited:
                            row.figures["share_of_ceiling"] = round(rate / 160, 3)
                            row.figures["share_503"] = round(row.figures["codes"].get("503", 0) / row.calls, 4)
                        rows.append(row)
        finally:
            redis.stop()
    return rows


def jobdir(tmp: Path, quick: bool) -> list[Row]:
    """Crash-safe JOBDIR: CPU per call with it and without (latency 0, no
    limit); the share of the account's limit with it and without (told the
    limit of 16, latency 100 ms); and the state's size per pending request
    (a budget stop leaves the shop's detail requests pending)."""
    size = 200 if quick else 1000
    minimum = -(-size // 20) + 2 * size
    rows: list[Row] = []
    with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
        without = measure(sb, "jobdir", "ours, CPU, no JOBDIR", minimum, run_ours(sb, tmp / "jobdir-cpu-0"))
        run = run_ours(sb, tmp / "jobdir-cpu-1", "JOBDIR=job")
        with_ = measure(sb, "jobdir", "ours, CPU, JOBDIR", minimum, run)
        with_.figures["cpu_vs_without"] = round(
            with_.figures["cpu_ms_per_call"] / without.figures["cpu_ms_per_call"], 2
        )
        rows += [without, with_]
        budget = 2 * -(-size // 20)
        workdir = tmp / "jobdir-size"
        run = run_ours(sb, workdir, "JOBDIR=job", f"TMAPI_MAX_CALLS={budget}")
        row = measure(sb, "jobdir", f"ours, JOBDIR, budget stop after {budget} calls", minimum, run)
        state = workdir / "job" / "tmapi-crawl.sqlite"
        db = sqlite3.connect(state)
        pending = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        db.close()
        state_bytes = sum(p.stat().st_size for p in state.parent.glob("tmapi-crawl.sqlite*"))
        row.figures.update({"pending": pending, "bytes_per_pending": round(state_bytes / max(pending, 1))})
        rows.append(row)
    flags = ("--latency-ms", "100", "--concurrency", "16", "--shops", "1", "--shop-size", str(size))
    with SandboxProcess(*flags) as sb:
        for name, settings in (("no JOBDIR", ()), ("JOBDIR", ("JOBDIR=job",))):
            workdir = tmp / f"jobdir-limit-{len(rows)}"
            run = run_ours(sb, workdir, "TMAPI_CONCURRENCY=16", *settings)
            row = measure(sb, "jobdir", f"ours, limit 16 told, {name}", minimum, run)
            rate = row.billed / row.seconds if row.seconds else 0.0
            row.figures["share_of_ceiling"] = round(rate / 160, 3)
            rows.append(row)
    return rows


def _feed_of(path: Path, products: int) -> None:
    """A JSON-lines feed of *products* records: the documented product with
    its documented description (the sanitizer's real work), its id changed."""
    data = ROOT / "tmapi_crawler" / "sandbox" / "data"
    doc = json.loads((data / "item_detail.json").read_text("utf-8"))["data"]
    desc = json.loads((data / "item_desc.json").read_text("utf-8"))["data"]
    doc |= {"detail_imgs": desc["detail_imgs"], "detail_html": desc["detail_html"], "listing": None, "language": "zh"}
    doc |= {"source": {"spider": "item", "input": "1"}, "crawled_at": "2026-11-23T10:00:00Z"}
    with path.open("w", encoding="utf-8") as out:
        for n in range(products):
            out.write(json.dumps({**doc, "item_id": 10**11 + n}, ensure_ascii=False) + "\n")


def export(tmp: Path, quick: bool) -> list[Row]:
    """``scrapy export`` of a saved feed, per format: products per second and
    peak memory, for 1,000 and 10,000 products (memory must not grow: it
    streams)."""
    sizes = (200, 2000) if quick else (1000, 10_000)
    rows = []
    for size in sizes:
        feed = tmp / f"export-{size}.jsonl"
        _feed_of(feed, size)
        # The shop formats' descriptions sanitized (the default) and raw: the sanitizer's cost.
        for name, html in (
            ("skus", ""),
            ("shopify", "raw"),
            ("shopify", ""),
            ("woocommerce", "raw"),
            ("woocommerce", ""),
        ):
            cmd = [str(BIN / "scrapy"), "export", name, str(feed), "-O", str(tmp / f"out-{name}-{size}.csv")]
            cmd += ["-s", f"TMAPI_EXPORT_HTML={html}"] if html else []
            run = _run(cmd, tmp / f"export-{name}{html}-{size}", project_env())
            what = f"scrapy export {name}{' (raw HTML)' if html else ''}, {size:,} products"
            row = Row("export", what, size, 0, 0, 0, run["wall"])
            row.figures = {
                "products_per_second": round(size / run["wall"]),
                "cpu_seconds": round(run["cpu"], 2),
                "max_rss_mb": run["max_rss_mb"],
            }
            rows.append(row)
    return rows


def store(tmp: Path, quick: bool) -> list[Row]:
    """The catalog store on a 1,000-product shop: the calls of a first crawl,
    of the same crawl again, after 5% of the prices changed, and with
    TMAPI_DETAIL_MAX_AGE=0; CPU per call of a first crawl with each store
    against none (latency 0, no limit); and the share of the account's limit
    with and without a store (told the limit of 16, latency 100 ms)."""
    from tests.harness import PostgresServer

    size = 200 if quick else 1000
    pages = -(-size // 20)
    minimum = pages + 2 * size
    rows: list[Row] = []
    pg = PostgresServer()
    try:
        stores = {"SQLite": str(tmp / "catalog.sqlite"), "PostgreSQL": pg.database("bench_calls")}
        with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
            for name, url in stores.items():
                runs = [
                    ("first crawl", (), None),
                    ("the same crawl again", (), None),
                    ("after 5% of prices changed", (), 0.05),
                    ("TMAPI_DETAIL_MAX_AGE=0", ("TMAPI_DETAIL_MAX_AGE=0",), None),
                ]
                for label, extra, revise in runs:
                    if revise is not None:
                        changed = sb.revise(revise)["changed"]
                    workdir = tmp / f"store-{name}-{len(rows)}"
                    run = run_ours(sb, workdir, f"TMAPI_STORE={url}", *extra)
                    row = measure(sb, "store", f"{name}: {label}", minimum, run)
                    if revise is not None:
                        row.figures["products_changed"] = changed
                    changes = workdir / "changes.jsonl"
                    row.figures["change_records"] = sum(1 for _ in changes.open()) if changes.exists() else 0
                    rows.append(row)
        with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
            base = measure(sb, "store", "CPU, first crawl, no store", minimum, run_ours(sb, tmp / "store-cpu-0"))
            rows.append(base)
            cpu_stores = {"SQLite": str(tmp / "cpu.sqlite"), "PostgreSQL": pg.database("bench_cpu")}
            for name, url in cpu_stores.items():
                run = run_ours(sb, tmp / f"store-cpu-{name}", f"TMAPI_STORE={url}")
                row = measure(sb, "store", f"CPU, first crawl, {name}", minimum, run)
                row.figures["cpu_vs_no_store"] = round(
                    row.figures["cpu_ms_per_call"] / base.figures["cpu_ms_per_call"], 2
                )
                rows.append(row)
        flags = ("--latency-ms", "100", "--concurrency", "16", "--shops", "1", "--shop-size", str(size))
        with SandboxProcess(*flags) as sb:
            limit_stores: dict[str, str | None] = {
                "no store": None,
                "SQLite": str(tmp / "limit.sqlite"),
                "PostgreSQL": pg.database("bench_l"),
            }
            for name, where in limit_stores.items():
                settings = ("TMAPI_CONCURRENCY=16", *((f"TMAPI_STORE={where}",) if where else ()))
                run = run_ours(sb, tmp / f"store-limit-{name}", *settings)
                row = measure(sb, "store", f"limit 16 told, first crawl, {name}", minimum, run)
                rate = row.billed / row.seconds if row.seconds else 0.0
                row.figures["share_of_ceiling"] = round(rate / 160, 3)
                rows.append(row)
    finally:
        pg.stop()
    return rows


def _crawl_stats(workdir: Path) -> dict[str, Any]:
    """The crawl's own stats, from the dump at the end of its log (LOG_FILE=crawl.log, LOG_LEVEL=INFO)."""
    text = (workdir / "crawl.log").read_text()
    dump = text[text.rindex("Dumping Scrapy stats:") :]
    stats: dict[str, Any] = {}
    for line in dump.splitlines()[1:]:
        key, _, value = line.strip(" {},").partition("': ")
        if key.startswith("'") and value.replace(".", "", 1).isdigit():
            stats[key.strip("'")] = float(value) if "." in value else int(value)
    return stats


def media(tmp: Path, quick: bool) -> list[Row]:
    """Media files (-a media=...): downloads per second and CPU per file
    on the sandbox (latency 0); API throughput at the account's limit (told
    the limit of 16; calls of 100 ms and of 1 s) with and without media
    (files at 20 ms each); peak RSS and the records waiting for their
    files, 10,000 products with and without media."""
    size = 200 if quick else 1000
    pages = -(-size // 20)
    minimum = pages + 2 * size
    log = ("LOG_LEVEL=INFO", "LOG_FILE=crawl.log", "TMAPI_PROGRESS_INTERVAL=0")
    rows: list[Row] = []
    with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
        base = measure(sb, "media", "latency 0, no media", minimum, run_ours(sb, tmp / "media-0", *log))
        rows.append(base)
        for kinds in ("main,sku,desc,video",):
            workdir = tmp / f"media-{kinds}"
            run = run_ours(sb, workdir, *log, media=kinds)
            files = sb.admin("stats")["media"]
            row = measure(sb, "media", f"latency 0, media={kinds}", minimum, run)
            extra_cpu = run["cpu"] - base.figures["cpu_ms_per_call"] * base.calls / 1000
            row.figures.update(
                {
                    "files": files["files"],
                    "file_requests": files["requests"],
                    "files_per_second": round(files["files"] / run["wall"], 1),
                    "cpu_ms_per_file": round(1000 * extra_cpu / files["files"], 3) if files["files"] else None,
                    "mb": round(files["bytes"] / 2**20, 1),
                }
            )
            rows.append(row)
    # The account's limit: the sandbox's ceiling (16 in flight, 100 ms a
    # call: 160 calls a second, ten times what TMAPI answers), then TMAPI's
    # own pace (1 s a call: 16 a second).  Files take 20 ms each.
    limits: list[tuple[str, str, int, tuple[str, ...]]] = [
        ("limit 16, 100 ms", "100", size, ("", "video", "main,sku,desc,video"))
    ]
    limits.append(("limit 16, 1 s", "1000", 100 if quick else 300, ("", "main,sku,desc,video")))
    for label, latency, products, kinds_list in limits:
        flags = ("--latency-ms", latency, "--concurrency", "16", "--shops", "1", "--shop-size", str(products))
        with SandboxProcess(*flags, "--media-latency-ms", "20") as sb:
            for kinds in kinds_list:
                workdir = tmp / f"media-limit-{latency}-{kinds or 'none'}"
                run = run_ours(sb, workdir, "TMAPI_CONCURRENCY=16", media=kinds)
                files = sb.admin("stats")["media"]["files"]
                need = -(-products // 20) + 2 * products
                row = measure(sb, "media", f"{label}, {f'media={kinds}' if kinds else 'no media'}", need, run)
                rate = row.billed / row.seconds if row.seconds else 0.0
                row.figures.update({"share_of_ceiling": round(rate / (16 / (int(latency) / 1000)), 3), "files": files})
                rows.append(row)
    big = 2000 if quick else 10_000
    with SandboxProcess("--shops", "1", "--shop-size", str(big), "--media-latency-ms", "5") as sb:
        for label, kinds in (("no media", ""), ("media=main,video", "main,video")):
            workdir = tmp / f"media-memory-{label}"
            run = run_ours(sb, workdir, *log, follow="detail", media=kinds)
            files = sb.admin("stats")["media"]["files"]
            row = measure(sb, "media", f"{big:,} products, follow=detail, {label}", -(-big // 20) + big, run)
            stats = _crawl_stats(workdir)
            row.figures.update(
                {
                    "files": files,
                    "pending_max": stats.get("tmapi/media/pending_max", 0),
                    "api_waits": stats.get("tmapi/media/api_waits", 0),
                    "wall_s": round(run["wall"], 1),
                }
            )
            rows.append(row)
    return rows


def _history(db: Any, products: int, changes: int, *, seed: int = 5) -> None:
    """Fill the store *db* with *products* synthetic products (two SKUs
    each, through the store's write path) and *changes* change records
    spread over a year, as daily crawls would leave them."""
    import random
    from datetime import UTC, datetime, timedelta

    from tmapi_crawler.store.write import insert_changes, write

    rng = random.Random(seed)
    start = datetime(2025, 12, 1, tzinfo=UTC)
    for first in range(0, products, 2000):
        batch = []
        for n in range(first, min(first + 2000, products)):
            item_id = 800_000_000_000 + n
            skus = [{"skuid": f"{item_id}{k}", "sale_price": f"{10 + n % 90}.{k}0", "stock": 100,
                     "props_names": f"颜色:色{k}"} for k in range(2)]  # fmt: skip
            batch.append({"item_id": item_id, "title": f"样品睡衣 #{n}", "skus": skus, "stock": 200,
                          "price_info": {"price": skus[0]["sale_price"]}, "language": "zh",
                          "detail_fetched_at": start.isoformat(), "desc_fetched_at": None,
                          "source": {"spider": "shop"}, "listing": None})  # fmt: skip
        write(db, batch)
    kinds = ["price"] * 6 + ["stock"] * 10 + ["sold_out", "back_in_stock", "new", "delisted", "sku_added", "title"]
    made = 0
    while made < changes:
        rows = []
        for _ in range(min(20_000, changes - made)):
            n = rng.randrange(products)
            item_id, kind = 800_000_000_000 + n, rng.choice(kinds)
            at = (start + timedelta(seconds=rng.randrange(365 * 86400))).isoformat()
            old = rng.randrange(1000, 9000) / 100
            new = round(old * rng.uniform(0.7, 1.3), 2) if kind == "price" else rng.randrange(200)
            rows.append({"change": kind, "item_id": item_id, "skuid": f"{item_id}{rng.randrange(2)}",
                         "field": "price" if kind == "price" else "stock", "old": old, "new": new,
                         "detected_at": at, "source": None})  # fmt: skip
        insert_changes(db, rows)
        made += len(rows)


def report(tmp: Path, quick: bool) -> list[Row]:
    """``scrapy catalog report`` over a year of history: a store of 10,000
    products and 100,000 change rows, then 100,000 and a million (SQLite):
    the command's wall time, CPU and peak RSS, and the page's size."""
    from tmapi_crawler.store.db import CatalogDB
    from tmapi_crawler.store.url import parse_store_url

    sizes = [(2_000, 20_000), (10_000, 100_000)] if quick else [(10_000, 100_000), (100_000, 1_000_000)]
    rows: list[Row] = []
    for products, changes in sizes:
        store = tmp / f"report-{products}.sqlite"
        filled = time.monotonic()
        db = CatalogDB(parse_store_url(str(store)))
        try:
            _history(db, products, changes)
        finally:
            db.close()
        fill_s = time.monotonic() - filled
        workdir = tmp / f"report-{products}"
        workdir.mkdir()
        cmd = [str(BIN / "scrapy"), "catalog", "report", "--store", str(store), "--top", "20",
               "--item-id", "800000000007", "-O", "report.html"]  # fmt: skip
        run = _run(cmd, workdir, project_env())
        page = workdir / "report.html"
        rows.append(
            Row("report", f"report: {products:,} products, {changes:,} change rows", products, 0, 0, 0,
                round(run["wall"], 1),
                {"cpu_s": round(run["cpu"], 1), "max_rss_mb": run["max_rss_mb"],
                 "page_kb": page.stat().st_size // 1024 if page.exists() else 0,
                 "store_mb": store.stat().st_size // 2**20, "fill_s": round(fill_s)}),
        )  # fmt: skip
    return rows


def store_scale(tmp: Path, quick: bool) -> list[Row]:
    """The catalog store as the catalog grows (latency 0, no limit): a first
    crawl, the same crawl again (unchanged), and one after 5% of the prices
    changed, at 10,000 and 100,000 products, with no store, SQLite and
    PostgreSQL: CPU, wall, peak RSS, calls, the store threads' CPU and the
    most records that waited for the writer.  Each store's three crawls
    have a sandbox of their own: the crawler's CPU grows with the crawls a
    sandbox served before (measured: a first crawl 57 s as a sandbox's
    first, 70 s as its second), which made the first crawls' ratios depend
    on their order.

    The three first crawls run one after the other, then the re-crawls: a
    store's first crawl is compared with the no-store crawl next to it, not
    with one half an hour away.  This machine's speed moves in minutes (at
    100k the same no-store crawl took 731 s and 852 s of CPU within one
    run, and a collection of the youngest generation 0.65 ms in one crawl and
    1.0 ms in the next), so each ratio is of two crawls of one round, and
    the ratio reported is the median of the rounds'.

    ``BENCH_REPEAT=N`` runs the whole set N times, each time with new stores
    and in the other order (no store first, then last), and reports each
    row's median run (``cpu_s_runs``: all of them) and the median of each
    round's ratio (``cpu_vs_no_store_runs``, ``cpu_vs_first_runs``: each
    round's).  One run's CPU moves by up to 10% on a shared machine, and a
    ratio of two runs minutes apart by more.

    ``BENCH_INSTRUCTIONS=1`` runs each crawl under valgrind (cachegrind,
    without its cache simulation) and reports the instructions it ran
    (``instructions_g``), which two runs of one crawl repeat within 0.2%; the
    ratios are then of instructions.  A crawl runs about 30 times slower:
    ``BENCH_SIZES=1000`` takes about 6 minutes.  Threads run one at a time
    under valgrind, so what threads cost each other (the GIL taken in turns)
    is in the CPU figures only."""
    from tests.harness import PostgresServer

    sizes: tuple[int, ...] = (1_000, 10_000) if quick else (10_000, 100_000)
    if os.environ.get("BENCH_SIZES"):
        sizes = tuple(int(n) for n in os.environ["BENCH_SIZES"].split(","))
    repeat = max(1, int(os.environ.get("BENCH_REPEAT", "1")))
    prefix = _valgrind() if os.environ.get("BENCH_INSTRUCTIONS") == "1" else ()
    rows: list[Row] = []
    pg = PostgresServer()
    try:
        for size in sizes:
            pages = -(-size // 20)
            minimum = pages + 2 * size
            rounds: list[dict[tuple[str, str], Row]] = []
            for n in range(repeat):
                stores: list[tuple[str, str | None]] = [
                    ("no store", None),
                    ("SQLite", str(tmp / f"scale-{size}-{n}.sqlite")),
                    ("PostgreSQL", pg.database(f"bench_scale_{size}_{n}")),
                ]
                if n % 2:
                    stores.reverse()
                done: dict[tuple[str, str], Row] = {}
                with contextlib.ExitStack() as stack:
                    # A sandbox of its own for each store's crawls: the crawler's
                    # CPU grows with the crawls a sandbox served before (docs/performance.md).
                    sandboxes = {
                        name: stack.enter_context(SandboxProcess("--shops", "1", "--shop-size", str(size)))
                        for name, _ in stores
                    }
                    steps: list[tuple[str, str | None, str, float | None]] = [
                        (name, url, "first crawl", None) for name, url in stores
                    ]
                    for label, revise in (("unchanged re-crawl", None), ("5% revised re-crawl", 0.05)):
                        steps += [(name, url, label, revise) for name, url in stores if url is not None]
                    for name, url, label, revise in steps:
                        sb = sandboxes[name]
                        if revise is not None:
                            sb.revise(revise)
                        workdir = tmp / f"scale-{size}-{n}-{name}-{label[:5]}"
                        crawler = f"{size:,}: {name}, {label}"
                        done[(name, label)] = _store_scale_run(sb, workdir, url, crawler, minimum, prefix)
                rounds.append(done)
            rows += _median_runs(rounds)
    finally:
        pg.stop()
    return rows


def _cost(row: Row) -> float:
    """What :func:`store_scale` compares: a crawl's instructions when they
    were counted, else its CPU seconds."""
    return float(row.figures.get("instructions_g", row.figures["cpu_s"]))


def _median_runs(rounds: list[dict[tuple[str, str], Row]]) -> list[Row]:
    """Each crawl's median run (the upper one of two), with the median of
    each round's ratios: a store's first crawl to the no-store crawl of its
    round, a re-crawl to its store's first crawl of its round (of
    instructions when they were counted, else of CPU seconds:
    ``instructions_vs_first``, ``cpu_vs_no_store``...; ``..._runs``: each
    round's)."""
    rows: list[Row] = []
    for key in rounds[0]:
        name, label = key
        costs = [_cost(done[key]) for done in rounds]
        row = sorted((done[key] for done in rounds), key=_cost)[len(rounds) // 2]
        what = "instructions" if "instructions_g" in row.figures else "cpu"
        if len(rounds) > 1:
            row.figures["instructions_g_runs" if what == "instructions" else "cpu_s_runs"] = [
                round(c, 3 if what == "instructions" else 1) for c in costs
            ]
        if label != "first crawl":
            base, ratio, digits = (name, "first crawl"), f"{what}_vs_first", 3
        elif name != "no store":
            base, ratio, digits = ("no store", label), f"{what}_vs_no_store", 3 if what == "instructions" else 2
        else:
            rows.append(row)  # what the others are compared with
            continue
        ratios = [cost / _cost(done[base]) for cost, done in zip(costs, rounds, strict=True)]
        row.figures[ratio] = round(statistics.median_high(ratios), digits)
        if len(rounds) > 1:
            row.figures[f"{ratio}_runs"] = [round(r, digits) for r in ratios]
        rows.append(row)
    return rows


def _valgrind() -> list[str]:
    """The command a crawl runs under to count its instructions."""
    if shutil.which("valgrind") is None:
        raise SystemExit("BENCH_INSTRUCTIONS=1 needs valgrind: install it (apt-get install valgrind) or leave it unset")
    return ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            "--log-file=valgrind.txt"]  # fmt: skip


def _instructions(workdir: Path) -> float:
    """The instructions valgrind counted for the crawl in *workdir*, in G."""
    text = (workdir / "valgrind.txt").read_text()
    found = re.search(r"I\s+refs:\s+([\d,]+)", text)
    if found is None:
        raise RuntimeError(f"valgrind counted no instructions in {workdir}: {text[-500:]}")
    return int(found.group(1).replace(",", "")) / 1e9


def _store_scale_run(
    sb: SandboxProcess, workdir: Path, url: str | None, crawler: str, minimum: int, prefix: Sequence[str]
) -> Row:
    """One crawl of :func:`store_scale` (*url*: its store, ``None`` for none;
    *minimum*: the calls a first crawl needs; *prefix*: valgrind's command,
    to count its instructions)."""
    settings = ["LOG_FILE=crawl.log", "LOG_LEVEL=INFO", "TMAPI_REMEMBER_LIMIT=false"]
    if url is not None:
        settings.append(f"TMAPI_STORE={url}")
    run = run_ours(sb, workdir, *settings, prefix=prefix)
    row = measure(sb, "store-scale", crawler, minimum, run)
    if prefix:
        row.figures["instructions_g"] = round(_instructions(workdir), 3)
    stats = _crawl_stats(workdir)
    row.figures["cpu_s"] = round(run["cpu"], 1)
    row.figures["wall_s"] = round(run["wall"], 1)
    row.figures["cpu_ms_per_product"] = round(1000 * run["cpu"] / max(run["products"], 1), 2)
    for key in ("max_waiting", "cpu_seconds/write", "cpu_seconds/read", "detail_from_store"):
        if f"tmapi/store/{key}" in stats:
            row.figures[key.replace("/", "_")] = stats[f"tmapi/store/{key}"]
    return row


def _plan(db: Any, statement: str) -> str:
    """SQLite's plan of *statement* (its parameters already in it), one line."""
    return "; ".join(str(row[-1]) for row in db.conn.execute("EXPLAIN QUERY PLAN " + statement))


def million(tmp: Path, quick: bool) -> list[Row]:
    """A store of a million products (SQLite) and a year of daily changes
    for 1% of them a day, filled through the store's own write path (no
    crawl): a re-crawl's lookups per second, ``scrapy catalog export``,
    ``catalog changes --item-id`` and ``catalog report`` (wall, CPU, RSS),
    the plan of each statement they run, and the size on disk a product."""
    import random

    from tmapi_crawler.store.catalog import changes as stored_changes
    from tmapi_crawler.store.catalog import products as stored_products
    from tmapi_crawler.store.db import CatalogDB
    from tmapi_crawler.store.history import History, Period
    from tmapi_crawler.store.lookup import lookup
    from tmapi_crawler.store.report import Report
    from tmapi_crawler.store.url import parse_store_url

    products = 100_000 if quick else 1_000_000
    changes = products // 100 * 365
    store = tmp / "million.sqlite"
    db = CatalogDB(parse_store_url(str(store)))
    rows: list[Row] = []
    try:
        started = time.monotonic()
        _history(db, products, changes)
        fill_s = time.monotonic() - started
        size = sum(f.stat().st_size for f in tmp.glob("million.sqlite*"))
        figures = {"store_mb": size // 2**20, "bytes_per_product": size // products}
        label = f"fill: {products:,} products, {changes:,} rows"
        rows.append(Row("million", label, products, 0, 0, 0, round(fill_s, 1), figures))
        rng = random.Random(7)
        statements: list[str] = []
        db.conn.set_trace_callback(statements.append)
        lookup(db, [800_000_000_000 + rng.randrange(products) for _ in range(20)])
        list(stored_changes(db, "2000-01-01T00:00:00Z", item_ids=[800_000_000_007]))
        next(iter(stored_products(db)), None)
        Report(History(db), Period()).render(20, [800_000_000_007])
        db.conn.set_trace_callback(None)
        looked, started = 0, time.monotonic()
        while time.monotonic() - started < 5:
            lookup(db, [800_000_000_000 + rng.randrange(products) for _ in range(20)])  # a listing page's
            looked += 20
        rate = looked / (time.monotonic() - started)
        rows.append(Row("million", "lookups (20 a query, as a listing page)", looked, 0, 0, 0, 5.0,
                        {"lookups_per_second": round(rate)}))  # fmt: skip
        plans = {s.split("FROM", 1)[0][:40] + "... " + s.split("FROM", 1)[-1][:60]: _plan(db, s) for s in statements}
        rows.append(Row("million", "plans", 0, 0, 0, 0, 0.0, plans))
    finally:
        db.close()
    commands = {
        "catalog export (every product, jsonl)": ["catalog", "export", "--store", str(store), "-O", "all.jsonl"],
        "catalog changes --item-id": [
            *("catalog", "changes", "--store", str(store), "--since", "2000-01-01", "--item-id", "800000000007"),
        ],
        "catalog report --item-id --top 20": [
            *("catalog", "report", "--store", str(store), "--item-id", "800000000007", "--top", "20"),
            *("-O", "report.html"),
        ],
    }
    for label, args in commands.items():
        workdir = tmp / f"million-{len(rows)}"
        run = _run([str(BIN / "scrapy"), *args], workdir, project_env())
        rows.append(Row("million", label, products, 0, 0, 0, round(run["wall"], 1),
                        {"cpu_s": round(run["cpu"], 1), "max_rss_mb": run["max_rss_mb"]}))  # fmt: skip
    return rows


def daily_bill(tmp: Path, quick: bool) -> list[Row]:
    """An unchanged 1,000-product shop crawled once a day for a week with the
    default TMAPI_DETAIL_MAX_AGE (a week, jittered per product) and
    TMAPI_DESC_MAX_AGE (30 days), the days shortened in proportion: a day
    is DAY seconds and both ages are scaled alike.  Calls billed each day."""
    day = 4.0 if quick else 8.0
    size = 1000
    scale = day / 86400
    detail_age, desc_age = 7 * 86400 * scale, 30 * 86400 * scale
    rows: list[Row] = []
    store = tmp / "daily.sqlite"
    with SandboxProcess("--shops", "1", "--shop-size", str(size)) as sb:
        begun = time.monotonic()
        for n in range(15):
            while time.monotonic() < begun + n * day:
                time.sleep(0.05)
            settings = (f"TMAPI_STORE={store}", f"TMAPI_DETAIL_MAX_AGE={detail_age}", f"TMAPI_DESC_MAX_AGE={desc_age}",
                        "TMAPI_REMEMBER_LIMIT=false")  # fmt: skip
            run = run_ours(sb, tmp / f"daily-{n}", *settings)
            row = measure(sb, "daily", f"day {n}" + (" (first crawl)" if n == 0 else ""), -(-size // 20), run)
            rows.append(row)
    return rows


def _compare(store: Path, truth: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """``(item id, orders of the last 30 days, stale)`` of every product of
    the truth: stale when its stored SKUs (in stock or not, price) differ."""
    db = sqlite3.connect(store)
    stored: dict[str, dict[str, tuple[bool, str]]] = {}
    for item_id, skuid, price, stock in db.execute("SELECT item_id, skuid, price, stock FROM skus"):
        stored.setdefault(str(item_id), {})[skuid] = ((stock or 0) > 0, str(price))
    db.close()
    found = []
    for item_id, true in truth["products"].items():
        skus = {skuid: (bool(ok), str(price)) for skuid, (ok, price) in true["skus"].items()}
        found.append((item_id, int(true["orders"]), stored.get(item_id) != skus))
    return found


def _stale(store: Path, truth: dict[str, Any]) -> tuple[float, float]:
    """``(share of orders, share of products)`` stale: weighted by the
    truth's orders of the last 30 days, and unweighted."""
    compared = _compare(store, truth)
    weight = sum(orders for _, orders, _ in compared)
    stale_weight = sum(orders for _, orders, wrong in compared if wrong)
    stale = sum(wrong for _, _, wrong in compared)
    return (stale_weight / weight if weight else 0.0), stale / max(1, len(compared))


def _spent(store: Path) -> int:
    db = sqlite3.connect(store)
    try:
        row = db.execute("SELECT refresh_spent FROM crawls ORDER BY started_at DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return int(row[0] or 0) if row else 0


def _choosing_cost(products: int = 20_000) -> float:
    """Microseconds of CPU the planner takes per listed product (its value,
    then the choice), on synthetic stored products."""
    import random as _random
    from datetime import UTC, datetime, timedelta

    from tmapi_crawler.store.freshness import RefreshPlanner
    from tmapi_crawler.store.lookup import Stored

    rng = _random.Random(7)
    now = datetime.now(UTC)
    rows = [
        (Stored(item_id=n, detail=b"{}", detail_fetched_at=(now - timedelta(hours=rng.uniform(1, 300))).isoformat(),
                description=None, desc_fetched_at=None, listing_sig=None, language="zh", shop="s",
                refresh_rate=rng.uniform(1e-7, 1e-4), orders_seen=rng.randint(0, 300), units_seen=rng.randint(0, 900),
                min_stock=rng.randint(1, 300)),
         {"sale_info": {"orders_count_30days": str(rng.randint(0, 320)),
                        "sale_quantity_30days": str(rng.randint(0, 999))}})
        for n in range(products)
    ]  # fmt: skip
    planner = RefreshPlanner(budget=0.15)
    started = time.process_time()
    for page in range(0, products, 20):
        planner.choose([planner.candidate(s, entry, now) for s, entry in rows[page : page + 20]], 0.15)
    return (time.process_time() - started) / products * 1e6


def freshness(tmp: Path, quick: bool) -> list[Row]:
    """A living shop (``--living``) crawled once a simulated day for three
    weeks, a store per refresh policy, each day at the same calls: today's
    jittered age (``TMAPI_REFRESH_POLICY=age``, whose refreshes set the day's
    budget), the oldest first, this crawler's choice by value, and an oracle
    that knows which products are stale (a watch list of exactly those);
    this crawler's choice at half and a quarter of the budget too.  A
    simulated day is DAY seconds of the crawler's clock, and the ages are
    scaled alike (``TMAPI_DETAIL_MAX_AGE`` a week of such days).  Figures:
    the share of products stale (stored availability or prices differ from
    the truth), weighted by orders and not, over the last two weeks."""
    size, days, day = (300, 10, 14.0) if quick else (1000, 21, 32.0)
    measured_from = days - (5 if quick else 14)
    max_age = 7 * day
    policies = {
        "jittered age (today)": ("TMAPI_REFRESH_POLICY=age",),
        "oldest first": ("TMAPI_REFRESH_POLICY=oldest",),
        "by value (this crawler)": (),
        "oracle (knows what is stale)": (),
        "by value, half the budget": (),
        "by value, a quarter of the budget": (),
    }
    stores = {name: tmp / f"fresh-{n}" / "catalog.sqlite" for n, name in enumerate(policies)}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in policies}
    spent: dict[str, int] = dict.fromkeys(policies, 0)
    with SandboxProcess("--shops", "1", "--shop-size", str(size), "--living") as sb:
        begun = time.monotonic()
        for today in range(days):
            while time.monotonic() < begun + today * day:
                time.sleep(0.05)
            if today:
                sb.admin("advance", "POST")
            truth = sb.admin("truth")
            budget = 0
            for name, settings in policies.items():
                store = stores[name]
                common = (f"TMAPI_STORE={store}", f"TMAPI_DETAIL_MAX_AGE={max_age}", "TMAPI_REMEMBER_LIMIT=false")
                extra: tuple[str, ...] = settings
                if name != "jittered age (today)":
                    share = 2 if "half" in name else 4 if "quarter" in name else 1
                    extra += (f"TMAPI_REFRESH_BUDGET={budget // share}",)
                oracle = name.startswith("oracle") and today
                stale = [item for item, _, wrong in _compare(store, truth) if wrong] if oracle else []
                if stale:
                    watch = store.parent / "stale.txt"
                    watch.write_text("\n".join(stale) + "\n")
                    extra += (f"TMAPI_WATCH={watch}", "TMAPI_WATCH_MAX_AGE=0")
                run_ours(sb, store.parent / f"day-{today}", *common, *extra)
                if name == "jittered age (today)":
                    budget = _spent(store)
                if today:
                    spent[name] += _spent(store)
            if today >= measured_from:
                for name in policies:
                    figures[name].append(_stale(stores[name], sb.admin("truth")))
    rows = []
    for name, values in figures.items():
        weighted = sum(v[0] for v in values) / len(values)
        plain = sum(v[1] for v in values) / len(values)
        row = Row("freshness", name, size, spent[name], 0, 0, 0.0)
        row.figures = {"stale_orders": round(weighted, 4), "stale_products": round(plain, 4),
                       "refresh_calls": spent[name], "days_measured": len(values)}  # fmt: skip
        rows.append(row)
    cost = Row("freshness", "choosing (the planner alone)", 20_000, 0, 0, 0, 0.0)
    cost.figures = {"cpu_us_per_listed_product": round(_choosing_cost(), 1)}
    rows.append(cost)
    return rows


def remembered_limit(tmp: Path, quick: bool) -> list[Row]:
    """A 500-product crawl twice on an account of 16 calls in flight, 100 ms
    a call (at most 160 a second), the limit not told: the first finds it,
    the second starts where the first ended (.scrapy/tmapi-limits.json)."""
    size = 200 if quick else 500
    minimum = -(-size // 20) + 2 * size
    rows: list[Row] = []
    workdir = tmp / "remembered"
    with SandboxProcess("--latency-ms", "100", "--concurrency", "16", "--shops", "1", "--shop-size", str(size)) as sb:
        for label in ("first crawl (finds the limit)", "second crawl (starts at the remembered limit)"):
            run = run_ours(sb, workdir, "LOG_FILE=crawl.log", "LOG_LEVEL=INFO")
            row = measure(sb, "limit", label, minimum, run)
            rate = row.billed / row.seconds if row.seconds else 0.0
            row.figures["share_of_ceiling"] = round(rate / 160, 3)
            row.figures["answers_503"] = row.figures["codes"].get("503", 0)
            rows.append(row)
    return rows


#: The account of #37: 16 calls in flight, 500 ms a call (at most 32 a second).
ACCOUNT_CAP, ACCOUNT_LATENCY = 16, 0.5


def _share(row: Row) -> float:
    return round(row.billed / row.seconds / (ACCOUNT_CAP / ACCOUNT_LATENCY), 3) if row.seconds else 0.0


def run_aiohttp(sandbox: SandboxProcess, workdir: Path, member_id: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.aiohttp_client", sandbox.url, TOKEN, member_id, str(ACCOUNT_CAP)]
    return _run([*cmd, "out.jsonl"], workdir, project_env())


def account_limit(tmp: Path, quick: bool) -> list[Row]:
    """Every crawl at the account's limit (#37): 500-product shops and one
    of 3,000 under a limit of 16 calls in flight at 500 ms a call, each
    crawled twice (the second starts from the remembered limit); beside the
    aiohttp client told the limit; then two workers through Redis."""
    shops = [("a", 500), ("b", 500), ("c", 500), ("big", 3000)] if not quick else [("a", 500)]
    rows: list[Row] = []
    flags = ("--latency-ms", str(int(ACCOUNT_LATENCY * 1000)), "--concurrency", str(ACCOUNT_CAP))
    for name, size in shops:
        minimum = -(-size // 20) + 2 * size
        with SandboxProcess("--shops", "1", "--shop-size", str(size), "--seed", str(len(rows)), *flags) as sb:
            client = measure(sb, "account", f"shop {name} ({size}): aiohttp told the limit", minimum,
                             run_aiohttp(sb, tmp / f"account-{name}-client", "b2b-sandbox0000"))  # fmt: skip
            client.figures["share_of_limit"] = _share(client)
            rows.append(client)
            workdir = tmp / f"account-{name}"
            for crawl in ("first", "second"):
                run = run_ours(sb, workdir, "LOG_FILE=crawl.log", "LOG_LEVEL=INFO")
                row = measure(sb, "account", f"shop {name} ({size}): {crawl} crawl", minimum, run)
                row.figures["share_of_limit"] = _share(row)
                row.figures["vs_client"] = round(client.seconds / row.seconds, 3) if row.seconds else None
                row.figures["answers_503"] = row.figures["codes"].get("503", 0)
                rows.append(row)
    if quick:
        return rows
    size = 1000
    minimum = -(-size // 20) + 2 * size
    with tempfile.TemporaryDirectory(prefix="tmapi-redis-") as redis_dir:
        redis = RedisServer(Path(redis_dir))
        try:
            with SandboxProcess("--shops", "1", "--shop-size", str(size), *flags) as sb:
                for crawl in ("first", "second"):
                    redis.client().delete("shop:dupefilter")
                    settings = (f"REDIS_URL={redis.url}", "TMAPI_IDLE_TIMEOUT=1", "TMAPI_PROGRESS_INTERVAL=0")
                    procs = [
                        _start(ours_command(sb, *settings), tmp / f"account-workers-{i}", project_env())
                        for i in range(2)
                    ]
                    row = measure(sb, "account", f"2 workers ({size}): {crawl} crawl", minimum, _wait(procs))
                    row.figures["share_of_limit"] = _share(row)
                    row.figures["answers_503"] = row.figures["codes"].get("503", 0)
                    rows.append(row)
        finally:
            redis.stop()
    return rows


SCENARIOS = {
    "freshness": freshness,
    "ceiling": ceiling,
    "cpu": cpu,
    "memory": memory,
    "bill": bill,
    "workers": workers,
    "jobdir": jobdir,
    "export": export,
    "store": store,
    "media": media,
    "report": report,
    "store-scale": store_scale,
    "million": million,
    "daily-bill": daily_bill,
    "remembered-limit": remembered_limit,
    "account-limit": account_limit,
}


def table(rows: list[Row]) -> str:
    lines = [
        f"{'scenario':<9} {'crawler':<52} {'products':>8} {'calls':>6} {'bill/min':>8} {'seconds':>8}  figures",
    ]
    for r in rows:
        extra = {k: v for k, v in r.figures.items() if k not in ("codes",)}
        bill = r.billed / r.minimum if r.minimum else 0
        lines.append(
            f"{r.scenario:<9} {r.crawler:<52} {r.products:>8} {r.calls:>6} {bill:>8.2f} {r.seconds:>8.1f}  "
            + ", ".join(f"{k}={v}" for k, v in extra.items())
        )
    return "\n".join(lines)


def compile_bytecode() -> None:
    """The package's bytecode, written before anything is measured: an
    installed copy has it (pip compiles it at install) and a checkout writes
    it at its first run, but where ``PYTHONDONTWRITEBYTECODE`` is set (CI
    machines, this one) a crawl from a checkout without it compiles every
    module again at its start: 0.6 G instructions, a sixth of a crawl's start,
    that no installed copy pays."""
    if not compileall.compile_dir(ROOT / "tmapi_crawler", quiet=1):
        raise SystemExit("cannot compile tmapi_crawler's bytecode: see the error above")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="tmapi_crawler benchmarks")
    parser.add_argument("--only", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="smaller catalogs: a smoke run, not figures")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    rows: list[Row] = []
    failed: list[str] = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="tmapi-bench-") as tmp:
        for name in names:
            started = time.monotonic()
            try:
                done = SCENARIOS[name](Path(tmp), args.quick)
            except Exception as exc:  # the others still run; what ran is kept
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"[{name}: failed: {exc}]", file=sys.stderr)
                continue
            rows += done
            print(f"[{name}: {time.monotonic() - started:.0f} s]", file=sys.stderr)
            print(table(done), file=sys.stderr, flush=True)
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(table(rows))
    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if failed:
        print("\nFailed: " + "; ".join(failed))
    print(f"\n(written to {args.json})")
