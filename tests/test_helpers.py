"""The test plumbing's own promise: a test that needs what the machine lacks
is skipped with the reason, or fails under TMAPI_TEST_STRICT=1 (CI)."""

from __future__ import annotations

import pytest

from tests.helpers import NEEDS, STRICT, needs


def test_a_missing_server_is_a_skip_with_its_reason_or_a_failure_when_strict(monkeypatch):
    monkeypatch.setitem(NEEDS, "redis", (lambda: None, "Debian's redis-server is not installed"))
    monkeypatch.delenv(STRICT, raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        needs("redis")
    monkeypatch.setenv(STRICT, "1")
    with pytest.raises(pytest.fail.Exception, match=r"redis-server is not installed.*nothing may be skipped"):
        needs("redis")
    monkeypatch.setitem(NEEDS, "redis", (lambda: "/usr/bin/redis-server", "unused"))
    needs("redis")  # present: nothing happens
