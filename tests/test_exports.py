"""Exports for stores and spreadsheets: each format parsed back with the csv
module, column by column, against the templates the stores document."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, SCRAPY, run_scrapy, scrapy_env
from tmapi_crawler.exports import (
    Pricing,
    RowsExporter,
    ShopifyExporter,
    SkusExporter,
    WooCommerceExporter,
)

# Shopify's product CSV: the columns of its sample product_template.csv
# (Shopify Help, "Using CSV files to import and export products"), without the
# optional "Google Shopping / ..." and per-market price columns.
SHOPIFY_TEMPLATE = [
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
    "Variant SKU", "Variant Grams", "Variant Inventory Tracker", "Variant Inventory Qty", "Variant Inventory Policy",
    "Variant Fulfillment Service", "Variant Price", "Variant Compare At Price", "Variant Requires Shipping",
    "Variant Taxable", "Variant Barcode", "Image Src", "Image Position", "Image Alt Text", "Gift Card", "SEO Title",
    "SEO Description", "Variant Image", "Variant Weight Unit", "Variant Tax Code", "Cost per item", "Status",
]  # fmt: skip
# WooCommerce's built-in product CSV importer: the default column names (the
# ones its exporter writes; WooCommerce docs, "Product CSV Importer &
# Exporter"), with three attributes.
WOOCOMMERCE_TEMPLATE = [
    "ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog", "Short description",
    "Description", "Date sale price starts", "Date sale price ends", "Tax status", "Tax class", "In stock?", "Stock",
    "Low stock amount", "Backorders allowed?", "Sold individually?", "Weight (kg)", "Length (cm)", "Width (cm)",
    "Height (cm)", "Allow customer reviews?", "Purchase note", "Sale price", "Regular price", "Categories", "Tags",
    "Shipping class", "Images", "Download limit", "Download expiry days", "Parent", "Grouped products", "Upsells",
    "Cross-sells", "External URL", "Button text", "Position",
    "Attribute 1 name", "Attribute 1 value(s)", "Attribute 1 visible", "Attribute 1 global",
    "Attribute 2 name", "Attribute 2 value(s)", "Attribute 2 visible", "Attribute 2 global",
    "Attribute 3 name", "Attribute 3 value(s)", "Attribute 3 visible", "Attribute 3 global",
]  # fmt: skip
# Ours (docs/exports.md).
SKUS_TEMPLATE = [
    "item_id", "skuid", "specid", "prop_1_name", "prop_1_value", "prop_2_name", "prop_2_value", "prop_3_name",
    "prop_3_value", "props_names", "price", "original_price", "currency", "stock", "sale_count", "tiered_prices",
    "weight_kg", "length_cm", "width_cm", "height_cm", "title", "product_url", "shop_name", "shop_url",
    "main_image", "sku_image",
]  # fmt: skip

DOCUMENTED = ROOT / "tmapi_crawler" / "sandbox" / "data" / "item_detail.json"


@pytest.fixture
def product() -> dict:
    data = json.loads(DOCUMENTED.read_text(encoding="utf-8"))["data"]
    data["detail_html"] = "<p>睡袍</p>"
    return data


def export(cls: type[RowsExporter], *products: dict, **kwargs) -> tuple[list[str], list[dict[str, str]], list]:
    problems: list = []
    out = io.BytesIO()
    exporter = cls(out, report=lambda item_id, problem: problems.append((item_id, problem)), **kwargs)
    exporter.start_exporting()
    for p in products:
        exporter.export_item(p)
    exporter.finish_exporting()
    reader = csv.reader(io.StringIO(out.getvalue().decode("utf-8"), newline=""))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader], problems


@pytest.mark.parametrize(
    ("cls", "template"),
    [(SkusExporter, SKUS_TEMPLATE), (ShopifyExporter, SHOPIFY_TEMPLATE), (WooCommerceExporter, WOOCOMMERCE_TEMPLATE)],
)
def test_the_header_is_the_documented_template(cls, template, product):
    header, rows, _ = export(cls, product)
    assert header == template
    assert rows


def test_skus_one_row_per_sku(product):
    _, rows, problems = export(SkusExporter, product)
    assert len(rows) == len(product["skus"]) == 9
    assert problems == []
    row = next(r for r in rows if r["skuid"] == "5674557541674")
    assert row == {
        "item_id": "859086919394", "skuid": "5674557541674", "specid": "6f5320c016c03d575ad1034b79869a28",
        "prop_1_name": "颜色", "prop_1_value": "白色豹纹", "prop_2_name": "尺码", "prop_2_value": "L",
        "prop_3_name": "", "prop_3_value": "", "props_names": "颜色:白色豹纹;尺码:L",
        "price": "29.89", "original_price": "", "currency": "CNY", "stock": "4975", "sale_count": "0",
        "tiered_prices": "1:29.89;100:27.60;300:25.90", "weight_kg": "0.12", "length_cm": "", "width_cm": "",
        "height_cm": "", "title": product["title"], "product_url": "https://detail.1688.com/offer/859086919394.html",
        "shop_name": "灌云县伊山镇春霞服装厂", "shop_url": product["shop_info"]["shop_url"],
        "main_image": product["main_imgs"][0],
        "sku_image": "https://cbu01.alicdn.com/img/ibank/O1CN01zTDmhr1tfzgairTNV_!!2214636595930-0-cib.jpg",
    }  # fmt: skip


def test_shopify_one_variant_row_per_sku_and_extra_image_rows(product):
    product["main_imgs"] = product["main_imgs"] + [f"https://img.example/{n}.jpg" for n in range(5)]
    _, rows, problems = export(ShopifyExporter, product, pricing=Pricing(Decimal("0.14"), Decimal("2")))
    assert problems == []
    variants = [r for r in rows if r["Variant SKU"]]
    images = [r for r in rows if not r["Variant SKU"]]
    assert len(variants) == 9
    assert len(images) == len(product["main_imgs"]) - 9  # the others are on variant rows
    assert {r["Handle"] for r in rows} == {"1688-859086919394"}
    first = variants[0]
    assert first["Title"] == product["title"]
    assert first["Body (HTML)"] == "<p>睡袍</p>"
    assert first["Vendor"] == "灌云县伊山镇春霞服装厂"
    assert (first["Option1 Name"], first["Option2 Name"], first["Option3 Name"]) == ("颜色", "尺码", "")
    assert (first["Published"], first["Status"]) == ("FALSE", "draft")
    assert all(r["Title"] == "" and r["Option1 Name"] == "" for r in variants[1:])
    sku = next(r for r in variants if r["Variant SKU"] == "5674557541674")
    assert (sku["Option1 Value"], sku["Option2 Value"]) == ("白色豹纹", "L")
    assert sku["Variant Price"] == "8.37"  # 29.89 x 0.14 x 2, rounded to cents
    assert sku["Cost per item"] == "4.18"  # 29.89 x 0.14
    assert sku["Variant Grams"] == "120"
    assert sku["Variant Inventory Qty"] == "4975"
    assert sku["Variant Image"].endswith("O1CN01zTDmhr1tfzgairTNV_!!2214636595930-0-cib.jpg")
    positions = [int(r["Image Position"]) for r in rows if r["Image Src"]]
    assert positions == list(range(1, len(product["main_imgs"]) + 1))
    assert len({(r["Option1 Value"], r["Option2 Value"]) for r in variants}) == 9


def test_shopify_limits_are_reported_per_product_never_cut_silently(product):
    product["sku_props"].append(
        {"pid": "2", "prop_name": "款式", "values": [{"vid": "0", "name": "A", "imageUrl": ""}]}
    )
    product["sku_props"].append(
        {"pid": "3", "prop_name": "材质", "values": [{"vid": "0", "name": "棉", "imageUrl": ""}]}
    )
    for sku in product["skus"]:
        sku["props_ids"] += ";2:0;3:0"
    product["title"] = "长" * 300
    _, rows, problems = export(ShopifyExporter, product, shopify_max_variants=5)
    said = [p for _, p in problems]
    assert problems and {i for i, _ in problems} == {859086919394}
    assert "4 properties (颜色, 尺码, 款式, 材质), Shopify takes 3: 款式 / 材质 are one option" in said
    assert "9 SKUs, Shopify takes 5 (TMAPI_SHOPIFY_MAX_VARIANTS): the last 4 are left out" in said
    assert "the title has 300 characters, Shopify takes 255: cut" in said
    variants = [r for r in rows if r["Variant SKU"]]
    assert len(variants) == 5
    assert variants[0]["Option3 Name"] == "款式 / 材质"
    assert variants[0]["Option3 Value"] == "A / 棉"


def test_duplicate_option_values_are_marked_and_reported(product):
    product["skus"][1]["props_ids"] = product["skus"][0]["props_ids"]
    _, rows, problems = export(ShopifyExporter, product)
    second = product["skus"][1]["skuid"]
    assert (859086919394, f"SKU {second} has the same options as another: its last value is marked #{second}") in [
        tuple(p) for p in problems
    ]
    values = [(r["Option1 Value"], r["Option2 Value"]) for r in rows if r["Variant SKU"]]
    assert len(set(values)) == 9


def test_woocommerce_a_variable_product_and_a_variation_per_sku(product):
    _, rows, problems = export(WooCommerceExporter, product, pricing=Pricing(Decimal("0.14"), Decimal("2")))
    assert problems == []
    parent, variations = rows[0], rows[1:]
    assert parent["Type"] == "variable"
    assert parent["SKU"] == "1688-859086919394"
    assert parent["Name"] == product["title"]
    assert parent["Images"].split(", ") == product["main_imgs"]
    assert parent["Attribute 1 name"] == "颜色"
    assert sorted(parent["Attribute 1 value(s)"].split(", ")) == sorted(["黄色豹纹", "白色豹纹", "肤色豹纹"])
    assert sorted(parent["Attribute 2 value(s)"].split(", ")) == ["L", "M", "S"]
    assert len(variations) == 9
    assert {v["Type"] for v in variations} == {"variation"}
    assert {v["Parent"] for v in variations} == {"1688-859086919394"}
    sku = next(v for v in variations if v["SKU"] == "5674557541674")
    assert (sku["Attribute 1 value(s)"], sku["Attribute 2 value(s)"]) == ("白色豹纹", "L")
    assert (sku["Regular price"], sku["Stock"], sku["In stock?"], sku["Weight (kg)"]) == ("8.37", "4975", "1", "0.12")
    assert sku["Images"].endswith("O1CN01zTDmhr1tfzgairTNV_!!2214636595930-0-cib.jpg")


def test_a_product_without_skus_is_one_row(product):
    single = copy.deepcopy(product)
    single["skus"], single["sku_props"] = [], []
    _, shopify, _ = export(ShopifyExporter, single)
    variant = next(r for r in shopify if r["Variant SKU"])
    assert (variant["Option1 Name"], variant["Option1 Value"]) == ("Title", "Default Title")
    assert variant["Variant Price"] == "25.90"  # price_info.price
    assert variant["Variant Inventory Qty"] == str(product["stock"])
    _, woo, _ = export(WooCommerceExporter, single)
    assert [r["Type"] for r in woo] == ["simple"]
    assert woo[0]["Regular price"] == "25.90"


def test_prices_round_half_up_to_cents():
    pricing = Pricing(Decimal("0.1385"), Decimal("2.5"))
    assert pricing.price("29.89") == "10.35"  # 29.89 x 0.1385 x 2.5 = 10.3494125
    assert pricing.price("1.00") == "0.35"  # 0.34625 -> 0.35
    assert pricing.price(None) == ""
    assert pricing.price("n/a") == ""


# -- the command and the crawl ------------------------------------------------------


def test_a_crawl_writes_several_formats_and_scrapy_export_writes_the_same_files(sandbox, tmp_path):
    feeds = ["-O", "products.jsonl", "-O", "skus.csv:skus", "-O", "shop.csv:shopify", "-O", "woo.csv:woocommerce"]
    prices = ["-s", "TMAPI_PRICE_RATE=0.14", "-s", "TMAPI_PRICE_MARKUP=2"]
    done = run_scrapy(
        "crawl", "shop", "-a", "member_id=b2b-22146365959302bc20", *feeds, *prices,
        "-s", f"TMAPI_BASE_URL={sandbox.url}", cwd=tmp_path, env={"TMAPI_TOKEN": sandbox.token},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    products = (tmp_path / "products.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(products) == 60
    for name, file in (("skus", "skus.csv"), ("shopify", "shop.csv"), ("woocommerce", "woo.csv")):
        again = run_scrapy("export", name, "products.jsonl", "-O", f"again-{file}", *prices, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "60 products, " in again.stdout
        assert (tmp_path / f"again-{file}").read_bytes() == (tmp_path / file).read_bytes(), name
    with (tmp_path / "skus.csv").open(encoding="utf-8", newline="") as f:
        skus = list(csv.DictReader(f))
    expected = sum(max(len(json.loads(p)["skus"]), 1) for p in products)
    assert len(skus) == expected


@pytest.mark.slow  # the real command
def test_export_errors_are_one_line_each_and_nothing_is_half_written(tmp_path, product):
    record = {**product, "detail_imgs": [], "listing": None, "source": {"spider": "item", "input": "1"},
              "language": "zh", "crawled_at": "2026-11-23T10:00:00Z"}  # fmt: skip
    good = json.dumps(record, ensure_ascii=False)
    feed = tmp_path / "feed.jsonl"
    feed.write_text(f'{good}\n{{"item_id": 5}}\nnot json\n{good}\n', encoding="utf-8")
    (tmp_path / "shop.csv").write_text("kept\n")
    done = run_scrapy("export", "shopify", "feed.jsonl", "-O", "shop.csv", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Error: feed.jsonl, line 2: not a product record (")
    assert lines[1].startswith("Error: feed.jsonl, line 3: not JSON (")
    assert lines[2] == "Error: 2 lines of feed.jsonl are not product records: nothing was written to shop.csv"
    assert (tmp_path / "shop.csv").read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".shop.csv")] == []
    for args, message in (
        (["export", "amazon", "feed.jsonl", "-O", "x.csv"], "unknown export format 'amazon'; the formats are: "),
        (["export", "skus", "missing.jsonl", "-O", "x.csv"], "cannot read missing.jsonl: no such file"),
        (["export", "skus", "feed.jsonl"], "give the file to write: scrapy export skus feed.jsonl -O skus.csv"),
        (["export", "skus", "feed.jsonl", "-O", "x.csv", "-s", "TMAPI_PRICE_RATE=-1"], "TMAPI_PRICE_RATE='-1'"),
    ):
        done = run_scrapy(*args, cwd=tmp_path)
        assert done.returncode == 2, args
        assert message in done.stderr
        assert done.stderr.strip().count("\n") == 0
    feed.write_text(f"{good}\n", encoding="utf-8")
    done = run_scrapy("export", "woocommerce", "feed.jsonl", "-O", "out/woo.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 products, 10 rows written to out/woo.csv (woocommerce)" in done.stdout
    assert Path(tmp_path / "out" / "woo.csv").stat().st_mode & 0o044  # readable as any file the user writes


def _big_feed(tmp_path: Path, product: dict, copies: int) -> Path:
    record = {**product, "detail_imgs": [], "listing": None, "source": {"spider": "item", "input": "1"},
              "language": "zh", "crawled_at": "2026-11-23T10:00:00Z"}  # fmt: skip
    feed = tmp_path / "big.jsonl"
    with feed.open("w", encoding="utf-8") as f:
        for i in range(copies):
            f.write(json.dumps({**record, "item_id": 100 + i}, ensure_ascii=False) + "\n")
    return feed


def _export_until_its_temporary_file_appears(tmp_path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [SCRAPY, "export", "woocommerce", "big.jsonl", "-O", "woo.csv"], cwd=tmp_path, env=scrapy_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".woo.csv.tmapi-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the export ended before its file appeared"
        time.sleep(0.005)
    return proc


def test_ctrl_c_while_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    """A signal that lands after mkstemp made the file, before it returned
    its name: the file goes too, and the command exits 130 (no traceback)."""
    import tempfile

    from tmapi_crawler.commands import whole_file

    made = tempfile.mkstemp

    def interrupted(*args: Any, **kwargs: Any) -> tuple[int, str]:
        found = made(*args, **kwargs)
        os.close(found[0])
        os.kill(os.getpid(), signal.SIGINT)  # handled here, before mkstemp returns
        return found

    monkeypatch.setattr(tempfile, "mkstemp", interrupted)
    with pytest.raises(SystemExit) as info, whole_file(tmp_path / "woo.csv"):
        pass
    assert info.value.code == 130
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # the real command
def test_a_stopped_export_leaves_no_temporary_file(tmp_path, product):
    """SIGTERM (and Ctrl-C) remove the temporary file at once; one left by
    SIGKILL is removed by the next run to the same file."""
    _big_feed(tmp_path, product, 20_000)
    (tmp_path / "woo.csv").write_text("kept\n")
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = _export_until_its_temporary_file_appears(tmp_path)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr
        assert "Traceback" not in stderr
        assert list(tmp_path.glob(".woo.csv*")) == []
        assert (tmp_path / "woo.csv").read_text() == "kept\n"
    proc = _export_until_its_temporary_file_appears(tmp_path)
    proc.kill()
    proc.communicate()
    [leftover] = list(tmp_path.glob(".woo.csv.tmapi-*"))
    with (tmp_path / "big.jsonl").open(encoding="utf-8") as f:
        first = f.readline()
    (tmp_path / "big.jsonl").write_text(first, encoding="utf-8")  # the next run: a short one
    done = run_scrapy("export", "woocommerce", "big.jsonl", "-O", "woo.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"Removed {leftover.name}" in done.stderr or f"Removed {leftover}" in done.stderr
    assert list(tmp_path.glob(".woo.csv*")) == []


def test_plain_csv_writes_nested_fields_as_json(sandbox, tmp_path):
    done = run_scrapy("crawl", "item", "-a", "item_ids=700000000012", "-O", "out.csv", "-s",
                      f"TMAPI_BASE_URL={sandbox.url}", cwd=tmp_path, env={"TMAPI_TOKEN": sandbox.token})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with (tmp_path / "out.csv").open(encoding="utf-8", newline="") as f:
        [row] = list(csv.DictReader(f))
    skus = json.loads(row["skus"])  # JSON, not a Python repr
    assert isinstance(skus, list) and skus and "skuid" in skus[0]
    assert json.loads(row["source"]) == {"spider": "item", "input": "700000000012"}
    assert isinstance(json.loads(row["main_imgs"]), list)
    assert "\\u" not in row["skus"] and "'" not in row["source"]  # no escapes, no repr quotes
    assert any("\u4e00" <= ch <= "\u9fff" for ch in row["skus"])  # Chinese as it is
