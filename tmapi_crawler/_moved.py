"""The modules that moved when the package was laid out by feature (round
4): their old paths are kept for one release, because users' settings and
deployed scrapyd eggs name classes by them
(``tmapi_crawler.throttle.TmapiThrottle``, ``tmapi_crawler.media.MediaFilesPipeline``...).
Importing an old path warns (``ScrapyDeprecationWarning``) and gives the
new module itself: the same classes, so that the add-on still recognises
a component a user's settings name by its old path."""

from __future__ import annotations

import importlib
import sys
import warnings

from scrapy.exceptions import ScrapyDeprecationWarning

#: Old module -> new module.
MOVED = {
    "tmapi_crawler.throttle": "tmapi_crawler.calls.gate",
    "tmapi_crawler.handler": "tmapi_crawler.calls.handler",
    "tmapi_crawler.answers": "tmapi_crawler.calls.answers",
    "tmapi_crawler.limits": "tmapi_crawler.calls.limits",
    "tmapi_crawler.paid": "tmapi_crawler.calls.paid",
    "tmapi_crawler.cache": "tmapi_crawler.calls.cache",
    "tmapi_crawler.leases": "tmapi_crawler.durable.leases",
    "tmapi_crawler.jobdir": "tmapi_crawler.durable.jobdir",
    "tmapi_crawler.codec": "tmapi_crawler.durable.codec",
    "tmapi_crawler.locks": "tmapi_crawler.durable.locks",
    "tmapi_crawler.outputs": "tmapi_crawler.durable.feeds",
    "tmapi_crawler.monitors": "tmapi_crawler.notify.monitors",
    "tmapi_crawler.digest": "tmapi_crawler.notify.digest",
    "tmapi_crawler.alerts": "tmapi_crawler.notify.alerts",
    "tmapi_crawler.media_hosts": "tmapi_crawler.media.hosts",
    "tmapi_crawler.report": "tmapi_crawler.store.report",
}
#: Names that left a module that stays: old module -> name -> new module
#: (the old module's ``__getattr__`` calls :func:`moved_name`).
MOVED_NAMES: dict[str, dict[str, str]] = {
    "tmapi_crawler.extensions": {
        "QuietLogFormatter": "tmapi_crawler.logformatter",
        "to_feeds": "tmapi_crawler.durable.feeds",
    },
    "tmapi_crawler.store.crawl": {
        **dict.fromkeys(
            ("CatalogStore", "store_url", "check_store", "store_of", "required_store", "NotStored"),
            "tmapi_crawler.store.extension",
        ),
        **dict.fromkeys(
            ("StoreMiddleware", "StoreSpiderMiddleware", "stored_response"), "tmapi_crawler.store.middlewares"
        ),
        "StorePipeline": "tmapi_crawler.store.pipeline",
        "age_share": "tmapi_crawler.store.decision",
    },
}
#: ``tmapi_crawler.media`` was a module and is the media package now: its
#: classes are found there (with the warning) until the next release.
MEDIA_MODULE = "tmapi_crawler.media.downloads"


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}: use the new path (in settings and imports); the old one goes in the next release",
        ScrapyDeprecationWarning,
        stacklevel=4,
    )


def moved(old: str) -> None:
    """Called by the module at the old path *old*: it becomes the new one."""
    new = MOVED[old]
    _warn(old, new)
    sys.modules[old] = importlib.import_module(new)


def media_attribute(name: str) -> object:
    """``tmapi_crawler.media.<name>`` of the old module, from its new place."""
    module = importlib.import_module(MEDIA_MODULE)
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'tmapi_crawler.media' has no attribute {name!r}")
    _warn(f"tmapi_crawler.media.{name}", f"{MEDIA_MODULE}.{name}")
    return getattr(module, name)


def moved_name(module: str, name: str) -> object:
    """``<module>.<name>`` of an earlier version, from its new place (with
    the warning); an ``AttributeError`` for a name that never moved."""
    new = MOVED_NAMES[module].get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    _warn(f"{module}.{name}", f"{new}.{name}")
    return getattr(importlib.import_module(new), name)
