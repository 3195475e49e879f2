"""Distributed mode: many workers, one crawl, through Redis (scrapy-redis).

Nothing here is imported unless ``REDIS_URL`` is set.  The add-on then puts
:class:`~tmapi_crawler.cluster.scheduler.LeasedScheduler` (a scrapy-redis
scheduler whose queue is JSON and leased), the Redis dupefilter and the shared
call gate (:mod:`tmapi_crawler.cluster.gate`) in place of their one-process
counterparts.

Every key of a crawl, in one place (``%(spider)s`` is the spider's name):
"""

from __future__ import annotations

#: Pending requests: a sorted set of ids, ordered by priority then age.
QUEUE_KEY = "%(spider)s:requests"
#: The requests themselves, as JSON: id -> request.
DATA_KEY = "%(spider)s:requests:data"
#: Requests taken by a worker: id -> deadline (ms, Redis clock).
LEASES_KEY = "%(spider)s:leases"
#: Counter that numbers the requests.
SEQ_KEY = "%(spider)s:requests:seq"
#: Fingerprints of the requests seen (scrapy-redis's dupefilter key).
DUPEFILTER_KEY = "%(spider)s:dupefilter"
#: Seeds pushed as JSON by users (``scrapy cluster push``), one a list entry.
SEEDS_KEY = "tmapi:%(spider)s:seeds"
#: The account's shared concurrency state and its holders (every spider of
#: one Redis shares one account's limit).
GATE_KEY = "tmapi:gate"
GATE_HOLDERS_KEY = "tmapi:gate:holders"


def crawl_keys(spider: str) -> dict[str, str]:
    names = {"queue": QUEUE_KEY, "data": DATA_KEY, "leases": LEASES_KEY, "seq": SEQ_KEY}
    names |= {"dupefilter": DUPEFILTER_KEY, "seeds": SEEDS_KEY}
    return {name: key % {"spider": spider} for name, key in names.items()}
