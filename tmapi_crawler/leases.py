"""Moved to :mod:`tmapi_crawler.durable.leases`: this path is kept for one release and warns
(tmapi_crawler._moved)."""

from tmapi_crawler._moved import moved

moved(__name__)
