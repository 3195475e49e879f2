"""Scrapy settings of the tmapi_crawler project.

The crawler's own components are registered by the add-on
(:mod:`tmapi_crawler.addon`); the ``TMAPI_*`` settings and their defaults are
in :mod:`tmapi_crawler.config`.  What is here is the Scrapy configuration that
suits a paid JSON API rather than web pages.
"""

from tmapi_crawler.exports import FEED_FORMATS

BOT_NAME = "tmapi_crawler"
SPIDER_MODULES = ["tmapi_crawler.spiders"]
NEWSPIDER_MODULE = "tmapi_crawler.spiders"
COMMANDS_MODULE = "tmapi_crawler.commands"

ADDONS = {"tmapi_crawler.addon.TmapiAddon": 0}

# An API, not a website: no robots.txt, cookies or meta refresh, and the same
# slot for every call.  API calls follow no redirect (they carry
# dont_redirect); media downloads do (Scrapy's RedirectMiddleware, each hop
# checked by the media middleware).  No request names the page it came from:
# Scrapy's RefererMiddleware, which RedirectMiddleware asks, with the
# no-referrer policy.
ROBOTSTXT_OBEY = False
COOKIES_ENABLED = False
REFERRER_POLICY = "no-referrer"
METAREFRESH_ENABLED = False
DEFAULT_REQUEST_HEADERS = {"Accept": "application/json"}
USER_AGENT = "tmapi_crawler (+https://github.com/tmapi-crawler)"

# TMAPI asks clients to wait up to 60 s for an answer.
DOWNLOAD_TIMEOUT = 60

# Every answer is handled by tmapi_crawler.calls.answers.AnswerMiddleware, errors
# included; HttpErrorMiddleware must not drop them before the errback.
HTTPERROR_ALLOW_ALL = True

# How many calls are in flight is decided by tmapi_crawler.calls.gate (adaptive,
# capped by TMAPI_CONCURRENCY); the add-on sets these to leave it room.
# Each callback yields a handful of records at most and the pipelines are
# synchronous; Scrapy 2.19 starts this many tasks per response: one is enough.
CONCURRENT_ITEMS = 1

# Nothing to talk to at run time.
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False

# An answer is a few kB; anything near this is not a TMAPI answer.
DOWNLOAD_MAXSIZE = 16 * 1024 * 1024
DOWNLOAD_WARNSIZE = 4 * 1024 * 1024

# With HTTPCACHE_ENABLED, keep only answers that TMAPI billed (never errors).
HTTPCACHE_POLICY = "tmapi_crawler.calls.cache.ApiCachePolicy"

FEED_EXPORT_ENCODING = "utf-8"
# Formats for spreadsheets and stores (docs/exports.md): -O shop.csv:shopify
FEED_EXPORTERS = FEED_FORMATS
LOG_LEVEL = "INFO"
# No "Scraped from ..." message made for each record unless LOG_LEVEL=DEBUG shows it.
LOG_FORMATTER = "tmapi_crawler.logformatter.QuietLogFormatter"
LOGSTATS_INTERVAL = 0

# The settings that may hold a password or a token (REDIS_URL, TMAPI_STORE,
# TMAPI_ALERT_WEBHOOK, TMAPI_NOTIFY, FILES_STORE, and the token) are read from
# the environment when not given (-s wins) by the add-on and by the commands
# (tmapi_crawler.config.from_environment): never here, so that a project of a
# user's own, with the add-on alone, reads them the same way.
