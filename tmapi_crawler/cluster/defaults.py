"""Every Redis key of a crawl and every default of distributed mode, in one
place (as scrapy-redis keeps its own in ``scrapy_redis.defaults``).

In key templates ``%(spider)s`` is the spider's name.
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
#: The crawl's marker: an id set by the first worker, which every worker
#: checks; gone or changed, Redis lost the crawl's state (restarted empty,
#: flushed, another server).
CRAWL_KEY = "%(spider)s:crawl"
#: Set for one lease timeout when Redis answers again after an outage: no
#: lease counts as expired meanwhile, so that every worker has the time to
#: renew the leases it could not renew while Redis was away.
GRACE_KEY = "%(spider)s:grace"
#: The workers crawling together now (a sorted set: worker -> deadline) and
#: the id of their run: what the catalog store's ``crawls`` table calls a
#: crawl (a daily run of the same crawl is a new one).
RUN_WORKERS_KEY = "%(spider)s:run:workers"
RUN_KEY = "%(spider)s:run"
RUN_TOTALS_KEY = "%(spider)s:run:totals"
RUN_REFRESH_KEY = "%(spider)s:run:refresh"
#: The workers that will send the crawl's alert (a sorted set: worker ->
#: deadline, renewed) and the reports of those that stopped (a list).
ALERT_WORKERS_KEY = "%(spider)s:alert:workers"
ALERT_REPORTS_KEY = "%(spider)s:alert:reports"
#: Seeds pushed as JSON by users (``scrapy cluster push``), one a list entry.
SEEDS_KEY = "tmapi:%(spider)s:seeds"
#: The account's shared concurrency state and its holders (every spider of
#: one Redis shares one account's limit).
GATE_KEY = "tmapi:gate"
GATE_HOLDERS_KEY = "tmapi:gate:holders"
#: The calls let through lately, numbered, with the count of calls in flight
#: each made (a sorted set: number -> number x 10^6 + count).
GATE_ADMISSIONS_KEY = "tmapi:gate:admissions"


def crawl_keys(spider: str) -> dict[str, str]:
    names = {"queue": QUEUE_KEY, "data": DATA_KEY, "leases": LEASES_KEY, "seq": SEQ_KEY}
    names |= {"dupefilter": DUPEFILTER_KEY, "seeds": SEEDS_KEY, "crawl": CRAWL_KEY, "grace": GRACE_KEY}
    names |= {"alert_workers": ALERT_WORKERS_KEY, "alert_reports": ALERT_REPORTS_KEY}
    names |= {"run_workers": RUN_WORKERS_KEY, "run": RUN_KEY, "run_totals": RUN_TOTALS_KEY}
    names |= {"run_refresh": RUN_REFRESH_KEY}
    return {name: key % {"spider": spider} for name, key in names.items()}


#: Seconds between two group commits (fsync of the feeds, then acks).
COMMIT_INTERVAL = 0.5
#: Seconds between two looks for seeds and for work of other workers.
SEED_POLL = 0.2
#: Seconds between two tries of a call waiting at the shared gate, for
#: places other workers freed.
GATE_POLL = 0.01
#: The same while the account is paused by a 439 (the probe is rare anyway).
GATE_POLL_PAUSED = 0.25
#: Seconds before the first and the longest between two tries of Redis
#: during an outage (capped at a quarter of the lease timeout, so that every
#: worker renews its leases within the grace period that follows).
OUTAGE_PROBE_FIRST = 0.25
OUTAGE_PROBE_MAX = 5.0
