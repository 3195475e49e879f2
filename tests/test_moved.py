"""The package laid out by feature (round 4): every old module path keeps
working for one release, with a deprecation warning, and gives the same
classes; every class path the documentation names loads; requests queued
by an earlier version load."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
from scrapy.exceptions import ScrapyDeprecationWarning
from scrapy.utils.misc import load_object
from scrapy.utils.test import get_crawler

from tests.helpers import ROOT
from tmapi_crawler._moved import MOVED, MOVED_NAMES


@pytest.mark.parametrize(("old", "new"), MOVED.items())
def test_an_old_module_path_warns_and_is_the_new_module(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(ScrapyDeprecationWarning, match=rf"{re.escape(old)} moved to {re.escape(new)}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    sys.modules.pop(old, None)


@pytest.mark.parametrize(
    ("old", "name", "new"), [(old, name, new) for old, names in MOVED_NAMES.items() for name, new in names.items()]
)
def test_a_name_that_left_its_module_is_found_there_with_a_warning(old, name, new):
    """``tmapi_crawler.store.crawl.StorePipeline`` in a user's settings (or
    ``LOG_FORMATTER = "tmapi_crawler.extensions.QuietLogFormatter"``) is
    the class at its new path, with a warning naming that path."""
    with pytest.warns(ScrapyDeprecationWarning, match=rf"{re.escape(old)}\.{name} moved to {re.escape(new)}\.{name}"):
        found = load_object(f"{old}.{name}")
    assert found is getattr(importlib.import_module(new), name)
    with pytest.raises(NameError):  # load_object's word for a name a module lacks
        load_object(f"{old}.NoSuchThing")


def test_a_class_named_by_its_old_path_in_settings_is_the_same_class(monkeypatch):
    """Users' settings and deployed eggs name components by class path: the
    add-on recognises them by identity."""
    from tmapi_crawler.calls.gate import TmapiThrottle
    from tmapi_crawler.media.downloads import MediaFilesPipeline

    monkeypatch.delitem(sys.modules, "tmapi_crawler.throttle", raising=False)
    with pytest.warns(ScrapyDeprecationWarning):
        assert load_object("tmapi_crawler.throttle.TmapiThrottle") is TmapiThrottle
    with pytest.warns(ScrapyDeprecationWarning, match="tmapi_crawler.media.MediaFilesPipeline moved"):
        assert load_object("tmapi_crawler.media.MediaFilesPipeline") is MediaFilesPipeline
    with pytest.raises(NameError):
        load_object("tmapi_crawler.media.NoSuchThing")
    sys.modules.pop("tmapi_crawler.throttle", None)


def test_every_class_path_the_documentation_names_loads():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paths = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        # development.md names old paths, as old paths.
        old = "paths of round 3 (`tmapi_crawler.throttle.TmapiThrottle`,\n`tmapi_crawler.media.MediaFilesPipeline`"
        text = text.replace(old, "")
        names = "(`tmapi_crawler.store.crawl.StorePipeline`,\n`tmapi_crawler.extensions.QuietLogFormatter`"
        text = text.replace(names, "")
        paths |= set(re.findall(r"\btmapi_crawler(?:\.[a-z_]+)+\.[A-Z]\w+", text))
    assert len(paths) >= 8
    moved = [
        p
        for p in paths
        if p.rsplit(".", 1)[0] in MOVED
        or p.rsplit(".", 1)[1] in MOVED_NAMES.get(p.rsplit(".", 1)[0], {})
        or p.startswith("tmapi_crawler.media.Media")
    ]
    assert moved == [], f"the documentation names old paths: {moved}"
    for path in sorted(paths):
        assert load_object(path) is not None, path


def test_a_request_queued_by_an_earlier_version_loads():
    """As round 3 wrote a listing page's request in JOBDIR or Redis: no
    download slot, no robots.txt flag; callbacks by name."""
    from tmapi_crawler.durable.codec import decode_request
    from tmapi_crawler.spiders.shop import ShopSpider

    spider = ShopSpider.from_crawler(get_crawler(ShopSpider, {"TMAPI_TOKEN": "t"}), member_id="b2b-sandbox0000")
    queued = (
        '{"url":"https://api.tmapi.io/1688/shop/items?member_id=b2b-sandbox0000&page=2&page_size=20",'
        '"callback":"parse_page","errback":"on_page_error","headers":{},"body":{"__b64__":""},"cookies":{},'
        '"meta":{"tmapi":{"endpoint":"shop_items","params":{"member_id":"b2b-sandbox0000","page":2,"page_size":20}},'
        '"verbatim_url":true},"encoding":"utf-8","flags":[],"cb_kwargs":{"opts":{"read":"fb1a9b7b5dfa4ad5b419a32f",'
        '"follow":"detail+desc","language":"zh","scene":null,"optimize_title":null,"max_pages":null,"media":[],'
        '"page_size":20},"pages":3},"dont_filter":false,"method":"GET","priority":0}'
    )
    request = decode_request(queued, spider)
    assert request.callback == spider.parse_page and request.errback == spider.on_page_error
    assert request.cb_kwargs["pages"] == 3
    # What every API call carries now: its slot, no robots.txt, no redirect followed.
    assert request.meta["dont_redirect"] is True
    assert request.meta["download_slot"] == "tmapi-api"
