"""A local stand-in for TMAPI's 1688 API: ``python -m tmapi_crawler.sandbox``.

:mod:`.catalog` makes the data, :mod:`.server` serves it (it imports the
reactor, so nothing here imports it eagerly); ``tests/harness.py`` starts it
as a child process for the tests and benchmarks (docs/sandbox.md).
"""
