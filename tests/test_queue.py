"""The leased queue's Lua scripts on a real redis-server, in process, and the
lease tracker that decides when a leased request is acknowledged."""

from __future__ import annotations

import time

import pytest
from scrapy import Request, Spider, signals
from scrapy.utils.test import get_crawler

from tmapi_crawler.cluster.queue import LeasedQueue
from tmapi_crawler.durable.leases import LEASE_META, PARENT_META, LeaseTracker
from tmapi_crawler.records import ProductItem


@pytest.fixture
def queue(redis_server) -> LeasedQueue:
    spider = Spider(name="shop")
    return LeasedQueue(redis_server.client(), spider, "shop:requests", lease_ms=60_000)


def take(queue: LeasedQueue) -> tuple[str, Request | None]:
    got = queue.pop()
    assert got is not None
    return got


def url_of(got: tuple[str, Request | None] | None) -> str:
    assert got is not None and got[1] is not None
    return got[1].url


def test_highest_priority_first_then_oldest(queue):
    for name, priority in (("a", 0), ("b", 10), ("c", 0), ("d", 10)):
        queue.push(Request(f"https://x/{name}", priority=priority))
    assert [url_of(queue.pop()) for _ in range(4)] == ["https://x/b", "https://x/d", "https://x/a", "https://x/c"]
    assert queue.pop() is None
    assert queue.leased() == 4


def test_a_popped_request_stays_leased_until_acknowledged(queue):
    queue.push(Request("https://x/a"))
    lease, _ = take(queue)
    assert len(queue) == 0
    assert queue.leased() == 1
    queue.ack([lease])
    assert queue.leased() == 0
    assert queue.server.hlen(queue.data_key) == 0


def test_given_back_leases_and_expired_ones_return_to_the_queue(queue):
    queue.push(Request("https://x/a"))
    queue.push(Request("https://x/b"))
    first, _ = take(queue)
    assert queue.requeue([first]) == 1
    assert len(queue) == 2
    short = LeasedQueue(queue.server, queue.spider, queue.key, lease_ms=1)
    take(short)
    time.sleep(0.01)
    assert queue.requeue() == 1  # expired: its worker died
    assert len(queue) == 2
    assert queue.leased() == 0


def test_renewing_keeps_a_lease_and_never_revives_an_ended_one(queue):
    queue.push(Request("https://x/a"))
    short = LeasedQueue(queue.server, queue.spider, queue.key, lease_ms=50)
    lease, _ = take(short)
    short.renew([lease, "0000000000000999"])  # the second was never leased
    assert queue.server.zcard(queue.leases_key) == 1
    time.sleep(0.03)
    short.renew([lease])
    time.sleep(0.03)
    assert queue.requeue() == 0  # renewed in time
    queue.ack([lease])
    short.renew([lease])
    assert queue.leased() == 0


def test_seen_and_queued_is_one_step(queue):
    df = "shop:dupefilter"
    assert queue.push(Request("https://x/a"), dupefilter=df, fingerprint=b"fp-a") is not None
    assert queue.push(Request("https://x/a"), dupefilter=df, fingerprint=b"fp-a") is None
    assert len(queue) == 1
    assert queue.server.hlen(queue.data_key) == 1
    assert queue.server.smembers(df) == {b"fp-a"}


def test_a_replacement_ends_the_lease_it_replaces(queue):
    queue.push(Request("https://x/a"))
    lease, request = take(queue)
    assert request is not None
    retry = request.replace(dont_filter=True)
    new = queue.push(retry, lease)
    assert new is not None and new != lease
    assert queue.leased() == 0
    assert len(queue) == 1
    assert not queue.server.hexists(queue.data_key, lease)


def test_an_entry_that_is_not_ours_is_handed_out_as_unreadable(queue):
    queue.server.hset(queue.data_key, "0000000000000001", b"\x80pickle")
    queue.server.zadd(queue.key, {"0000000000000001": 0})
    lease, request = take(queue)
    assert lease == "0000000000000001"
    assert request is None


def test_records_survive_the_queue_as_json(queue):
    product = ProductItem(item_id=5, title="t")
    queue.push(Request("https://x/desc", cb_kwargs={"product": product, "item_id": 5}))
    _, request = take(queue)
    assert request is not None
    assert isinstance(request.cb_kwargs["product"], ProductItem)
    assert request.cb_kwargs == {"product": product, "item_id": 5}
    assert b"pickle" not in queue.server.hvals(queue.data_key)[0]


# -- the lease tracker ----------------------------------------------------------


@pytest.fixture
def tracker() -> LeaseTracker:
    return LeaseTracker(get_crawler(Spider))


def test_a_lease_is_safe_once_all_it_yielded_is_safe(tracker):
    request = Request("https://x/page")
    tracker.hold("L1", request)
    child, record = Request("https://x/detail"), ProductItem(item_id=1)
    outputs = list(tracker.track(request, iter([child, record])))
    assert outputs == [child, record]
    assert child.meta[PARENT_META] == "L1"
    assert tracker.safe == []
    assert tracker.detach(child) == ("L1", None)
    tracker.settle("L1")  # the child is in the queue
    assert tracker.safe == []
    tracker.enable()  # told of records from now on, as a leasing scheduler makes it
    response = type("R", (), {"request": request})()
    tracker.crawler.signals.send_catch_log(signals.item_scraped, item=record, response=response)  # exported
    assert tracker.safe == ["L1"]
    acked: list[list[str]] = []
    assert tracker.commit(acked.append) == 1
    assert acked == [["L1"]]
    assert not tracker.busy


def test_output_of_a_request_that_was_not_leased_is_passed_through(tracker):
    output = iter([1, 2])
    assert tracker.track(Request("https://x"), output) is output


def test_a_replaced_lease_is_forgotten_and_unfinished_ones_given_back(tracker):
    first, second = Request("https://x/1"), Request("https://x/2")
    tracker.hold("L1", first)
    tracker.hold("L2", second)
    retry = first.replace(dont_filter=True)
    assert retry.meta[LEASE_META] == "L1"
    assert tracker.detach(retry) == (None, "L1")
    tracker.forget("L1")
    assert tracker.unfinished() == ["L2"]
    assert not tracker.busy
