"""A local stand-in for TMAPI's 1688 API: ``python -m tmapi_crawler.sandbox``."""

from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.server import Faults, Sandbox, make_site

__all__ = ["Catalog", "Faults", "Sandbox", "make_site"]
