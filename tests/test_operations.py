"""Operations: the project under a real scrapyd, the monitors (spidermon),
and the alert webhook against a local HTTP receiver."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from tests.harness import ScrapydServer
from tests.helpers import ROOT, TOKEN, crawl, run_scrapy, starts_process
from tmapi_crawler import addon
from tmapi_crawler.notify import alerts

SHOP = "b2b-sandbox0000"  # 60 products


class Receiver:
    """A local webhook: it records each POST, answers *status* after *delay*."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.posts: list[dict] = []
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(body)
                receiver.posts.append(json.loads(body))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/s3cr3t-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.stop()


# -- monitors and alerts ---------------------------------------------------------


@deferred_f_from_coro_f
async def test_a_crawl_that_passes_its_monitors_sends_no_alert(sandbox, tmp_path, receiver):
    hook = receiver()
    result = await crawl("shop", sandbox, tmp_path, {"TMAPI_ALERT_WEBHOOK": hook.url}, member_id=SHOP)
    assert len(result.records) == 60
    assert result.stats["tmapi/monitors/passed"] >= 8
    assert not [k for k in result.stats if k.startswith("tmapi/monitors/failed/")]
    assert hook.posts == []


@deferred_f_from_coro_f
async def test_a_failed_monitor_sends_one_alert_with_the_summary(make_sandbox, tmp_path, receiver, caplog):
    caplog.set_level(logging.INFO)
    sb = make_sandbox("--fault-rate", "0.3", "--seed", "7", "--latency-ms", "2")
    hook = receiver()
    settings = {"TMAPI_ALERT_WEBHOOK": hook.url, "TMAPI_RETRY_TIMES": 0}
    result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP)
    assert result.reason == "finished"
    assert len(hook.posts) == 1
    alert = hook.posts[0]
    assert alert["spider"] == "shop"
    assert alert["finish_reason"] == "finished"
    assert alert["calls"] == result.stats["tmapi/calls"]
    assert alert["billed"] == result.stats["tmapi/billed"]
    assert alert["products"] == len(result.records)
    assert alert["failures"] == len(result.failures)
    failed = {m["monitor"]: m["reason"] for m in alert["failed_monitors"]}
    assert "more than TMAPI_ALERT_FAILURE_SHARE=0.05" in failed["failures/failure share"]
    assert TOKEN.encode() not in hook.bodies[0]
    assert "Alert sent to http://127.0.0.1:" in caplog.text
    assert "s3cr3t-path" not in caplog.text  # a webhook's path can be its secret


@deferred_f_from_coro_f
async def test_a_webhook_that_is_down_or_slow_never_fails_the_crawl(sandbox, tmp_path, receiver, caplog, monkeypatch):
    monkeypatch.setattr(alerts, "TIMEOUT", 0.5)
    monkeypatch.setattr(alerts, "RETRY_DELAY", 0.1)
    slow, failing = receiver(delay=3), receiver(status=503)
    down = "http://127.0.0.1:9/hook"  # the discard port: nothing listens there
    # One call allowed: the crawl stops with the budget and no product, which
    # fails a monitor (cheaply).
    for url, tries in ((slow.url, 2), (failing.url, 2), (down, 2)):
        caplog.clear()
        started = time.monotonic()
        settings = {"TMAPI_ALERT_WEBHOOK": url, "TMAPI_MAX_CALLS": 1}
        result = await crawl("shop", sandbox, tmp_path, settings, member_id=SHOP)
        assert result.reason == "tmapi_budget_exhausted"  # not made worse by the webhook
        assert time.monotonic() - started < 20
        warnings = [r.getMessage() for r in caplog.records if "The alert could not be sent" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert f"{tries} tries" in warnings[0]
    assert len(failing.posts) == 2  # a 5xx is tried again, once
    refusing = receiver(status=400)
    await crawl("shop", sandbox, tmp_path, {"TMAPI_ALERT_WEBHOOK": refusing.url, "TMAPI_MAX_CALLS": 1}, member_id=SHOP)
    assert len(refusing.posts) == 1  # a 4xx is not


@deferred_f_from_coro_f
async def test_a_crawl_making_no_progress_is_noticed(make_sandbox, tmp_path, monkeypatch):
    monkeypatch.setattr(addon, "STALL_CHECK_INTERVAL", 0.2)
    sb = make_sandbox("--latency-ms", "1500")
    result = await crawl("item", sb, tmp_path, {"TMAPI_STALL_TIMEOUT": 0.5}, item_ids="859086919394")
    assert result.stats["tmapi/monitors/stalls"] >= 1
    assert "account/no stall" in {k.removeprefix("tmapi/monitors/failed/") for k in result.stats}


def test_a_webhook_url_that_does_not_parse_is_refused_before_any_call(sandbox, tmp_path):
    done = run_scrapy(
        "crawl", "shop", "-a", f"member_id={SHOP}", "-s", f"TMAPI_BASE_URL={sandbox.url}",
        "-s", "TMAPI_ALERT_WEBHOOK=hooks.example.com/x", cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 2
    assert "TMAPI_ALERT_WEBHOOK='hooks.example.com/x': is not an http(s) URL" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert sandbox.stats()["calls"] == 0


# -- scrapyd ----------------------------------------------------------------------


@starts_process
def scrapyd(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCRAPY_", "PYTHONPATH", "TMAPI_"))}
    env["TMAPI_TOKEN"] = TOKEN  # the token in scrapyd's environment
    server = ScrapydServer(tmp_path / "scrapyd", env)
    yield server
    server.stop()


def deploy(scrapyd: ScrapydServer, tmp_path: Path) -> None:
    """scrapyd-deploy from a copy of the project (it builds in the tree)."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "tmapi_crawler", project / "tmapi_crawler", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, project / name)
    cfg = (ROOT / "scrapy.cfg").read_text().replace("http://localhost:6800/", scrapyd.url)
    (project / "scrapy.cfg").write_text(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCRAPY_", "PYTHONPATH"))}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "scrapyd-deploy")],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"status": "ok"' in done.stdout
    assert scrapyd.call("listspiders.json?project=tmapi_crawler")["spiders"] == ["category", "item", "shop"]


def test_deployed_and_scheduled_under_scrapyd(scrapyd, sandbox, tmp_path):
    deploy(scrapyd, tmp_path)
    job = scrapyd.call(
        "schedule.json",
        [("project", "tmapi_crawler"), ("spider", "shop"), ("member_id", SHOP),
         ("setting", f"TMAPI_BASE_URL={sandbox.url}"), ("setting", "TMAPI_PROGRESS_INTERVAL=0")],
    )["jobid"]  # fmt: skip
    scrapyd.wait("tmapi_crawler", job)
    items = scrapyd.workdir / "items_dir" / "tmapi_crawler" / "shop" / f"{job}.jl"
    log = (scrapyd.workdir / "logs_dir" / "tmapi_crawler" / "shop" / f"{job}.log").read_text()
    assert items.exists(), log[-3000:]
    records = [json.loads(line) for line in items.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 60
    assert len({r["item_id"] for r in records}) == 60
    assert "Spider closed (finished)" in log
    assert TOKEN not in log
    assert sandbox.stats()["billed"] == 3 + 120


def test_a_token_in_schedule_json_is_refused(scrapyd, sandbox, tmp_path):
    deploy(scrapyd, tmp_path)
    job = scrapyd.call(
        "schedule.json",
        [("project", "tmapi_crawler"), ("spider", "shop"), ("member_id", SHOP),
         ("setting", f"TMAPI_BASE_URL={sandbox.url}"), ("setting", "TMAPI_TOKEN=leaked-token")],
    )["jobid"]  # fmt: skip
    scrapyd.wait("tmapi_crawler", job)
    log_dir = scrapyd.workdir / "logs_dir" / "tmapi_crawler" / "shop"
    scrapyd_log = (scrapyd.workdir / "scrapyd.log").read_text()
    assert "scrapyd was given the token as a setting" in scrapyd_log
    assert not (log_dir / f"{job}.log").exists() or "Spider opened" not in (log_dir / f"{job}.log").read_text()
    assert sandbox.stats()["calls"] == 0


def test_a_job_of_scrapyd_has_a_failures_file_of_its_own(make_sandbox, tmp_path):
    sb = make_sandbox("--fault-rate", "1.0")
    done = run_scrapy(
        "crawl", "item", "-a", "item_ids=859086919394", "-a", "_job=6487ec79947edab326d6db28a2d86511e8247444",
        "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "TMAPI_RETRY_TIMES=0", cwd=tmp_path, env={"TMAPI_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "failures-6487ec79947edab326d6db28a2d86511e8247444.jsonl").exists()
    assert not (tmp_path / "failures.jsonl").exists()


def test_monitors_that_pass_are_one_line_and_a_failure_is_the_whole_report(make_sandbox, tmp_path):
    sb = make_sandbox("--shops", "1", "--shop-size", "20")
    args = ["crawl", "shop", "-a", "member_id=b2b-sandbox0000", "-O", "p.jsonl", "-s", f"TMAPI_BASE_URL={sb.url}"]
    done = run_scrapy(*args, cwd=tmp_path, env={"TMAPI_TOKEN": sb.token})
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if "[Spidermon]" in line]
    assert len(said) == 1 and said[0].endswith("[Spidermon] monitors: 8 passed"), said
    # A failed monitor (page 2 of 2 is broken: 10 products lost): the whole report, with the failure.
    broken = make_sandbox("--shops", "1", "--shop-size", "20", "--broken", "shop:b2b-sandbox0000:2:html")
    two_pages = ["-a", "page_size=10", "-s", f"TMAPI_BASE_URL={broken.url}"]
    failing = run_scrapy(*args[:6], *two_pages, cwd=tmp_path, env={"TMAPI_TOKEN": broken.token})
    report = [line for line in failing.stderr.splitlines() if "[Spidermon]" in line]
    assert any("FAIL: products/every announced product" in line for line in report), report
    assert sum("... OK" in line for line in report) >= 6 and any("... FAIL" in line for line in report), report
    # At LOG_LEVEL=DEBUG, spidermon's report as it writes it.
    debug = run_scrapy(*args, "-s", "LOG_LEVEL=DEBUG", cwd=tmp_path, env={"TMAPI_TOKEN": sb.token})
    assert sum("[Spidermon]" in line and "... OK" in line for line in debug.stderr.splitlines()) >= 8
