"""The Scrapy and Twisted internals of tmapi_crawler.compat, pinned against
the versions of requirements.txt, and the check that stops a crawl when one
is missing."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import scrapy
import twisted
from scrapy import signals
from scrapy.crawler import AsyncCrawlerRunner
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.project import get_project_settings

from tests.helpers import ROOT, base_settings, crawl
from tmapi_crawler import compat


def pinned(package: str) -> str:
    text = (ROOT / "requirements.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)$", text, re.MULTILINE | re.IGNORECASE)
    assert match, f"{package} is not pinned in requirements.txt"
    return match.group(1)


def test_the_installed_versions_are_the_pinned_ones():
    # compat.py was checked against these; another version must pass
    # test_every_internal_is_there_during_a_real_crawl before it is pinned.
    assert scrapy.__version__ == pinned("Scrapy")
    assert twisted.__version__ == pinned("Twisted")


@deferred_f_from_coro_f
async def test_every_internal_is_there_during_a_real_crawl(sandbox, tmp_path):
    seen: dict[str, object] = {}
    settings = get_project_settings()
    settings.setdict(base_settings(sandbox, tmp_path), priority="cmdline")
    runner = AsyncCrawlerRunner(settings)
    crawler = runner.create_crawler("item")

    def item_scraped() -> None:
        # The feed exports open their file on the first item, after this
        # receiver (connected first) ran: look at the second.
        seen["items"] = int(seen.get("items", 0)) + 1  # type: ignore[call-overload]
        if seen["items"] == 2:
            seen["missing"] = compat.missing_internals(crawler)
            seen["feed files"] = len(list(compat.feed_files(crawler)))
            seen["closing"] = compat.engine_closing(crawler)
            compat.sync_feeds(crawler)
            compat.wake_engine(crawler)
            compat.compact_timers()

    crawler.signals.connect(item_scraped, signal=signals.item_scraped)
    await runner.crawl(crawler, item_ids="859086919394,652702302959")
    assert seen == {"items": 2, "missing": [], "feed files": 1, "closing": False}
    assert crawler.stats.get_value("finish_reason") == "finished"


def test_a_missing_internal_is_named():
    engine = SimpleNamespace(running=True)
    crawler = SimpleNamespace(engine=engine, get_extension=lambda cls: SimpleNamespace())
    missing = compat.missing_internals(crawler)  # type: ignore[arg-type]
    # ExecutionEngine.needs_backout is public since Scrapy 2.13: not listed.
    assert missing[:3] == [
        "Downloader.per_slot_settings",
        "ExecutionEngine._slot",
        "FeedExporter.slots",
    ]


@deferred_f_from_coro_f
async def test_a_missing_internal_stops_the_crawl_in_one_line(sandbox, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(compat, "missing_internals", lambda crawler: ["FeedSlot.file"])
    result = await crawl("item", sandbox, tmp_path, item_ids="859086919394")
    assert result.reason == "tmapi_incompatible_scrapy"
    assert result.records == []
    lines = [r.getMessage() for r in caplog.records if "lacks what tmapi_crawler relies on" in r.getMessage()]
    assert len(lines) == 1
    assert "(FeedSlot.file): install the versions of requirements.txt" in lines[0]
    assert "\n" not in lines[0]


def test_scrapy_tls_modules_are_imported_without_reading_the_whole_stack():
    """compat.import_tls_modules: Scrapy's deprecated TLS classes are named
    by their modules as Scrapy names them, inspect.stack is not called in
    full for them (and is inspect's own again after), and they warn as ever."""
    script = """
import inspect, sys, warnings
calls = []
real = inspect.stack
def counted(context=1):
    calls.append(context)
    return real(context)
inspect.stack = counted
from tmapi_crawler import compat
compat.import_tls_modules()
from scrapy.core.downloader import contextfactory, tls
assert inspect.stack is counted, "inspect.stack was not given back"
assert calls == [], calls
assert tls.ScrapyClientTLSOptions.__module__ == "scrapy.core.downloader.tls"
for name in ("ScrapyClientContextFactory", "AcceptableProtocolsContextFactory"):
    assert getattr(contextfactory, name).__module__ == "scrapy.core.downloader.contextfactory", name
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    class Mine(tls.ScrapyClientTLSOptions):
        pass
assert any("ScrapyClientTLSOptions" in str(w.message) for w in caught), caught
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
