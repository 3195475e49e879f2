"""A local stand-in for TMAPI's 1688 API: ``python -m tmapi_crawler.sandbox``.

:mod:`.catalog` makes the data, :mod:`.server` serves it (it imports the
reactor, so nothing here imports it eagerly), :mod:`.harness` starts it and
the other servers as child processes for the tests and benchmarks.
"""
