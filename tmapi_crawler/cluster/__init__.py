"""Distributed mode: many workers, one crawl, through Redis (scrapy-redis).

Nothing here is imported unless ``REDIS_URL`` is set; the add-on then puts
the leased JSON queue (:mod:`.scheduler`, :mod:`.queue`), the Redis
dupefilter (:mod:`.dupefilter`), the shared call gate (:mod:`.gate`) and the
seeds pushed to Redis (:mod:`.seeds`) in place of their one-process
counterparts.  Every key and default is in :mod:`.defaults`, every Lua
script in :mod:`.lua`.
"""
