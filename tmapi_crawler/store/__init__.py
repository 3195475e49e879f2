"""The catalog store: recurring crawls that bill only what changed, and say
what changed (docs/catalog.md).

* in a crawl: :mod:`.extension` (the store's reader and writer, the refresh
  decision), :mod:`.middlewares` (calls answered from the store),
  :mod:`.pipeline` (records into the store), registered by the add-on when
  ``TMAPI_STORE`` is set; :mod:`.freshness` (what to refresh) and
  :mod:`.watch` (the watch list);
* the database: :mod:`.db` (one connection), :mod:`.dialect`,
  :mod:`.schema`, and its jobs :mod:`.lookup`, :mod:`.write`,
  :mod:`.listings`, :mod:`.ledger`, :mod:`.catalog`, :mod:`.checks`;
* what counts as a change: :mod:`.changes` (pure);
* reading it out for people: :mod:`.history` and :mod:`.report`.
"""
