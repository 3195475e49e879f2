"""What the tests share besides fixtures (``tests/conftest.py`` has those):
crawls against the sandbox, in process (:func:`crawl`) or as the real
``scrapy`` command (:func:`run_scrapy`), and reading what they wrote.
Imported as ``from tests.helpers import ...``, as pytest advises for
helpers (conftest modules are pytest's, not for importing).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, TOKEN, PostgresServer, RedisServer, SandboxProcess
from tmapi_crawler.exports import JsonLinesExporter

os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "tmapi_crawler.settings")
__all__ = [
    "ROOT",
    "SCRAPY",
    "TOKEN",
    "CrawlResult",
    "PostgresServer",
    "RedisServer",
    "SandboxProcess",
    "base_settings",
    "crawl",
    "logged_stat",
    "minimum_calls",
    "needs",
    "read_jsonl",
    "run_scrapy",
    "scrapy_env",
    "starts_process",
]

#: The fixtures that start a process or a server, each declared where it is
#: defined (:func:`starts_process`): a test that uses one, directly or
#: through another fixture, is ``slow`` (tests/conftest.py marks it).
PROCESS_FIXTURES: set[str] = set()


def starts_process(function: Any = None, **kwargs: Any) -> Any:
    """``@pytest.fixture`` (bare or with its arguments) for a fixture that
    starts a process or a server: the tests that use it are marked
    ``slow``, so that ``pytest -m "not slow"`` leaves them out."""

    def declare(fixture_function: Any) -> Any:
        PROCESS_FIXTURES.add(kwargs.get("name") or fixture_function.__name__)
        return pytest.fixture(**kwargs)(fixture_function)

    return declare(function) if function is not None else declare


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class CrawlResult:
    records: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    stats: dict[str, Any]
    failures_path: Path
    output: Path
    log: str = ""
    returncode: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        reason = self.stats.get("finish_reason")
        return str(reason) if reason is not None else None

    def ids(self) -> list[int]:
        return [r["item_id"] for r in self.records]


def base_settings(sandbox: SandboxProcess, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "TMAPI_BASE_URL": sandbox.url,
        "TMAPI_TOKEN": sandbox.token,
        "TMAPI_FAILURES_FILE": str(tmp_path / "failures.jsonl"),
        # With a store: never the checkout's own folder.
        "TMAPI_CHANGES_FILE": str(tmp_path / "changes.jsonl"),
        "TMAPI_RETRY_BACKOFF": 0.01,
        "TMAPI_PROGRESS_INTERVAL": 0,
        # Each test finds the limit of its own sandbox (tests of the
        # remembered limit turn this on).
        "TMAPI_REMEMBER_LIMIT": False,
        "FEEDS": {str(tmp_path / "products.jsonl"): {"format": "jsonlines", "overwrite": True}},
        "LOG_LEVEL": "INFO",
    }
    settings.update(overrides)
    return settings


async def crawl(
    spider: str, sandbox: SandboxProcess, tmp_path: Path, settings: dict[str, Any] | None = None, **args: Any
) -> CrawlResult:
    """Run *spider* in this process against *sandbox*; records are read back
    from the feed that Scrapy's feed exports wrote."""
    from scrapy.crawler import AsyncCrawlerRunner
    from scrapy.utils.project import get_project_settings

    values = base_settings(sandbox, tmp_path, **(settings or {}))
    merged = get_project_settings()
    merged.setdict(values, priority="cmdline")
    runner = AsyncCrawlerRunner(merged)
    crawler = runner.create_crawler(spider)
    await runner.crawl(crawler, **args)
    assert crawler.stats is not None
    output = Path(next(iter(values["FEEDS"])))
    failures = Path(values["TMAPI_FAILURES_FILE"])
    return CrawlResult(
        records=read_jsonl(output),
        failures=read_jsonl(failures),
        stats=crawler.stats.get_stats(),
        failures_path=failures,
        output=output,
    )


SCRAPY = str(Path(sys.executable).parent / "scrapy")


def scrapy_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the real ``scrapy`` command, run from a copy-free
    checkout: the project is found through SCRAPY_SETTINGS_MODULE and
    PYTHONPATH; the token only when *env* gives it."""
    full_env = {k: v for k, v in os.environ.items() if k != "TMAPI_TOKEN"}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env["SCRAPY_SETTINGS_MODULE"] = "tmapi_crawler.settings"
    full_env.update(env or {})
    return full_env


def run_scrapy(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real ``scrapy`` command, to its end."""
    return subprocess.run(
        [SCRAPY, *args], cwd=cwd, env=scrapy_env(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def logged_stat(stderr: str, name: str) -> float:
    """The last value of the stat *name* in a crawl's log (its stats dump;
    0 when it has none)."""
    found = re.findall(rf"'{re.escape(name)}': ([\d.]+)", stderr)
    return float(found[-1]) if found else 0.0


def minimum_calls(pages: int, products: int, follow: str = "detail+desc") -> int:
    """What a crawl must pay: one call per page, one detail and one
    description per distinct product."""
    per_product = {"listing": 0, "detail": 1, "detail+desc": 2}[follow]
    return pages + per_product * products


#: What some tests need from the machine: how to tell it is there, and how
#: to get it (scripts/test installs each with apt-get; root is CI's user).
NEEDS: dict[str, tuple[Any, str]] = {
    "redis": (
        lambda: shutil.which("redis-server"),
        "Debian's redis-server is not installed (scripts/test installs it)",
    ),
    "postgres": (
        lambda: glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb"),
        "Debian's postgresql is not installed (scripts/test installs it)",
    ),
    "root": (lambda: os.geteuid() == 0, "mounting a small file system (tmpfs) needs root (CI runs as root)"),
    "chromium": (lambda: shutil.which("chromium"), "Debian's chromium is not installed (scripts/test installs it)"),
}
#: Set by scripts/test (and so CI): a test that would be skipped for want of
#: one of NEEDS fails instead, so that nothing is skipped there.
STRICT = "TMAPI_TEST_STRICT"


def needs(what: str) -> None:
    """Skip the test, with the reason, when the machine lacks *what* (a key
    of :data:`NEEDS`); fail it instead under ``TMAPI_TEST_STRICT=1``."""
    present, reason = NEEDS[what]
    if present():
        return
    if os.environ.get(STRICT) == "1":
        pytest.fail(f"{reason} ({STRICT}=1: nothing may be skipped)", pytrace=False)
    pytest.skip(reason)


class RefusingExporter(JsonLinesExporter):
    """This project's JSON lines exporter, which fails on one record as
    orjson does on an integer past 64 bits (``-s FEED_EXPORTERS=...``): when
    the file ``refuse-once`` is in the working folder, the 20th record it is
    given raises, and the file is removed (the next run writes them all)."""

    def export_item(self, item: Any) -> None:
        self.given = getattr(self, "given", 0) + 1
        marker = Path("refuse-once")
        if self.given == 20 and marker.exists():
            marker.unlink()
            raise TypeError("Integer exceeds 64-bit range")
        super().export_item(item)
