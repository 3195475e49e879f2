"""The fixtures: the real processes of :mod:`tests.harness` (the sandbox,
redis-server, PostgreSQL), each on a free loopback port; the markers of the
tests that need a server, root or chromium (skipped with a reason when it
is missing, failed instead when ``TMAPI_TEST_STRICT=1``: scripts/test and
CI set it); and ``slow`` for ``pytest -m "not slow"``: the tests that use
a fixture declared with :func:`tests.helpers.starts_process`, and those
marked so by hand.  What tests share besides fixtures is in
:mod:`tests.helpers`.
"""

from __future__ import annotations

import os

import pytest

from tests.harness import TOKEN, PostgresServer, RedisServer, SandboxProcess
from tests.helpers import PROCESS_FIXTURES, needs, starts_process

os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "tmapi_crawler.settings")


@starts_process(scope="session")
def sandbox_session():
    sb = SandboxProcess()
    yield sb
    sb.stop()


@pytest.fixture
def sandbox(sandbox_session: SandboxProcess) -> SandboxProcess:
    """The shared default sandbox, its counters zeroed for this test."""
    sandbox_session.reset()
    return sandbox_session


@starts_process
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


@starts_process(scope="session")
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


@starts_process(scope="session")
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

#: The fixtures (and parameters) by which a test needs redis-server,
#: PostgreSQL, root or chromium: its marker (``pytest -m "not postgres"``).
NEEDS_FIXTURES = {
    "redis": {"redis_server", "redis_session", "redis_aof", "redis_volatile", "redis"},
    "postgres": {"postgres", "postgres_session", "pg", "postgresql"},
    "root": {"tmpfs", "small_disk"},
    "chromium": {"chromium"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that uses a fixture declared with
    :func:`tests.helpers.starts_process` (the tests that run the real
    command without one carry ``@pytest.mark.slow`` themselves), so that
    ``pytest -m "not slow"`` runs the rest in seconds; and ``redis``,
    ``postgres``, ``root`` or ``chromium`` the tests that need one (by
    their fixtures and parameters)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.slow)
        callspec = getattr(item, "callspec", None)
        params = {str(v) for v in callspec.params.values()} if callspec is not None else set()
        for marker, names in NEEDS_FIXTURES.items():
            if fixtures & names or params & names:
                item.add_marker(getattr(pytest.mark, marker))
