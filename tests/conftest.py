"""The fixtures: the real processes of :mod:`tests.harness` (the sandbox,
redis-server, PostgreSQL), each on a free loopback port; the markers of the
tests that need a server, root or chromium (skipped with a reason when it
is missing, failed instead when ``TMAPI_TEST_STRICT=1``: scripts/test and
CI set it); and ``slow`` for ``pytest -m "not slow"``.  What tests share
besides fixtures is in :mod:`tests.helpers`.
"""

from __future__ import annotations

import os

import pytest

from tests.harness import TOKEN, PostgresServer, RedisServer, SandboxProcess
from tests.helpers import needs

os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "tmapi_crawler.settings")


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


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory):
    needs("redis")
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
    needs("postgres")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres(postgres_session: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the shared throwaway cluster."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-50:]
    postgres_session.psql(f"DROP DATABASE IF EXISTS {name}")
    return postgres_session.database(name)


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


#: The fixtures (and parameters) by which a test needs redis-server,
#: PostgreSQL, root or chromium: its marker (``pytest -m "not postgres"``).
NEEDS_FIXTURES = {
    "redis": {"redis_server", "redis_session", "redis_aof", "redis_volatile", "redis"},
    "postgres": {"postgres", "postgres_session", "pg", "postgresql"},
    "root": {"tmpfs", "small_disk"},
    "chromium": {"chromium"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that starts a process or a server (by its
    fixtures, or by what its own code calls), so that ``pytest -m "not
    slow"`` runs the rest in seconds; and ``redis``, ``postgres``, ``root``
    or ``chromium`` the tests that need one (by their fixtures and
    parameters)."""
    import inspect

    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if fixtures & SLOW_FIXTURES or any(call in source for call in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
        callspec = getattr(item, "callspec", None)
        params = {str(v) for v in callspec.params.values()} if callspec is not None else set()
        for marker, names in NEEDS_FIXTURES.items():
            if fixtures & names or params & names:
                item.add_marker(getattr(pytest.mark, marker))
