"""tmapi_crawler: 1688.com products through TMAPI's HTTP API, with Scrapy."""

__version__ = "0.1.0"
