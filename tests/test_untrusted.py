"""Seller content is untrusted: a sandbox whose every 4th seller is hostile
(``--hostile-every 4``: formulas, mentions, markdown links and control
characters in titles and SKU names; scripts, event handlers and
``javascript:`` links in descriptions; media URLs inside the network, by
address, through a redirect of an allowed host, and by a name that resolves
there), against a listener on 127.0.0.2 that must receive nothing; each
shop file's description cells rendered in headless Chromium; every cell of
every CSV read back; Discord and Slack payloads from a real crawl."""

from __future__ import annotations

import csv
import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import logged_stat as stat
from tests.helpers import needs, read_jsonl, run_scrapy
from tests.test_operations import Receiver, receiver  # noqa: F401 - the fixture
from tests.test_report import open_in_chromium
from tmapi_crawler.media.hosts import MediaHosts, is_public
from tmapi_crawler.notify.digest import markdown_text, render, slack_text
from tmapi_crawler.store.db import CatalogDB
from tmapi_crawler.store.url import parse_store_url
from tmapi_crawler.untrusted import cell, clean_record, clean_text, html_as_text, is_formula, sanitize_html

SHOP = "b2b-sandbox0000"
PRODUCTS, EVERY = 20, 4
HOSTILE = PRODUCTS // EVERY
#: The hostile description images of a product: by address, redirected, by name.
HOSTILE_IMAGES = 3


# -- the pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.2", False), ("10.1.2.3", False),
        ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
        ("224.0.0.1", False), ("0.0.0.0", False),  # noqa: S104 ("240.0.0.1", False), ("::1", False), ("fe80::1", False),
        ("fc00::1", False), ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True), ("2002:0a00:0001::1", False),
        ("64:ff9b::a00:1", False), ("ff02::1", False), ("::", False), ("not an address", False),
    ],
)  # fmt: skip
def test_only_public_addresses_are_public(address, public):
    assert is_public(address) is public


def test_media_hosts_patterns():
    hosts = MediaHosts.parse("*.alicdn.com, img.example.com  127.0.0.1:8650").naming("http://[::1]:9000")
    allowed = ["https://cbu01.alicdn.com/a.jpg", "https://alicdn.com/a.jpg", "http://img.example.com/a.jpg",
               "http://127.0.0.1:8650/media/a.jpg", "http://[::1]:9000/media/a.jpg"]  # fmt: skip
    for url in allowed:
        assert hosts.refusal(url) is None, url
    refused = {
        "https://alicdn.com.evil.example/a.jpg": "not in TMAPI_MEDIA_HOSTS",
        "http://127.0.0.1:8651/a.jpg": "inside the network",
        "http://169.254.169.254/latest/meta-data/": "inside the network",
        "http://[::ffff:127.0.0.1]/a.jpg": "inside the network",
        "file:///etc/passwd": "not an http(s) URL",
        "http://sub.img.example.com/a.jpg": "not in TMAPI_MEDIA_HOSTS",
    }
    for url, why in refused.items():
        assert why in (hosts.refusal(url) or ""), url
    anywhere = MediaHosts.parse("*")
    assert anywhere.refusal("https://any.example/a.jpg") is None
    assert "inside the network" in (anywhere.refusal("http://10.0.0.5/admin") or "")
    for bad in ("img.*.com", "", "*.", "a/b"):
        with pytest.raises(ValueError, match="host"):
            MediaHosts.parse(bad)


def test_descriptions_keep_their_layout_and_lose_what_acts():
    html = (
        '<div style="color:red;position:fixed"><p onclick="x()">Size <b>M</b></p>'
        '<img src="https://cbu01.alicdn.com/a.jpg" width="750" onerror="x()"><img src="//img.alicdn.com/b.jpg">'
        '<table><tr><td colspan="2">a</td></tr></table><a href="https://detail.1688.com/x">more</a>'
        '<a href="javascript:x()">js</a><img src="data:image/png;base64,AAAA"><script>x()</script>'
        '<iframe src="https://evil.example"></iframe><object data="x"></object><embed src="x"><form><input></form>'
        "<style>p{}</style></div>"
    )
    clean = sanitize_html(html)
    for kept in ('style="color:red"', "<b>M</b>", 'src="https://cbu01.alicdn.com/a.jpg"', 'width="750"',
                 'src="//img.alicdn.com/b.jpg"', 'colspan="2"', 'rel="nofollow noopener"'):  # fmt: skip
        assert kept in clean, kept
    for gone in ("position", "onclick", "onerror", "javascript:", "data:", "<script", "x()", "<iframe", "<object",
                 "<embed", "<form", "<input", "<style"):  # fmt: skip
        assert gone not in clean, gone
    assert html_as_text(html) == "Size M\na\nmorejs"
    assert "<" not in html_as_text("<p>1 &lt; 2</p><script>x</script>").replace("&lt;", "")


def test_cells_that_would_be_formulas_get_a_quote_and_numbers_stay():
    for formula in ("=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "\t=1", "\r=1", '=HYPERLINK("x")'):
        assert cell(formula) == "'" + formula
        assert is_formula(formula) and not is_formula(cell(formula))
    for number in ("-1.5", "+3", "-0.25", "12", "-1e5", "", "plain", "a=b", "1-2"):
        assert cell(number) == number
    assert cell(-3) == -3


def test_control_characters_and_bidi_overrides_leave_the_record():
    assert clean_text("a\x00b\x07c\u202ed\u2066e\tf\ng\x9bh") == ("abcde\tf\ngh", 5)
    record: dict[str, Any] = {
        "title": "t\x00",
        "shop_info": {"shop_name": "s\u202e"},
        "listing": {"title": "l\x1b"},
        "skus": [{"props_names": "颜色:=1+2红\u202e;尺码:M"}],
        "sku_props": [{"prop_name": "颜色\x07", "values": [{"name": "红\u202e"}]}],
        "product_props": [{"k\x00": "v\x00"}, {"ok": "fine"}],
    }
    assert clean_record(record) == 8
    assert json.dumps(record, ensure_ascii=False) == json.dumps(
        {"title": "t", "shop_info": {"shop_name": "s"}, "listing": {"title": "l"},
         "skus": [{"props_names": "颜色:=1+2红;尺码:M"}],
         "sku_props": [{"prop_name": "颜色", "values": [{"name": "红"}]}],
         "product_props": [{"k": "v"}, {"ok": "fine"}]},
        ensure_ascii=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "place",
    ["title", "shop_name", "listing title", "props_names", "prop_name", "value name", "prop key", "prop value"],
)
def test_a_control_character_alone_in_any_seller_text_is_found(place):
    """clean_record looks once at all the texts before cleaning them one by
    one: a control character in a single place is still found there."""
    texts = dict.fromkeys(
        ["title", "shop_name", "listing title", "props_names", "prop_name", "value name", "prop key", "prop value"], "x"
    )
    texts[place] = "x\u202e"
    record: dict[str, Any] = {
        "title": texts["title"],
        "shop_info": {"shop_name": texts["shop_name"]},
        "listing": {"title": texts["listing title"]},
        "skus": [{"props_names": texts["props_names"]}, "not a sku"],
        "sku_props": [{"prop_name": texts["prop_name"], "values": [{"name": texts["value name"]}, 7]}, None],
        "product_props": [{texts["prop key"]: texts["prop value"]}, {"n": 3}],
    }
    assert clean_record(record) == 1
    assert "\u202e" not in json.dumps(record, ensure_ascii=False)


def test_every_control_character_leaves_every_seller_text():
    """Each character CONTROL_CHARS names (C0 and C1 controls but TAB and
    newline, the bidi marks), alone in any place of a record, is found by
    clean_record's one look and removed; plain text is left as it is."""
    from tmapi_crawler.untrusted import CONTROL_CHARS

    def record(place: str, text: str) -> dict[str, Any]:
        texts = dict.fromkeys(["title", "shop", "listing", "sku", "prop", "value", "key", "val"], "x")
        texts[place] = text
        return {
            "title": texts["title"],
            "shop_info": {"shop_name": texts["shop"]},
            "listing": {"title": texts["listing"]},
            "skus": [{"props_names": texts["sku"]}],
            "sku_props": [{"prop_name": texts["prop"], "values": [{"name": texts["value"]}]}],
            "product_props": [{texts["key"]: texts["val"]}],
        }

    controls = [chr(c) for c in range(0x3000) if CONTROL_CHARS.match(chr(c))]
    assert len(controls) == 9 + 21 + 33 + 5 + 4
    for place in ("title", "shop", "listing", "sku", "prop", "value", "key", "val"):
        for char in controls:
            dirty = record(place, f"红{char}色")
            assert clean_record(dirty) == 1, (place, hex(ord(char)))
            assert dirty == record(place, "红色")
    plain = "\t\n".join(chr(c) for c in range(0x20, 0x3000) if not CONTROL_CHARS.match(chr(c)))
    assert clean_record(record("title", plain)) == 0


def test_chat_text_adds_no_mention_and_no_link():
    title = "@everyone [free gift](http://evil.example/gift) <@123> <!channel> *bold* www.evil.example"
    md = markdown_text(title)
    assert "@everyone" not in md and "](" not in md.replace("\\](", "") and "http://" not in md
    assert "www.evil" not in md and "<@" not in md.replace("\\<@", "")
    slack = slack_text(title)
    assert "<!channel>" not in slack and "<@" not in slack and "@everyone" not in slack and "http://" not in slack
    change = {
        "item_id": 1,
        "change": "new",
        "title": title,
        "sku": "=1+2 <b>",
        "url": "https://detail.1688.com/offer/1.html",
    }
    report = {"spider": "shop", "finish_reason": "finished", "changes_by_kind": {"new": 1}, "changes": [change]}
    for payload in render(report, "discord"):
        assert payload["allowed_mentions"] == {"parse": []}
        assert _links(payload["content"]) == ["https://detail.1688.com/offer/1.html"]
    slack_payload = json.dumps(render(report, "slack")[0], ensure_ascii=False)
    assert re.findall(r"<(https?://[^|>]+)\|", slack_payload) == ["https://detail.1688.com/offer/1.html"]


def _links(markdown: str) -> list[str]:
    """The URLs of the Markdown links (not escaped) in *markdown*."""
    return re.findall(r"(?<!\\)\[(?:[^\]\\]|\\.)*(?<!\\)\]\((https?://[^)\s]+)\)", markdown)


# -- a crawl of hostile sellers ----------------------------------------------------------


class Listener:
    """A TCP listener on 127.0.0.2 (inside the network, as a user's admin
    page or a cloud's metadata server): it counts every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    made = Listener()
    yield made
    made.stop()


@pytest.fixture
def hostile(make_sandbox, listener: Listener):
    return make_sandbox("--shops", "1", "--shop-size", str(PRODUCTS), "--hostile-every", str(EVERY),
                        "--hostile-media", f"127.0.0.2:{listener.port}")  # fmt: skip


FORMATS = {"plain.csv": "csv", "skus.csv": "skus", "shop.csv": "shopify", "woo.csv": "woocommerce"}


def hostile_crawl(sb: Any, tmp_path: Path, *settings: str, store: str = "catalog.sqlite") -> Any:
    args = ["crawl", "shop", "-a", f"member_id={SHOP}", "-a", "media=main,desc", "-O", "products.jsonl"]
    for name, form in FORMATS.items():
        args += ["-O", f"{name}:{form}"]
    args += ["-s", f"TMAPI_BASE_URL={sb.url}", "-s", "FILES_STORE=files", "-s", f"TMAPI_STORE={store}"]
    args += ["-s", "TMAPI_MEDIA_HOSTS=*.alicdn.com localhost", "-s", "TMAPI_PROGRESS_INTERVAL=0"]
    for setting in settings:
        args += ["-s", setting]
    done = run_scrapy(*args, cwd=tmp_path, env={"TMAPI_TOKEN": sb.token}, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_no_media_request_reaches_inside_the_network(hostile, listener, tmp_path):
    done = hostile_crawl(hostile, tmp_path)
    assert listener.connections == 0
    assert hostile.stats()["media"]["requests"] > 0  # the other images came
    # Each hostile description image is a failure in the record, never a file.
    assert stat(done.stderr, "tmapi/media/refused") == HOSTILE * HOSTILE_IMAGES
    refused = [f for f in read_jsonl(tmp_path / "failures.jsonl") if f["endpoint"] == "media"]
    assert len(refused) == HOSTILE * HOSTILE_IMAGES
    reasons = " | ".join(f["msg"] for f in refused)
    assert reasons.count("is an address inside the network") == 2 * HOSTILE  # by address, and the redirect's hop
    assert reasons.count("localhost resolves only to addresses inside the network") == HOSTILE
    for record in read_jsonl(tmp_path / "products.jsonl"):
        for entry in record["media"]:
            if "/internal/" in entry["url"]:
                assert entry["path"] is None
    assert not [p for p in (tmp_path / "files").rglob("*") if p.is_file() and p.stat().st_size == 0]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_records_and_the_store_hold_clean_texts(hostile, tmp_path, request, kind):
    store = "catalog.sqlite" if kind == "sqlite" else request.getfixturevalue("postgres")
    done = hostile_crawl(hostile, tmp_path, store=store)
    records = read_jsonl(tmp_path / "products.jsonl")
    assert len(records) == PRODUCTS
    controls = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
    for record in records:
        texts = [record["title"], record["shop_info"]["shop_name"], json.dumps(record["skus"], ensure_ascii=False)]
        texts += [json.dumps(record["sku_props"], ensure_ascii=False)]
        texts += [json.dumps(record["product_props"], ensure_ascii=False)]
        assert not any(controls.search(text) for text in texts), record["item_id"]
    assert stat(done.stderr, "tmapi/cleaned/control_chars") > 0
    # The record keeps the API's HTML as it came: it is a faithful copy.
    assert sum("<script>" in r["detail_html"] for r in records) == HOSTILE
    db = CatalogDB(parse_store_url(store if kind != "sqlite" else str(tmp_path / store)), create=False)
    try:
        titles = [row[0] for row in db.query("SELECT title FROM products")]
        names = [row[0] for row in db.query("SELECT props_names FROM skus")]
        details = [json.loads(row[0]) for row in db.query("SELECT detail FROM products")]
    finally:
        db.close()
    assert len(titles) == PRODUCTS and not any(controls.search(t) for t in titles + names)
    assert all(detail["title"] in titles for detail in details)
    assert sum(t.startswith("=HYPERLINK") for t in titles) == 1  # the texts themselves are kept


def test_no_cell_of_any_csv_starts_a_formula(hostile, tmp_path):
    hostile_crawl(hostile, tmp_path)
    for form in ("shopify-update", "woocommerce-update"):
        done = run_scrapy("export", form, "products.jsonl", "-O", f"{form}.csv", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    escaped = 0
    for path in [
        *(tmp_path / name for name in FORMATS),
        tmp_path / "shopify-update.csv",
        tmp_path / "woocommerce-update.csv",
    ]:
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                for value in row:
                    assert not is_formula(value), (path.name, value)
                    escaped += value.startswith(("'=", "'+", "'-", "'@"))
    assert escaped >= HOSTILE * len(FORMATS)  # the hostile titles, in every file
    # With TMAPI_CSV_FORMULAS=keep they are written as they are.
    kept = tmp_path / "kept"
    kept.mkdir()
    hostile.reset()
    hostile_crawl(hostile, kept, "TMAPI_CSV_FORMULAS=keep")
    with (kept / "shop.csv").open(encoding="utf-8", newline="") as f:
        assert any(is_formula(value) for row in csv.reader(f) for value in row)


def _description_page(cells: list[str], path: Path) -> Path:
    page = "<!doctype html><html><head><meta charset=utf-8><title>safe</title></head><body>"
    page += "".join(f"<section>{html}</section>" for html in cells) + "</body></html>"
    path.write_text(page, encoding="utf-8")
    return path


def _shop_descriptions(folder: Path) -> list[str]:
    cells = []
    for name, column in (("shop.csv", "Body (HTML)"), ("woo.csv", "Description")):
        with (folder / name).open(encoding="utf-8", newline="") as f:
            cells += [row[column] for row in csv.DictReader(f) if row.get(column)]
    return cells


def test_no_description_of_a_shop_file_runs_a_script(hostile, tmp_path):
    needs("chromium")
    hostile_crawl(hostile, tmp_path)
    cells = _shop_descriptions(tmp_path)
    assert len(cells) == 2 * PRODUCTS
    assert all("alicdn" in c or "/media/desc/" in c for c in cells)  # the images are still there
    dom, _ = open_in_chromium(_description_page(cells, tmp_path / "shop.html"), tmp_path)
    assert re.search(r"<title>(.*?)</title>", dom).group(1) == "safe"  # type: ignore[union-attr]
    assert "pwned" not in dom and "<script" not in dom and "onerror" not in dom and "javascript:" not in dom
    # The test can fail: raw, as the API gave it, the scripts run.
    raw = tmp_path / "raw"
    raw.mkdir()
    hostile.reset()
    hostile_crawl(hostile, raw, "TMAPI_EXPORT_HTML=raw")
    dom, _ = open_in_chromium(_description_page(_shop_descriptions(raw), raw / "shop.html"), raw)
    assert re.search(r"<title>pwned-[a-z]+</title>", dom)
    # Plain text: no tag at all.
    text = tmp_path / "text"
    text.mkdir()
    hostile.reset()
    hostile_crawl(hostile, text, "TMAPI_EXPORT_HTML=text")
    assert not any("<" in c for c in _shop_descriptions(text))


def test_the_report_of_hostile_sellers_runs_nothing(hostile, tmp_path):
    needs("chromium")
    hostile_crawl(hostile, tmp_path)
    done = run_scrapy("catalog", "report", "--store", "catalog.sqlite", "-O", "report.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = tmp_path / "report.html"
    title = re.search(r"<title>(.*?)</title>", page.read_text(encoding="utf-8")).group(1)  # type: ignore[union-attr]
    dom, _ = open_in_chromium(page, tmp_path)
    assert re.search(r"<title>(.*?)</title>", dom).group(1) == title  # type: ignore[union-attr]
    assert "pwned" not in dom


@pytest.mark.parametrize("form", ["discord", "slack"])
def test_alerts_mention_no_one_and_link_only_to_the_product(hostile, tmp_path, receiver, form):  # noqa: F811
    hook: Receiver = receiver()
    hostile_crawl(hostile, tmp_path, f"TMAPI_ALERT_WEBHOOK={hook.url}", f"TMAPI_ALERT_FORMAT={form}",
                  "TMAPI_ALERT_CHANGES=new", "TMAPI_ALERT_MAX_CHANGES=50")  # fmt: skip
    assert hook.posts
    text = json.dumps(hook.posts, ensure_ascii=False)
    assert "=HYPERLINK" in text or "\\\\=HYPERLINK" in text  # the hostile titles are there, shown as text
    for mention in ("@everyone", "@here", "<@123456789>", "<!channel>", "http://evil.example"):
        assert mention not in text, mention
    product = r"https://detail\.1688\.com/offer/\d+\.html"
    if form == "discord":
        for post in hook.posts:
            assert post["allowed_mentions"] == {"parse": []}
            links = _links(post["content"])
            assert links and all(re.fullmatch(product, url) for url in links), links
    else:
        links = re.findall(r"<(https?://[^|>]+)\|", text)
        assert links and all(re.fullmatch(product, url) for url in links), links
