"""The call gate on its own: concurrency from 503s, the 439 pause, the budget.

Every test runs against both gates: the one-process gate, and the gate
shared through a real redis-server (whose state lives in Redis, changed by
the Lua scripts of tmapi_crawler.cluster.lua).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from hashlib import sha256

import pytest
from scrapy import Request
from scrapy.utils.defer import deferred_f_from_coro_f, deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.test import get_crawler

from tests.helpers import crawl, starts_process
from tmapi_crawler.api import Outcome
from tmapi_crawler.calls.ceiling import PROBE_BACKOFF, PROBE_FIRST, PROBE_MOST, AdaptiveLimit
from tmapi_crawler.calls.gate import CallGate, CrawlStopping
from tmapi_crawler.calls.limits import (
    FileMemory,
    LimitMemory,
    RedisMemory,
    Remembered,
    StoreMemory,
    account_of,
    memory_of,
)
from tmapi_crawler.cluster.gate import SharedCallGate
from tmapi_crawler.cluster.lua import RELEASE
from tmapi_crawler.spiders.item import ItemSpider


@starts_process(params=["one process", "redis"])
def make_gate(request) -> Callable[..., CallGate]:
    settings = {"TMAPI_TOKEN": "t"}
    gate_cls = CallGate
    if request.param == "redis":
        settings["REDIS_URL"] = request.getfixturevalue("redis_server").url
        gate_cls = SharedCallGate

    def make(**kwargs) -> CallGate:
        crawler = get_crawler(ItemSpider, settings)
        kwargs.setdefault("start", 4)
        kwargs.setdefault("cap", 64)
        return gate_cls(crawler, **kwargs)

    return make


@deferred_f_from_coro_f
async def test_slow_start_then_a_503_sets_the_ceiling(make_gate):
    gate = make_gate()
    tickets = [await gate.acquire() for _ in range(4)]
    assert [t.in_flight for t in tickets] == [1, 2, 3, 4]
    blocked = deferred_from_coro(gate.acquire())
    assert not blocked.called  # the fifth waits: the limit starts at 4
    gate.release(tickets[0], Outcome.OK)  # one success: one more in flight
    assert gate.limit == 5
    fifth = await maybe_deferred_to_future(blocked)
    assert fifth.in_flight == 4
    for _ in range(20):
        gate.release(await gate.acquire(), Outcome.OK)
    # Successes sent with 5 in flight (4 held, and each): not beyond twice
    # that (it was 25, and so ran far past the account's limit while a 503
    # was on its way).
    assert gate.limit == 10
    assert gate.in_flight == 4
    gate.release(await gate.acquire(), Outcome.CONCURRENCY)
    assert gate.limit == 4  # in flight when sent: 5 -> the account has at most 4
    assert gate.ceiling == 4
    for ticket in [*tickets[1:], fifth]:
        gate.release(ticket, Outcome.OK)
    gate.release(await gate.acquire(), Outcome.OK)
    assert gate.limit == 4  # it stays at the ceiling
    assert gate.stats.get_value("tmapi/throttle/limit") == 4


@deferred_f_from_coro_f
async def test_the_ceiling_is_probed_soon_and_less_often_after_each_failed_probe(make_gate):
    """tmapi_crawler.calls.ceiling: one higher after PROBE_FIRST round trips at the
    ceiling; a probe that meets a 503 doubles the wait; one that holds a
    round trip keeps its ceiling, and the next comes as soon."""
    gate = make_gate(start=3, cap=10)
    gate.release(await gate.acquire(), Outcome.CONCURRENCY)
    assert gate.ceiling == 1
    for _ in range(PROBE_FIRST * 1):
        gate.release(await gate.acquire(), Outcome.OK)
    assert gate.ceiling == 2  # probed
    first, second = await gate.acquire(), await gate.acquire()
    gate.release(second, Outcome.CONCURRENCY)  # 2 in flight is one too many: the probe failed
    assert gate.ceiling == 1
    gate.release(first, Outcome.OK)
    for _ in range(PROBE_BACKOFF * PROBE_FIRST - 2):
        gate.release(await gate.acquire(), Outcome.OK)
    assert gate.ceiling == 1  # PROBE_BACKOFF times as long before the next probe
    gate.release(await gate.acquire(), Outcome.OK)
    assert gate.ceiling == 2
    for _ in range(PROBE_FIRST * 2):  # it holds: the next probe as soon as the first
        gate.release(await gate.acquire(), Outcome.OK)
    assert gate.ceiling == 3


def test_the_shared_gates_lua_applies_the_reference_rule(redis_server):
    """The adaptive rule is written twice (AdaptiveLimit, the reference, and
    the shared gate's RELEASE script): the same answers, the same limit and
    ceiling after each, on a real Redis."""
    client = redis_server.client()
    release = client.register_script(RELEASE)
    keys = ["t:gate", "t:holders", "t:admissions"]
    client.delete(*keys)
    rule = AdaptiveLimit(cap=24, start=4, limit=4.0)
    rng = random.Random(37)
    probes = held = failed = 0
    for n in range(4000):
        sent = rng.randint(max(1, int(rule.limit) - 2), int(rule.limit))
        refused = sent > 17 or rng.random() < 0.01  # an account of 17 places, and a stray 503
        before = rule.ceiling
        was_probing = rule.probing
        if refused:
            rule.refused(sent)
            failed += was_probing is not None and rule.probing is None
        else:
            rule.succeeded(sent)
            held += was_probing is not None and rule.probing is None
        probes += before is not None and rule.ceiling is not None and rule.ceiling > before
        args = [f"h{n}", "concurrency" if refused else "ok", sent, 0, 24, 4, 5000, 60000, PROBE_MOST, 10**12, sent,
                PROBE_FIRST, PROBE_BACKOFF]  # fmt: skip
        limit, ceiling, *_ = release(keys=keys, args=args)
        assert (int(limit), None if ceiling < 0 else int(ceiling)) == (int(rule.limit), rule.ceiling), n
    assert probes > 20 and held > 3 and failed > 5  # every branch of the rule was taken
    assert rule.ceiling is not None and rule.ceiling <= 17


@deferred_f_from_coro_f
async def test_a_set_concurrency_caps_and_starts(make_gate):
    gate = make_gate(start=3, cap=3)
    for _ in range(10):
        gate.release(await gate.acquire(), Outcome.OK)
    assert gate.limit == 3


@deferred_f_from_coro_f
async def test_439_pauses_everything_and_a_successful_probe_resumes(make_gate):
    gate = make_gate(probe_first=0.05, probe_max=0.2, quota_wait=60)
    first, second = await gate.acquire(), await gate.acquire()
    gate.release(first, Outcome.QUOTA)
    assert gate.pause.paused
    gate.release(second, Outcome.QUOTA)  # sent before the pause: no effect
    waiters = [deferred_from_coro(gate.acquire()) for _ in range(3)]
    assert not any(w.called for w in waiters)
    started = time.monotonic()
    probe = await maybe_deferred_to_future(waiters[0])
    assert probe.probe
    assert time.monotonic() - started >= 0.04
    assert not waiters[1].called  # one probe at a time
    gate.release(probe, Outcome.QUOTA)
    assert gate.pause.interval == pytest.approx(0.1)
    probe = await maybe_deferred_to_future(waiters[1])
    gate.release(probe, Outcome.OK)
    assert not gate.pause.paused
    assert not (await maybe_deferred_to_future(waiters[2])).probe
    assert gate.stats.get_value("tmapi/throttle/paused_seconds") > 0


@deferred_f_from_coro_f
async def test_439_for_longer_than_the_quota_wait_stops(make_gate):
    gate = make_gate(probe_first=0.02, quota_wait=0.05)
    gate.release(await gate.acquire(), Outcome.QUOTA)
    waiter = deferred_from_coro(gate.acquire())
    while gate.stop_reason is None:
        try:
            probe = await maybe_deferred_to_future(waiter)
        except CrawlStopping:
            # The Redis gate also stops a worker that waits for a probe of
            # another one for longer than the quota wait.
            waiter = deferred_from_coro(gate.acquire())
            break
        gate.release(probe, Outcome.QUOTA)
        waiter = deferred_from_coro(gate.acquire())
    assert gate.stop_reason == "tmapi_quota_exhausted"
    with pytest.raises(CrawlStopping):
        await maybe_deferred_to_future(waiter)


@deferred_f_from_coro_f
async def test_a_probe_without_an_answer_is_followed_by_another(make_gate):
    gate = make_gate(probe_first=0.02)
    gate.release(await gate.acquire(), Outcome.QUOTA)
    probe = await gate.acquire()
    gate.release(probe, None)  # a timeout
    again = await gate.acquire()
    assert again.probe


@deferred_f_from_coro_f
async def test_budget_is_never_exceeded(make_gate):
    gate = make_gate(max_calls=3)
    for _ in range(3):
        gate.release(await gate.acquire(), Outcome.RETRY)
    with pytest.raises(CrawlStopping) as info:
        await gate.acquire()
    assert info.value.reason == "tmapi_budget_exhausted"
    assert gate.budget.sent == 3


@deferred_f_from_coro_f
async def test_stopping_hands_every_waiting_call_back(make_gate):
    gate = make_gate(start=1, cap=1)
    ticket = await gate.acquire()
    waiters = [deferred_from_coro(gate.acquire()) for _ in range(5)]
    gate.stop("tmapi_auth_failed")
    for waiter in waiters:
        with pytest.raises(CrawlStopping):
            await maybe_deferred_to_future(waiter)
    gate.release(ticket, Outcome.AUTH)


@deferred_f_from_coro_f
async def test_a_503_for_a_call_overtaken_in_its_burst_does_not_set_the_ceiling_too_low(make_gate, monkeypatch):
    """Five calls leave together; the account (limit 4) happened to take the
    fifth before the third and refused the third.  Its 503 proves the limit
    is below the burst's five, not below its own three."""
    # "Together", whatever the machine's load: five Redis round trips may
    # take longer than the burst window of a real crawl.
    monkeypatch.setattr("tmapi_crawler.calls.gate.BURST_WINDOW", 10.0)
    gate = make_gate(start=5, cap=10)
    tickets = [await gate.acquire() for _ in range(5)]
    assert [t.in_flight for t in tickets] == [1, 2, 3, 4, 5]
    gate.release(tickets[2], Outcome.CONCURRENCY)
    assert gate.ceiling == 4
    assert gate.limit == 4


def _detail(n: int) -> Request:
    """A call that starts a product whose description follows."""
    return Request(
        f"https://api.tmapi.io/1688/item_detail?item_id={n}",
        meta={"tmapi": {"endpoint": "item_detail", "params": {"item_id": n}}},
        cb_kwargs={"opts": {"follow": "detail+desc"}},
    )


@deferred_f_from_coro_f
async def test_once_the_budget_is_reached_every_waiting_start_is_handed_back(make_gate):
    """A product costs 2 of the budget (its detail, its description's place
    kept). With 4, two products start; the calls waiting for a place that
    would start a third are all handed back, none left waiting."""
    gate = make_gate(start=1, cap=1, max_calls=4)
    first = await gate.acquire(_detail(1))
    waiting = [deferred_from_coro(gate.acquire(_detail(n))) for n in range(2, 6)]
    gate.release(first, Outcome.OK)
    second = await maybe_deferred_to_future(waiting[0])
    assert (gate.budget.sent, gate.budget.reserved) == (2, 2)
    gate.release(second, Outcome.OK)
    for waiter in waiting[1:]:
        with pytest.raises(CrawlStopping) as info:
            await maybe_deferred_to_future(waiter)
        assert info.value.reason == "tmapi_budget_exhausted"
    assert gate.budget.draining and gate.budget.sent == 2
    # The descriptions of the two products started still go out.
    desc = Request("https://api.tmapi.io/1688/item_desc?item_id=1", meta={"tmapi": {"endpoint": "item_desc"}})
    desc.meta.update(_detail_meta(gate))
    gate.release(await gate.acquire(desc), Outcome.OK)
    assert (gate.budget.sent, gate.budget.reserved) == (3, 1)


def _detail_meta(gate: CallGate) -> dict:
    from tmapi_crawler.calls.budget import RESERVED_META, STARTED_META

    return {STARTED_META: gate.budget.run_id, RESERVED_META: gate.budget.run_id}


# -- the limit remembered across crawls ---------------------------------------------------


@pytest.fixture(params=["file", "project file", "sqlite", "redis"])
def memory(request, tmp_path, monkeypatch) -> LimitMemory:
    monkeypatch.chdir(tmp_path)
    if request.param == "file":
        return FileMemory()
    if request.param == "project file":  # in a Scrapy project: its .scrapy/ beside scrapy.cfg
        (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = tmapi_crawler.settings\n")
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")
        found = FileMemory()
        assert found.path == tmp_path / ".scrapy" / "tmapi-limits.json"
        return found
    if request.param == "sqlite":
        return StoreMemory(get_crawler(ItemSpider, {"TMAPI_STORE": str(tmp_path / "c.sqlite")}).settings)
    settings = {"REDIS_URL": request.getfixturevalue("redis_server").url}
    return RedisMemory(get_crawler(ItemSpider, settings).settings)


def test_a_remembered_limit_is_kept_per_account_and_never_holds_the_token(memory):
    assert memory.load("api.tmapi.io:0123") is None
    memory.save("api.tmapi.io:0123", Remembered(limit=12, ceiling=9, saved_at="2026-11-30T00:00:00Z"))
    memory.save("api.tmapi.io:4567", Remembered(limit=3))
    assert memory.load("api.tmapi.io:0123") == Remembered(limit=12, ceiling=9, saved_at="2026-11-30T00:00:00Z")
    assert memory.load("api.tmapi.io:4567") == Remembered(limit=3)
    if isinstance(memory, FileMemory):
        assert memory.path.is_file()
    settings = get_crawler(
        ItemSpider, {"TMAPI_TOKEN": "secret-token-1", "TMAPI_BASE_URL": "https://x.test:8443"}
    ).settings
    account = account_of(settings)
    assert account is not None
    assert account.startswith("x.test:8443:")
    assert "secret-token-1" not in account
    other = get_crawler(ItemSpider, {"TMAPI_TOKEN": "secret-token-2", "TMAPI_BASE_URL": "https://x.test:8443"})
    assert account_of(other.settings) != account
    # What does not parse is forgotten, not an error.
    assert Remembered.parse(b"{not json") is None
    assert Remembered.parse('{"ceiling": 3}') is None


@deferred_f_from_coro_f
async def test_the_next_crawl_starts_at_the_limit_the_last_one_found(make_sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # .scrapy/ is here
    sb = make_sandbox("--latency-ms", "20", "--concurrency", "6", "--shops", "1", "--shop-size", "100")
    settings = {"TMAPI_REMEMBER_LIMIT": True}
    first = await crawl("shop", sb, tmp_path / "1", settings, member_id="b2b-sandbox0000")
    first_503 = sb.stats()["codes"].get("503", 0)
    assert first_503 >= 1  # slow start found the limit
    # The ceiling as the crawler counts (a call from its send to its answer's
    # handling): the account's 6, and the answers on their way to the crawler.
    assert 5 <= first.stats["tmapi/throttle/ceiling"] <= 10
    assert sb.stats()["max_in_flight"] == 6  # the account's places, all used
    assert "tmapi/throttle/remembered" not in first.stats
    saved = json.loads((tmp_path / ".scrapy" / "tmapi-limits.json").read_text())
    assert list(saved) == [f"127.0.0.1:{sb.url.rsplit(':', 1)[1]}:{sha256(sb.token.encode()).hexdigest()[:16]}"]
    assert sb.token not in json.dumps(saved)
    sb.reset()
    second = await crawl("shop", sb, tmp_path / "2", settings, member_id="b2b-sandbox0000")
    assert second.stats["tmapi/throttle/remembered"] == first.stats["tmapi/throttle/ceiling"]
    assert len(second.records) == len(first.records) == 100
    assert sb.stats()["codes"].get("503", 0) <= first_503
    # TMAPI_CONCURRENCY wins, and TMAPI_REMEMBER_LIMIT=false finds it anew.
    told = await crawl("shop", sb, tmp_path / "3", {**settings, "TMAPI_CONCURRENCY": 2}, member_id="b2b-sandbox0000")
    assert "tmapi/throttle/remembered" not in told.stats
    anew = await crawl("shop", sb, tmp_path / "4", {"TMAPI_REMEMBER_LIMIT": False}, member_id="b2b-sandbox0000")
    assert "tmapi/throttle/remembered" not in anew.stats


@deferred_f_from_coro_f
async def test_a_gate_remembers_what_its_successes_proved(make_gate, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # one process: .scrapy/ is here; distributed: Redis
    gate = make_gate()
    gate.recall()  # nothing remembered yet: it starts at 4
    assert gate.limit == 4
    for calls in (4, 6):  # 4 proved lets it grow to 8; then 6 in flight are proved
        tickets = [await gate.acquire() for _ in range(calls)]
        for ticket in tickets:
            gate.release(ticket, Outcome.OK)
    gate.remember()
    settings = gate.crawler.settings
    account = account_of(settings)
    assert account is not None
    remembered = memory_of(settings).load(account)
    assert remembered is not None
    assert (remembered.limit, remembered.ceiling) == (6, None)


@deferred_f_from_coro_f
async def test_a_limit_that_cannot_be_kept_is_one_line_not_a_failed_crawl(sandbox, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".scrapy" / "tmapi-limits.json").mkdir(parents=True)  # where the file goes: cannot be written
    result = await crawl("item", sandbox, tmp_path, {"TMAPI_REMEMBER_LIMIT": True}, item_ids="859086919394")
    assert result.reason == "finished"
    assert len(result.records) == 1
    lines = [r.getMessage() for r in caplog.records if "limit was not remembered" in r.getMessage()]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "tmapi-limits.json" in lines[0]
