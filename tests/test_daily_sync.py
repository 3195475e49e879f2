"""A shop kept in sync every day, as docs/exports.md shows it, through the
real commands against the sandbox: a crawl with the store and media, the
shop files with images at TMAPI_MEDIA_URL_BASE; then 1688 changes prices and
stock and delists products; the next crawl; ``catalog export
--changed-since`` and the update files, checked column by column against
each store's documented columns (the oracle lists below)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import SandboxProcess, read_jsonl, run_scrapy

SHOP = "b2b-sandbox0000"
BASE = "https://cdn.example.com/media/"

# Shopify Help, "Using CSV files to import and export products": an update
# needs Handle and Title; a product with variants its option names and
# values (or Shopify replaces its variants); the rest is what changes daily.
SHOPIFY_UPDATE = [
    "Handle", "Title", "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name",
    "Option3 Value", "Variant SKU", "Variant Price", "Variant Compare At Price", "Cost per item",
    "Variant Inventory Qty", "Status",
]  # fmt: skip
# WooCommerce's product CSV importer with "Update existing products": a row
# is found by its SKU; its price and stock.
WOOCOMMERCE_UPDATE = ["SKU", "Regular price", "Stock", "In stock?"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row, strict=True)) for row in reader]


def scrapy(*args: str, cwd: Path, sb: SandboxProcess):
    done = run_scrapy(*args, cwd=cwd, env={"TMAPI_TOKEN": sb.token}, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def public(record: dict, url: str) -> str:
    """What an export must write for *url* of *record*."""
    for entry in record["media"]:
        if entry["url"] == ("https:" + url if url.startswith("//") else url) and entry["path"]:
            return BASE + entry["path"]
    return url


@pytest.fixture
def sb(make_sandbox) -> SandboxProcess:
    return make_sandbox("--shops", "1", "--shop-size", "60")


def test_a_shop_synced_every_day(sb, tmp_path):
    store = str(tmp_path / "catalog.sqlite")
    crawl = ["crawl", "shop", "-a", f"member_id={SHOP}", "-s", f"TMAPI_BASE_URL={sb.url}",
             "-s", f"TMAPI_STORE={store}", "-s", "TMAPI_PROGRESS_INTERVAL=0"]  # fmt: skip

    # Day 1: the whole shop, with its images, into the store's shop files.
    scrapy(*crawl, "-a", "media=main,sku,desc", "-O", "day1.jsonl", "-s", "FILES_STORE=media",
           "-s", "TMAPI_CHANGES_FILE=changes1.jsonl", cwd=tmp_path, sb=sb)  # fmt: skip
    records = {r["item_id"]: r for r in read_jsonl(tmp_path / "day1.jsonl")}
    assert len(records) == 60
    assert any(e["path"] for r in records.values() for e in r["media"])
    media = ("-s", f"TMAPI_MEDIA_URL_BASE={BASE}", "-s", "TMAPI_EXPORT_STATUS=active")
    scrapy("export", "shopify", "day1.jsonl", "-O", "shop.csv", *media, cwd=tmp_path, sb=sb)
    scrapy("export", "woocommerce", "day1.jsonl", "-O", "woo.csv", *media, cwd=tmp_path, sb=sb)
    _, shop = read_csv(tmp_path / "shop.csv")
    by_handle = {row["Handle"]: records[int(row["Handle"].removeprefix("1688-"))] for row in shop}
    stored = 0
    for row in shop:
        record = by_handle[row["Handle"]]
        for column in ("Image Src", "Variant Image"):
            if row[column]:
                assert row[column] in {public(record, u) for u in record["main_imgs"]} | {
                    public(record, v.get("imageUrl") or "") for p in record.get("sku_props") or [] for v in p["values"]
                }
                stored += row[column].startswith(BASE)
        if row["Title"]:
            assert (row["Status"], row["Published"]) == ("active", "TRUE")
            for image in record["detail_imgs"] or []:
                if public(record, image) != image:
                    assert public(record, image) in row["Body (HTML)"]
    assert stored > 0
    _, woo = read_csv(tmp_path / "woo.csv")
    parents = [row for row in woo if row["Type"] in ("variable", "simple")]
    assert {row["Published"] for row in parents} == {"1"}
    for row in parents:
        record = records[int(row["SKU"].removeprefix("1688-"))]
        assert row["Images"] == ", ".join(public(record, url) for url in record["main_imgs"])
    assert sum(url.startswith(BASE) for row in woo for url in row["Images"].split(", ")) > 0

    # A day on 1688: prices and stock move, some products are delisted.
    since = datetime.now(UTC).isoformat()
    revised = sb.revise(0.2, delist=0.1)
    assert revised["changed"] > 0 and revised["delisted"] > 0
    scrapy(*crawl, "-O", "day2.jsonl", "-s", "TMAPI_CHANGES_FILE=changes2.jsonl", cwd=tmp_path, sb=sb)
    changes = read_jsonl(tmp_path / "changes2.jsonl")
    changed_ids = {c["item_id"] for c in changes}
    delisted_ids = {c["item_id"] for c in changes if c["change"] == "delisted"}
    assert delisted_ids and changed_ids - delisted_ids

    # The daily update, as docs/exports.md writes it.
    scrapy("catalog", "export", "--changed-since", since, "-O", "changed.jsonl", "--store", store, cwd=tmp_path, sb=sb)
    changed = {r["item_id"]: r for r in read_jsonl(tmp_path / "changed.jsonl")}
    assert set(changed) == changed_ids  # exactly the products with a change
    assert {i for i, r in changed.items() if r["delisted_at"]} == delisted_ids
    scrapy("export", "shopify-update", "changed.jsonl", "-O", "update.csv", cwd=tmp_path, sb=sb)
    header, update = read_csv(tmp_path / "update.csv")
    assert header == SHOPIFY_UPDATE
    assert len(update) == sum(max(len(r["skus"]), 1) for r in changed.values())
    full = {(row["Handle"], row["Variant SKU"]): row for row in shop}
    for row in update:
        item_id = int(row["Handle"].removeprefix("1688-"))
        assert row["Title"] == ""  # the merchant's title stays
        if item_id in delisted_ids:
            assert (row["Status"], row["Variant Inventory Qty"]) == ("archived", "0")
        else:
            assert row["Status"] == ""
            sku = next(s for s in changed[item_id]["skus"] if str(s["skuid"]) == row["Variant SKU"])
            assert row["Variant Inventory Qty"] == str(sku["stock"])
        # The same variant as the full file named: its options, as written there.
        was = full[(row["Handle"], row["Variant SKU"])]
        for n in (1, 2, 3):
            assert row[f"Option{n} Value"] == was[f"Option{n} Value"]
            assert row[f"Option{n} Name"] == was[f"Option{n} Name"]
    before = {key: row["Variant Price"] for key, row in full.items()}
    moved = [row for row in update if row["Variant Price"] != before[(row["Handle"], row["Variant SKU"])]]
    assert moved  # the new prices are there

    scrapy("export", "woocommerce-update", "changed.jsonl", "-O", "woo-update.csv", cwd=tmp_path, sb=sb)
    header, woo_update = read_csv(tmp_path / "woo-update.csv")
    assert header == WOOCOMMERCE_UPDATE
    assert len(woo_update) == sum(max(len(r["skus"]), 1) for r in changed.values())
    variations = {row["SKU"]: row for row in woo if row["Type"] != "variable"}
    assert {row["SKU"] for row in woo_update} <= set(variations)
    for row in woo_update:
        assert row["Stock"] != ""  # an empty one would stop WooCommerce managing the stock
        assert row["In stock?"] == ("1" if int(row["Stock"]) > 0 else "0")


def test_full_files_archive_a_delisted_product_and_excel_gets_a_bom(sandbox, tmp_path):
    record = {"item_id": 5, "title": "睡衣", "skus": [{"skuid": "1", "sale_price": "9.90", "stock": 7}],
              "main_imgs": [], "detail_imgs": None, "detail_html": None, "listing": None,
              "source": {"spider": "item", "input": "5"}, "language": "zh", "crawled_at": "2026-11-28T03:00:00Z",
              "delisted_at": "2026-11-29T03:00:00Z"}  # fmt: skip
    (tmp_path / "gone.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    for fmt in ("shopify", "woocommerce", "skus"):
        done = run_scrapy("export", fmt, "gone.jsonl", "-O", f"{fmt}.csv", "-s", "TMAPI_EXPORT_BOM=true", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        raw = (tmp_path / f"{fmt}.csv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")
        assert "睡衣" in raw.decode("utf-8-sig")
    _, shop = read_csv_bom(tmp_path / "shopify.csv")
    assert (shop[0]["Status"], shop[0]["Published"], shop[0]["Variant Inventory Qty"]) == ("archived", "FALSE", "0")
    _, woo = read_csv_bom(tmp_path / "woocommerce.csv")
    assert (woo[0]["Type"], woo[0]["Published"], woo[0]["Stock"], woo[0]["In stock?"]) == ("simple", "0", "0", "0")
    plain = run_scrapy("export", "shopify", "gone.jsonl", "-O", "plain.csv", cwd=tmp_path)
    assert plain.returncode == 0
    assert not (tmp_path / "plain.csv").read_bytes().startswith(b"\xef\xbb\xbf")  # by default, none


def read_csv_bom(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "shopify", "x.jsonl", "-O", "s.csv", "-s", "TMAPI_EXPORT_STATUS=published"],
         "TMAPI_EXPORT_STATUS='published'"),
        (["export", "shopify", "x.jsonl", "-O", "s.csv", "-s", "TMAPI_MEDIA_URL_BASE=ftp://files/"],
         "TMAPI_MEDIA_URL_BASE='ftp://files/': is not an http(s) URL"),
        (["catalog", "export", "--changed-since", "2026-11-29", "-O", "c.jsonl"], "no catalog store"),
        (["catalog", "export", "--changed-since", "yesterday", "--store", "c.sqlite"], "--changed-since='yesterday'"),
    ],
)  # fmt: skip
@pytest.mark.slow  # the real command
def test_bad_export_input_is_one_line(tmp_path, args, message):
    (tmp_path / "x.jsonl").write_text("")
    done = run_scrapy(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert message in done.stderr
