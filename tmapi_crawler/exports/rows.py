"""Product records as the rows of spreadsheets and stores: pure functions
(:func:`sku_rows`, :func:`shopify_rows`, :func:`woocommerce_rows`, and the
daily update files' :func:`shopify_update_rows`,
:func:`woocommerce_update_rows`) that also say what they had to adjust to
fit a store's limits, so that the exporters (:mod:`.exporters`) report each
adjustment and nothing is cut silently (docs/exports.md).

Prices in the store formats are the SKU's own (single-unit) price in CNY x
``TMAPI_PRICE_RATE`` x ``TMAPI_PRICE_MARKUP``, rounded to cents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from tmapi_crawler.records import decimal_of, media_url, sku_price
from tmapi_crawler.untrusted import shop_html

if TYPE_CHECKING:
    from collections.abc import Callable

CENT = Decimal("0.01")

#: ``skus``: one row per SKU.  Properties beyond the third stay in
#: ``props_names``, which holds them all as 1688 gives them.
SKU_COLUMNS = [
    "item_id", "skuid", "specid",
    "prop_1_name", "prop_1_value", "prop_2_name", "prop_2_value", "prop_3_name", "prop_3_value", "props_names",
    "price", "original_price", "currency", "stock", "sale_count", "tiered_prices",
    "weight_kg", "length_cm", "width_cm", "height_cm",
    "title", "product_url", "shop_name", "shop_url", "main_image", "sku_image",
]  # fmt: skip

#: Shopify's product CSV, as in its sample ``product_template.csv`` (Shopify
#: Help, "Using CSV files to import and export products"), without the
#: optional Google Shopping and per-market price columns.
SHOPIFY_COLUMNS = [
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
    "Variant SKU", "Variant Grams", "Variant Inventory Tracker", "Variant Inventory Qty", "Variant Inventory Policy",
    "Variant Fulfillment Service", "Variant Price", "Variant Compare At Price", "Variant Requires Shipping",
    "Variant Taxable", "Variant Barcode", "Image Src", "Image Position", "Image Alt Text", "Gift Card",
    "SEO Title", "SEO Description", "Variant Image", "Variant Weight Unit", "Variant Tax Code", "Cost per item",
    "Status",
]  # fmt: skip
SHOPIFY_MAX_OPTIONS = 3
SHOPIFY_MAX_TITLE = 255

#: ``shopify-update``: what an overwrite import needs to find a variant and
#: change its price, cost and stock, and nothing the merchant edits.  Shopify
#: Help ("Using CSV files to import and export products"): an update needs
#: the ``Handle`` and ``Title`` columns; a product with variants needs its
#: option names and values, or Shopify replaces its variants with a default
#: one; a column left out is not changed.  ``Title`` is left empty (the
#: merchant's title stays); ``Status`` is ``archived`` for a delisted product
#: and empty otherwise.
SHOPIFY_UPDATE_COLUMNS = [
    "Handle", "Title",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
    "Variant SKU", "Variant Price", "Variant Compare At Price", "Cost per item", "Variant Inventory Qty", "Status",
]  # fmt: skip

#: The default columns of WooCommerce's built-in product CSV importer (the
#: names its exporter writes; WooCommerce docs, "Product CSV Importer &
#: Exporter"), with three attributes.
WOOCOMMERCE_ATTRIBUTES = 3
WOOCOMMERCE_COLUMNS = [
    "ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog", "Short description",
    "Description", "Date sale price starts", "Date sale price ends", "Tax status", "Tax class", "In stock?", "Stock",
    "Low stock amount", "Backorders allowed?", "Sold individually?", "Weight (kg)", "Length (cm)", "Width (cm)",
    "Height (cm)", "Allow customer reviews?", "Purchase note", "Sale price", "Regular price", "Categories", "Tags",
    "Shipping class", "Images", "Download limit", "Download expiry days", "Parent", "Grouped products", "Upsells",
    "Cross-sells", "External URL", "Button text", "Position",
    *(f"Attribute {n} {part}" for n in range(1, WOOCOMMERCE_ATTRIBUTES + 1)
      for part in ("name", "value(s)", "visible", "global")),
]  # fmt: skip
#: ``woocommerce-update``: WooCommerce's importer, with "Update existing
#: products", finds a product or variation by its ``SKU`` and changes only
#: the columns given.  ``Published`` is left out: the importer reads an empty
#: one as "draft" (``WC_Product_CSV_Importer::expand_data``), which would
#: unpublish what the merchant published; an empty ``Stock`` would stop stock
#: management, so it is always written.
WOOCOMMERCE_UPDATE_COLUMNS = ["SKU", "Regular price", "Stock", "In stock?"]

#: ``TMAPI_EXPORT_STATUS`` -> Shopify's ``Published`` and WooCommerce's
#: ``Published`` (1 published, 0 private, -1 draft).
SHOPIFY_PUBLISHED = {"active": "TRUE", "draft": "FALSE", "archived": "FALSE"}
WOOCOMMERCE_PUBLISHED = {"active": 1, "draft": -1, "archived": 0}


@dataclass(frozen=True, slots=True)
class Pricing:
    """CNY to the store's currency (``rate``), then the store's margin
    (``markup``)."""

    rate: Decimal = Decimal(1)
    markup: Decimal = Decimal(1)

    def cost(self, cny: Any) -> str:
        """The price in the store's currency, without the markup."""
        return _money(cny, self.rate)

    def price(self, cny: Any) -> str:
        return _money(cny, self.rate * self.markup)


def _money(value: Any, factor: Decimal) -> str:
    number = decimal_of(value)
    return "" if number is None else str((number * factor).quantize(CENT, rounding=ROUND_HALF_UP))


def text_of(value: Any) -> str:
    """A value as a cell's text (nothing for ``None``)."""
    return "" if value is None else str(value)


# -- what every format reads of a product ---------------------------------------


@dataclass(slots=True)
class Variant:
    """One SKU (or the product itself, when it has none): its property
    values in the order of ``sku_props``, its image, its data."""

    sku: dict[str, Any]
    values: list[str]
    image: str = ""


@dataclass(slots=True)
class Catalog:
    """A product's property names and variants."""

    names: list[str]
    variants: list[Variant]
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Rows:
    """A product's rows in a format, and what had to be adjusted to fit."""

    rows: list[dict[str, Any]]
    problems: list[str]


def _props(product: dict[str, Any]) -> list[dict[str, Any]]:
    props = product.get("sku_props")
    return [p for p in props if isinstance(p, dict)] if isinstance(props, list) else []


def catalog_of(product: dict[str, Any]) -> Catalog:
    """The product's properties and one variant per SKU, values looked up
    by ``props_ids`` (``pid:vid;...``), or read from ``props_names``."""
    props = _props(product)
    names = [text_of(p.get("prop_name")) for p in props]
    lookup: dict[tuple[str, str], tuple[int, str, str]] = {}
    for index, prop in enumerate(props):
        for value in prop.get("values") or []:
            if isinstance(value, dict):
                key = (text_of(prop.get("pid")), text_of(value.get("vid")))
                lookup[key] = (index, text_of(value.get("name")), text_of(value.get("imageUrl")))
    skus = product.get("skus")
    variants = []
    for sku in skus if isinstance(skus, list) else []:
        if not isinstance(sku, dict):
            continue
        values = [""] * len(names)
        image = ""
        for part in text_of(sku.get("props_ids")).split(";"):
            pid, _, vid = part.partition(":")
            found = lookup.get((pid, vid))
            if found is not None:
                index, name, url = found
                values[index] = name
                image = image or url
        if not any(values):  # no ids to go by: the names as given
            pairs = [p.partition(":") for p in text_of(sku.get("props_names")).split(";") if p]
            by_name = {name: value for name, _, value in pairs}
            values = [by_name.get(name, "") for name in names]
        variants.append(Variant(sku, values, image))
    if not variants:
        single = {"sale_price": (product.get("price_info") or {}).get("price"), "stock": product.get("stock")}
        return Catalog([], [Variant(single, [])])
    return Catalog(names, variants)


def _package(sku: dict[str, Any]) -> dict[str, Any]:
    info = sku.get("package_info")
    return info if isinstance(info, dict) else {}


def _positive(value: Any) -> str:
    number = decimal_of(value)
    return "" if number is None or number == 0 else text_of(value)


# -- skus -------------------------------------------------------------------------


def sku_rows(product: dict[str, Any]) -> Rows:
    """One row per SKU: its properties, prices in CNY as 1688 gives them,
    stock, tiered prices, package, and the product's title, URL, shop and
    images."""
    catalog = catalog_of(product)
    shop = product.get("shop_info") or {}
    tiers = (product.get("tiered_price_info") or {}).get("prices") or []
    tiered = ";".join(
        f"{text_of(t.get('beginAmount'))}:{text_of(t.get('price'))}" for t in tiers if isinstance(t, dict)
    )
    main = product.get("main_imgs") or []
    rows = []
    for variant in catalog.variants:
        sku, package = variant.sku, _package(variant.sku)
        row = {
            "item_id": product.get("item_id"),
            "skuid": text_of(sku.get("skuid")),
            "specid": text_of(sku.get("specid")),
            "props_names": text_of(sku.get("props_names")),
            "price": text_of(sku_price(product, sku)),
            "original_price": text_of(sku.get("origin_price")),
            "currency": text_of(product.get("currency")),
            "stock": text_of(sku.get("stock")),
            "sale_count": text_of(sku.get("sale_count")),
            "tiered_prices": tiered,
            "weight_kg": _positive(package.get("weight")),
            "length_cm": _positive(package.get("length")),
            "width_cm": _positive(package.get("width")),
            "height_cm": _positive(package.get("height")),
            "title": text_of(product.get("title")),
            "product_url": text_of(product.get("product_url")),
            "shop_name": text_of(shop.get("shop_name")),
            "shop_url": text_of(shop.get("shop_url")),
            "main_image": text_of(main[0]) if main else "",
            "sku_image": variant.image,
        }
        for n, (name, value) in enumerate(zip(catalog.names[:3], variant.values[:3], strict=False), start=1):
            row[f"prop_{n}_name"], row[f"prop_{n}_value"] = name, value
        rows.append(row)
    return Rows(rows, catalog.problems)


# -- shops: what does not fit -------------------------------------------------------


def _fold_options(catalog: Catalog, most: int, store: str) -> tuple[list[str], list[list[str]]]:
    """At most *most* options: the last ones are folded into one (``A / B``),
    and the problem is said."""
    names = catalog.names
    values = [v.values for v in catalog.variants]
    if len(names) <= most:
        return names, values
    catalog.problems.append(
        f"{len(names)} properties ({', '.join(names)}), {store} takes {most}: "
        f"{' / '.join(names[most - 1 :])} are one option"
    )
    folded = [*names[: most - 1], " / ".join(names[most - 1 :])]
    return folded, [[*v[: most - 1], " / ".join(x for x in v[most - 1 :] if x)] for v in values]


def _unique(values: list[list[str]], catalog: Catalog) -> list[list[str]]:
    """Two SKUs with the same option values cannot both be variants: the
    later one gets its skuid added to its last value."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for given, variant in zip(values, catalog.variants, strict=True):
        row = given
        if tuple(row) in seen and row:
            skuid = text_of(variant.sku.get("skuid"))
            row = [*row[:-1], f"{row[-1]} #{skuid}"]
            catalog.problems.append(f"SKU {skuid} has the same options as another: its last value is marked #{skuid}")
        seen.add(tuple(row))
        out.append(row)
    return out


def _shop_options(product: dict[str, Any], most: int, store: str) -> tuple[Catalog, list[str], list[list[str]]]:
    """What both store formats start from: the catalog, its option names
    (at most *most*) and each variant's option values, made unique."""
    catalog = catalog_of(product)
    names, values = _fold_options(catalog, most, store)
    return catalog, names, _unique(values, catalog)


def _store_price(product: dict[str, Any], sku: dict[str, Any], pricing: Pricing, catalog: Catalog) -> str:
    """The SKU's price in the store's currency; a SKU without one is said."""
    price = pricing.price(sku_price(product, sku))
    if not price:
        catalog.problems.append(f"SKU {text_of(sku.get('skuid')) or handle_of(product)} has no price")
    return price


def _images(product: dict[str, Any]) -> list[str]:
    return [text_of(i) for i in product.get("main_imgs") or [] if i]


def handle_of(product: dict[str, Any]) -> str:
    """Lowercase letters, digits and hyphens, unique per product."""
    return f"1688-{product.get('item_id')}"


def status_of(product: dict[str, Any], status: str) -> str:
    """The status a shop format gives *product*: *status*
    (``TMAPI_EXPORT_STATUS``), or ``archived`` when 1688 delisted it
    (``scrapy catalog export --delisted`` writes ``delisted_at``)."""
    return "archived" if product.get("delisted_at") else status


def stock_of(product: dict[str, Any], sku: dict[str, Any]) -> str:
    """A SKU's stock as a shop format writes it: 0 for a delisted product."""
    return "0" if product.get("delisted_at") else text_of(sku.get("stock"))


def public_urls(product: dict[str, Any], base: str | None) -> Callable[[str], str]:
    """What a shop format writes for a source URL of *product*: with
    ``TMAPI_MEDIA_URL_BASE`` (*base*), ``base + path`` for a file stored in
    ``FILES_STORE`` (its ``media`` entry has a ``path``); else the URL."""
    if not base:
        return lambda url: url
    prefix = base.rstrip("/") + "/"
    stored = {
        entry["url"]: prefix + str(entry["path"]).lstrip("/")
        for entry in product.get("media") or ()
        if isinstance(entry, dict) and entry.get("path") and isinstance(entry.get("url"), str)
    }
    return lambda url: stored.get(media_url(url) or "", url) if url else url


def public_html(product: dict[str, Any], html: str, public: Callable[[str], str]) -> str:
    """*html* (the description) with each stored description image at its
    public URL, whether the HTML writes it ``https://...`` or ``//...``."""
    for image in product.get("detail_imgs") or ():
        source = media_url(image)
        if source is None or public(source) == source:
            continue
        html = html.replace(source, public(source))
        if source.startswith("https://"):
            html = html.replace(f'"{source[len("https:") :]}', f'"{public(source)}')
    return html


def shopify_rows(
    product: dict[str, Any],
    pricing: Pricing,
    max_variants: int = 2048,
    *,
    status: str = "draft",
    media_base: str | None = None,
    html: str = "sanitized",
) -> Rows:
    """Shopify's product CSV rows: one per variant, then one per image not
    yet placed.  The product's fields are on the first row only; the
    description as ``TMAPI_EXPORT_HTML`` (*html*) says."""
    public = public_urls(product, media_base)
    status = status_of(product, status)
    catalog, names, values = _shop_options(product, SHOPIFY_MAX_OPTIONS, "Shopify")
    variants = list(zip(catalog.variants, values, strict=True))
    if len(variants) > max_variants:
        catalog.problems.append(
            f"{len(variants)} SKUs, Shopify takes {max_variants} (TMAPI_SHOPIFY_MAX_VARIANTS): "
            f"the last {len(variants) - max_variants} are left out"
        )
        variants = variants[:max_variants]
    title = text_of(product.get("title"))
    if len(title) > SHOPIFY_MAX_TITLE:
        catalog.problems.append(f"the title has {len(title)} characters, Shopify takes {SHOPIFY_MAX_TITLE}: cut")
        title = title[:SHOPIFY_MAX_TITLE]
    handle = handle_of(product)
    images = [public(url) for url in _images(product)]
    rows: list[dict[str, Any]] = []
    for index, (variant, option_values) in enumerate(variants):
        sku, package = variant.sku, _package(variant.sku)
        cny = sku_price(product, sku)
        own, original = decimal_of(cny), decimal_of(sku.get("origin_price"))
        weight = decimal_of(package.get("weight"))
        row = {
            "Handle": handle,
            "Variant SKU": text_of(sku.get("skuid")) or handle,
            "Variant Grams": str(int((weight * 1000).to_integral_value(ROUND_HALF_UP))) if weight else "",
            "Variant Inventory Tracker": "shopify",
            "Variant Inventory Qty": stock_of(product, sku),
            "Variant Inventory Policy": "deny",
            "Variant Fulfillment Service": "manual",
            "Variant Price": _store_price(product, sku, pricing, catalog),
            "Variant Compare At Price": pricing.price(original) if original and own and original > own else "",
            "Variant Requires Shipping": "TRUE",
            "Variant Taxable": "TRUE",
            "Variant Image": public(variant.image),
            "Variant Weight Unit": "kg",
            "Cost per item": pricing.cost(cny),
        }
        if names:
            for n, value in enumerate(option_values, start=1):
                row[f"Option{n} Value"] = value
        else:
            row["Option1 Value"] = "Default Title"
        if index == 0:
            row.update(
                {
                    "Title": title,
                    "Body (HTML)": shop_html(public_html(product, text_of(product.get("detail_html")), public), html),
                    "Vendor": text_of((product.get("shop_info") or {}).get("shop_name")),
                    "Tags": "1688",
                    "Published": SHOPIFY_PUBLISHED[status],
                    "Gift Card": "FALSE",
                    "Status": status,
                }
            )
            for n, name in enumerate(names or ["Title"], start=1):
                row[f"Option{n} Name"] = name
        rows.append(row)
    for position, url in enumerate(images, start=1):
        if position <= len(rows):
            rows[position - 1].update({"Image Src": url, "Image Position": position, "Image Alt Text": title})
        else:
            rows.append({"Handle": handle, "Image Src": url, "Image Position": position, "Image Alt Text": title})
    return Rows(rows, catalog.problems)


def woocommerce_rows(
    product: dict[str, Any],
    pricing: Pricing,
    *,
    status: str = "draft",
    media_base: str | None = None,
    html: str = "sanitized",
) -> Rows:
    """WooCommerce's rows: a ``variable`` product and a ``variation`` per SKU
    (``Parent`` is the product's SKU); a ``simple`` product when it has none."""
    public = public_urls(product, media_base)
    catalog, names, values = _shop_options(product, WOOCOMMERCE_ATTRIBUTES, "this CSV")
    parent_sku = handle_of(product)
    title = text_of(product.get("title"))
    images = [public(url) for url in _images(product)]
    parent: dict[str, Any] = {
        "Type": "variable" if names else "simple",
        "SKU": parent_sku,
        "Name": title,
        "Published": WOOCOMMERCE_PUBLISHED[status_of(product, status)],
        "Is featured?": 0,
        "Visibility in catalog": "visible",
        "Description": shop_html(public_html(product, text_of(product.get("detail_html")), public), html),
        "Tax status": "taxable",
        "In stock?": 1,
        "Allow customer reviews?": 1,
        "Tags": "1688",
        "Images": ", ".join(images),
    }
    for n, name in enumerate(names, start=1):
        distinct = list(dict.fromkeys(v[n - 1] for v in values if v[n - 1]))
        parent.update(
            {
                f"Attribute {n} name": name,
                f"Attribute {n} value(s)": ", ".join(_escape(v) for v in distinct),
                f"Attribute {n} visible": 1,
                f"Attribute {n} global": 0,
            }
        )
    rows = [parent]
    for position, (variant, option_values) in enumerate(zip(catalog.variants, values, strict=True), start=1):
        sku, package = variant.sku, _package(variant.sku)
        stock = stock_of(product, sku)
        fields = {
            "Stock": stock,
            "In stock?": 1 if stock.isdigit() and int(stock) > 0 else 0,
            "Regular price": _store_price(product, sku, pricing, catalog),
            "Weight (kg)": _positive(package.get("weight")),
            "Length (cm)": _positive(package.get("length")),
            "Width (cm)": _positive(package.get("width")),
            "Height (cm)": _positive(package.get("height")),
        }
        if not names:  # a simple product: its one "variant" is itself
            parent.update(fields)
            break
        row = {
            "Type": "variation",
            "SKU": text_of(sku.get("skuid")),
            "Name": f"{title} - {', '.join(v for v in option_values if v)}",
            "Published": 1,
            "Tax status": "taxable",
            "Tax class": "parent",
            "Images": public(variant.image),
            "Parent": parent_sku,
            "Position": position,
            **fields,
        }
        for n, (name, value) in enumerate(zip(names, option_values, strict=True), start=1):
            row.update({f"Attribute {n} name": name, f"Attribute {n} value(s)": value, f"Attribute {n} global": 0})
        rows.append(row)
    return Rows(rows, catalog.problems)


def shopify_update_rows(product: dict[str, Any], pricing: Pricing, max_variants: int = 2048) -> Rows:
    """``shopify-update``: a row per variant, found by its handle and option
    values (as ``shopify`` wrote them), with its price, compare-at price,
    cost and stock; a delisted product archived, its stock 0."""
    full = shopify_rows(product, pricing, max_variants)
    archived = "archived" if product.get("delisted_at") else ""
    kept = [column for column in SHOPIFY_UPDATE_COLUMNS if column not in ("Title", "Status")]
    rows = [
        {**{column: row.get(column, "") for column in kept}, "Status": archived}
        for row in full.rows
        if row.get("Variant SKU")  # not an image row
    ]
    return Rows(rows, full.problems)


def woocommerce_update_rows(product: dict[str, Any], pricing: Pricing) -> Rows:
    """``woocommerce-update``: a row per variation (the product's own row for
    a simple product), found by its SKU, with its price and stock; a
    delisted product's stock 0."""
    full = woocommerce_rows(product, pricing)
    rows = [
        {column: row.get(column, "") for column in WOOCOMMERCE_UPDATE_COLUMNS}
        for row in full.rows
        if row.get("Type") != "variable"
    ]
    return Rows(rows, full.problems)


def _escape(value: str) -> str:
    """WooCommerce splits attribute values on commas; a comma in a value is
    written ``\\,``."""
    return value.replace(",", "\\,")
