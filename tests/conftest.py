"""Test helpers: fixtures for the real processes of
:mod:`tmapi_crawler.sandbox.harness`, and crawls against the sandbox.

Crawls run in process (``crawl``) or as the real ``scrapy crawl`` command
(``run_scrapy``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tmapi_crawler.sandbox.harness import ROOT, TOKEN, PostgresServer, RedisServer, SandboxProcess

os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "tmapi_crawler.settings")
__all__ = ["ROOT", "TOKEN", "PostgresServer", "RedisServer", "SandboxProcess"]


@pytest.fixture(scope="session")
def sandbox_session():
    sb = SandboxProcess()
    yield sb
    sb.stop()


@pytest.fixture
def sandbox(sandbox_session: SandboxProcess) -> SandboxProcess:
    """The shared default sandbox, its counters zeroed for this test."""
    sandbox_session.reset()
    return sandbox_session


@pytest.fixture
def make_sandbox():
    """A sandbox of its own, with the flags a test needs."""
    started: list[SandboxProcess] = []

    def make(*args: str, token: str = TOKEN) -> SandboxProcess:
        sb = SandboxProcess(*args, token=token)
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


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


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The shared redis-server, emptied for this test."""
    redis_session.client().flushall()
    return redis_session


@pytest.fixture(scope="session")
def postgres_session():
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres(postgres_session: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the shared throwaway cluster."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-50:]
    postgres_session.psql(f"DROP DATABASE IF EXISTS {name}")
    return postgres_session.database(name)


def minimum_calls(pages: int, products: int, follow: str = "detail+desc") -> int:
    """What a crawl must pay: one call per page, one detail and one
    description per distinct product."""
    per_product = {"listing": 0, "detail": 1, "detail+desc": 2}[follow]
    return pages + per_product * products


# -- the fast part: `pytest -m "not slow"` ---------------------------------------------

#: Fixtures that start a process or a server: a test that uses one is slow.
SLOW_FIXTURES = frozenset(
    {
        "sandbox", "sandbox_session", "make_sandbox", "shop", "sb", "filled", "installed",
        "redis_server", "redis_session", "redis_aof", "redis_volatile", "make_gate",
        "postgres", "postgres_session", "pg", "store", "scrapyd", "tmpfs", "small_disk", "ftp_store",
    }
)  # fmt: skip
#: What a test's own code calls that runs a process (the real command).
SLOW_CALLS = ("run_scrapy(", "subprocess.", "Worker(", "crawl(", "SandboxProcess(", "RedisServer(")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that starts a process or a server (by its
    fixtures, or by what its own code calls), so that ``pytest -m "not
    slow"`` runs the rest in seconds."""
    import inspect

    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if fixtures & SLOW_FIXTURES or any(call in source for call in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
