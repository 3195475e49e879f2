"""Test helpers: a real sandbox in a child process, and crawls against it.

The sandbox is started as users start it (``python -m tmapi_crawler.sandbox
--port 0``); the fixture reads the URL line it prints, so there are no sleeps
and no port races.  Crawls run in process (``crawl``) or as the real
``scrapy crawl`` command (``run_scrapy``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "tmapi_crawler.settings")
TOKEN = "test-token-5f1c9e"


class SandboxProcess:
    def __init__(self, *args: str, token: str = TOKEN):
        cmd = [sys.executable, "-m", "tmapi_crawler.sandbox", "--port", "0", "--token", token, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"the sandbox did not start: {line!r} {err}")
        self.url = line
        self.token = token

    def admin(self, action: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/__admin/{action}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def stats(self) -> dict[str, Any]:
        return self.admin("stats")

    def reset(self) -> None:
        self.admin("reset", "POST")

    def topup(self, calls: int) -> None:
        self.admin(f"topup?calls={calls}", "POST")

    def get(self, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
        """A raw call: (HTTP status, parsed body)."""
        params.setdefault("apiToken", self.token)
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._open(urllib.request.Request(f"{self.url}{path}?{query}"))

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}?apiToken={token or self.token}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._open(req)

    @staticmethod
    def _open(req: urllib.request.Request) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


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


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in memory only."""

    def __init__(self, workdir: Path, *args: str, password: str | None = None):
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed: .ci/run installs it (apt-get install redis-server)")
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            cmd = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            cmd += ["--dir", str(workdir), "--protected-mode", "yes", *args]
            if password:
                cmd += ["--requirepass", password]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert self.proc.stdout is not None
            for line in self.proc.stdout:  # its log: wait for "Ready to accept connections"
                if "Ready to accept connections" in line:
                    self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
                    self._drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
                    self._drain.start()
                    return
            self.proc.wait()  # the port was taken meanwhile: another one
            self.proc.stdout.close()
        raise RuntimeError("redis-server did not start")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def dump(self) -> dict[bytes, list[bytes]]:
        """Every key and the values it holds (hashes: their values)."""
        r = self.client()
        readers = {
            b"string": lambda k: [r.get(k)],
            b"hash": r.hvals,
            b"set": lambda k: list(r.smembers(k)),
            b"zset": lambda k: r.zrange(k, 0, -1),
            b"list": lambda k: r.lrange(k, 0, -1),
        }
        return {key: readers[r.type(key)](key) for key in r.scan_iter()}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._drain.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


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


def minimum_calls(pages: int, products: int, follow: str = "detail+desc") -> int:
    """What a crawl must pay: one call per page, one detail and one
    description per distinct product."""
    per_product = {"listing": 0, "detail": 1, "detail+desc": 2}[follow]
    return pages + per_product * products
