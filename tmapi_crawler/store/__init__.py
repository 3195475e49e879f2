"""The catalog store: recurring crawls that bill only what changed, and say
what changed (docs/catalog.md).

* :mod:`tmapi_crawler.store.changes`: what counts as a change (pure);
* :mod:`tmapi_crawler.store.db`: the SQLite or PostgreSQL database;
* :mod:`tmapi_crawler.store.crawl`: the store in a crawl (an extension, a
  downloader middleware and an item pipeline, registered by the add-on when
  ``TMAPI_STORE`` is set).
"""
