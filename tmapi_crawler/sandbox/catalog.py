"""The sandbox's deterministic catalog of shops, categories and products.

Everything is a pure function of the seed and the ids, so two sandboxes with
the same ``--seed`` serve the same bytes.  The documented examples
(``data/*.json``, copied from the TMAPI documentation) are part of it:

* item ``859086919394`` (``item_detail``) is the first product of shop
  ``b2b-22146365959302bc20``, its documented seller;
* shop ``jane727`` has its documented ``total_count`` (2465) and starts with
  its three documented listing entries;
* category ``1031910`` starts with its two documented entries and keeps the
  documented page size (2);
* item ``622619146604`` has its documented description.

Any other numeric item id is a product too (its data generated from the id),
so the ``item`` spider can be tried with any id.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cached_property, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from tmapi_crawler.sandbox.living import LivingProduct, LivingWorld

if TYPE_CHECKING:
    from collections.abc import Callable

DOC_SELLER = "b2b-22146365959302bc20"
DOC_SHOP = "jane727"
DOC_SHOP_TOTAL = 2465
DOC_CATEGORY = 1031910
DOC_CATEGORY_PAGE_SIZE = 2
DOC_DETAIL_ID = 859086919394
DOC_DESC_ID = 622619146604
FIRST_CATEGORY = 1032001  # generated categories: 1032001, 1032002, ...

_WORDS = {
    "zh": {
        "adj": ["新款", "韩版", "欧美", "简约", "复古", "时尚", "加厚", "宽松", "百搭", "高级感"],
        "noun": ["连衣裙", "睡衣", "项链", "手提包", "T恤", "牛仔裤", "外套", "帽子", "运动鞋", "围巾"],
        "color": ["黑色", "白色", "红色", "蓝色", "灰色", "粉色"],
        "size": ["S", "M", "L", "XL"],
        "colour_prop": "颜色",
        "size_prop": "尺码",
        "unit": "件",
        "tags": ["7天无理由退货", "晚发必赔", "48小时发货"],
        "location": "浙江省金华市",
        "shop": "义乌市{}贸易有限公司",
    },
    "en": {
        "adj": [
            "New", "Korean-style", "Western", "Minimalist", "Vintage",
            "Fashion", "Thick", "Loose", "Classic", "Premium",
        ],
        "noun": ["dress", "pajamas", "necklace", "handbag", "T-shirt", "jeans", "coat", "hat", "sneakers", "scarf"],
        "color": ["black", "white", "red", "blue", "grey", "pink"],
        "size": ["S", "M", "L", "XL"],
        "colour_prop": "Color",
        "size_prop": "Size",
        "unit": "piece",
        "tags": ["7-day returns", "Late delivery compensation", "Ships in 48 hours"],
        "location": "Jinhua, Zhejiang",
        "shop": "Yiwu {} Trading Co., Ltd.",
    },
}  # fmt: skip


def words(language: str) -> dict[str, Any]:
    """The vocabulary of *language*: Chinese and English have their own; the
    other languages reuse the English one, marked with the language code, so
    that every language visibly changes the text fields."""
    if language in _WORDS:
        return _WORDS[language]
    return _tagged_words(language)


@lru_cache(maxsize=16)
def _tagged_words(language: str) -> dict[str, Any]:
    base = _WORDS["en"]
    tag = f"[{language}] "
    out: dict[str, Any] = {}
    for key, value in base.items():
        if isinstance(value, list) and key not in ("size",):
            out[key] = [tag + v for v in value]
        elif isinstance(value, str) and key != "shop":
            out[key] = tag + value
        else:
            out[key] = value
    return out


def translate(text: str, language: str) -> str:
    """Text of the documented (Chinese) examples in another language."""
    return text if language == "zh" else f"[{language}] {text}"


def _doc(name: str) -> dict[str, Any]:
    raw = resources.files(__package__).joinpath("data", f"{name}.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(raw)["data"]
    return doc


@lru_cache(maxsize=1)
def documented() -> dict[str, dict[str, Any]]:
    return {name: _doc(name) for name in ("item_detail", "item_desc", "shop_items", "category_items")}


def _rng(*parts: object) -> random.Random:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True, slots=True)
class Summary:
    """What listings show of a product, and what filters and sorting use."""

    item_id: int
    shop: int  # index into Catalog.shops
    price_cents: int
    sales: int
    created: datetime
    shop_cat_id: str
    super_factory: bool
    dropshipping: bool
    free_shipping: bool

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"


@dataclass(slots=True)
class Shop:
    member_id: str
    index: int
    size: int
    documented_entries: list[dict[str, Any]] = field(default_factory=list)
    first_ids: list[int] = field(default_factory=list)  # documented products first

    @property
    def shop_cat_ids(self) -> list[str]:
        return [f"{1000 + self.index * 10 + k}" for k in range(1, 5)]


class Catalog:
    """Shops and categories of configurable sizes, generated from *seed*."""

    def __init__(
        self,
        seed: int = 0,
        shops: int = 3,
        shop_size: int = 60,
        categories: int = 3,
        category_size: int = 60,
        category_page_size: int = 20,
        repeat_every: int = 0,
        hostile_every: int = 0,
        hostile_media: str | None = None,
        living: bool = False,
    ):
        self.seed = seed
        #: The living catalog (tmapi_crawler.sandbox.living), or None: a still one.
        self.living = LivingWorld(seed) if living else None
        #: Every n-th generated product's seller is hostile (0: none): see HOSTILE_TITLES.
        self.hostile_every = hostile_every
        #: ``host:port`` the hostile sellers' media URLs point at (an address
        #: inside the user's network, in the tests: 127.0.0.2 and a listener).
        self.hostile_media = hostile_media
        self.shop_size = shop_size
        self.category_size = category_size
        self.category_page_size = category_page_size
        self.repeat_every = repeat_every
        self.id_base = 700_000_000_000 + (seed % 1000) * 100_000_000
        docs = documented()
        self.shops: list[Shop] = [
            Shop(DOC_SELLER, 0, shop_size, first_ids=[DOC_DETAIL_ID]),
            Shop(
                DOC_SHOP,
                1,
                DOC_SHOP_TOTAL,
                documented_entries=docs["shop_items"]["items"],
                first_ids=[int(e["item_id"]) for e in docs["shop_items"]["items"]],
            ),
        ]
        self.shops += [Shop(f"b2b-sandbox{k:04d}", 2 + k, shop_size) for k in range(shops)]
        self.shops_by_member = {shop.member_id: shop for shop in self.shops}
        self.n_categories = categories
        self._doc_listing: dict[int, dict[str, Any]] = {int(e["item_id"]): e for e in docs["shop_items"]["items"]}
        self._doc_listing.update({int(e["item_id"]): e for e in docs["category_items"]["items"]})
        #: How many times each generated product changed (``revise``), and
        #: the products no listing names any more.
        self.revisions: dict[int, int] = {}
        self.delisted: set[int] = set()
        self.generation = 0
        #: Where the generated products' images and videos are: the
        #: sandbox's own URL (set once it listens); ``None`` gives 1688 CDN
        #: URLs, as the documented examples keep.
        self.media_base: str | None = None

    # -- changes between crawls ------------------------------------------------

    def revise(self, share: float, delist: float = 0.0) -> dict[str, int]:
        """A day on 1688: *share* of the generated products change their price
        (and so their listing entry) and their stock, some selling out; a
        *delist* share leaves every listing.  Deterministic for a seed."""
        self.generation += 1
        rng = _rng(self.seed, "revise", self.generation)
        changed = delisted = 0
        for shop in self.shops:
            for index in range(len(shop.first_ids), shop.size if shop.index != 1 else 0):
                item_id = self.shop_item_id(shop, index)
                if item_id in self.delisted:
                    continue
                draw = rng.random()
                if draw < share:
                    self.revisions[item_id] = self.revisions.get(item_id, 0) + 1
                    changed += 1
                elif draw < share + delist:
                    self.delisted.add(item_id)
                    delisted += 1
        self.summary.cache_clear()
        self.shop_items.cache_clear()
        self.category_items.cache_clear()
        return {"generation": self.generation, "changed": changed, "delisted": delisted}

    # -- products -----------------------------------------------------------

    def shop_item_id(self, shop: Shop, index: int) -> int:
        if index < len(shop.first_ids):
            return shop.first_ids[index]
        return self.id_base + shop.index * 10_000_000 + index

    def shop_of(self, item_id: int) -> int:
        """The index of the shop a product belongs to (any id has one)."""
        for shop in self.shops[:2]:
            if item_id in shop.first_ids:
                return shop.index
        offset = item_id - self.id_base
        if 0 <= offset < len(self.shops) * 10_000_000:
            index = offset // 10_000_000
            if offset % 10_000_000 < self.shops[index].size:
                return index
        # A product of no shop of ours: a shop of its own, made up from the id.
        return -1 - (item_id % 997)

    def member_id_of(self, shop_index: int) -> str:
        if shop_index >= 0:
            return self.shops[shop_index].member_id
        return f"b2b-other{-shop_index:04d}"

    @lru_cache(maxsize=200_000)  # noqa: B019 - the catalog lives as long as the server
    def summary(self, item_id: int) -> Summary:
        shop_index = self.shop_of(item_id)
        rng = _rng(self.seed, "summary", item_id)
        doc = self._doc_listing.get(item_id)
        if doc is not None and doc.get("price"):
            price_cents = round(float(doc["price"]) * 100)
        elif doc is not None:
            price_cents = round(float(doc["price_info"]["sale_price"]) * 100)
        else:
            price_cents = rng.randint(150, 30000)
        revision = self.revisions.get(item_id, 0)
        if revision:
            price_cents = max(100, price_cents * _rng(self.seed, "price", item_id, revision).randint(70, 130) // 100)
        shop_cat_ids = self.shops[shop_index].shop_cat_ids if shop_index >= 0 else ["1000"]
        return Summary(
            item_id=item_id,
            shop=shop_index,
            price_cents=price_cents,
            sales=rng.randint(0, 20000),
            created=datetime(2021, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 2_000_000)),
            shop_cat_id=rng.choice(shop_cat_ids),
            super_factory=rng.random() < 0.3,
            dropshipping=rng.random() < 0.6,
            free_shipping=rng.random() < 0.4,
        )

    def hostile(self, item_id: int) -> int | None:
        """Which of HOSTILE_TITLES a hostile seller's product carries
        (``None``: an honest one)."""
        if not self.hostile_every or item_id in self._doc_listing or item_id in (DOC_DETAIL_ID, DOC_DESC_ID):
            return None
        number = item_id % 10_000_000
        if number % self.hostile_every:
            return None
        return (number // self.hostile_every) % len(HOSTILE_TITLES)

    def title(self, item_id: int, language: str) -> str:
        doc = self._doc_listing.get(item_id)
        if doc is not None:
            return translate(doc["title"], language)
        if item_id == DOC_DETAIL_ID:
            return translate(documented()["item_detail"]["title"], language)
        rng = _rng(self.seed, "title", item_id)
        w = words(language)
        sep = "" if language == "zh" else " "
        title = sep.join([rng.choice(w["adj"]), rng.choice(w["adj"]), rng.choice(w["noun"]), f"#{item_id % 10000}"])
        kind = self.hostile(item_id)
        return title if kind is None else HOSTILE_TITLES[kind].format(title=title)

    def image(self, item_id: int, k: int) -> str:
        if self.media_base is not None:
            return f"{self.media_base}/media/img/{item_id}/{k}.jpg"
        return f"https://cbu01.alicdn.com/img/ibank/O1CN01sbx{item_id}{k:02d}_!!{self.seed}-0-cib.jpg"

    def swatch(self, item_id: int, shop: int, colour: int, v: int) -> str:
        """A SKU's colour image: on the sandbox, one per shop and colour,
        shared by the shop's products (as sellers reuse them)."""
        if self.media_base is not None:
            return f"{self.media_base}/media/sku/{shop}/{colour}.jpg"
        return self.image(item_id, 10 + v)

    def desc_image(self, item_id: int, k: int) -> str:
        if self.media_base is not None:
            return f"{self.media_base}/media/desc/{item_id}/{k}.jpg"
        return f"https://cbu01.alicdn.com/img/ibank/2024/{item_id % 1000:03d}/{k:03d}/{item_id}{k}_{self.seed}.jpg"

    def video(self, item_id: int) -> str:
        """A third of the generated products have a video (on the sandbox only)."""
        if self.media_base is None or _rng(self.seed, "video", item_id).random() >= 1 / 3:
            return ""
        return f"{self.media_base}/media/video/{item_id}.mp4"

    # -- listings -----------------------------------------------------------

    @cached_property
    def _sequence(self) -> list[int]:
        """Every generated shop's products, interleaved: categories are slices."""
        gen = self.shops[2:] or self.shops[:1]
        longest = max(shop.size for shop in gen)
        return [self.shop_item_id(shop, i) for i in range(longest) for shop in gen if i < shop.size]

    def category_ids(self) -> list[int]:
        return [DOC_CATEGORY] + [FIRST_CATEGORY + k for k in range(self.n_categories)]

    @lru_cache(maxsize=64)  # noqa: B019
    def category_items(self, cat_id: int) -> list[int] | None:
        """The products of a category, in listing order; consecutive
        categories share half of their products."""
        cats = self.category_ids()
        if cat_id not in cats:
            return None
        k = cats.index(cat_id)
        seq = self._sequence
        start = k * (self.category_size // 2)
        ids = [seq[(start + i) % len(seq)] for i in range(min(self.category_size, len(seq)))]
        if cat_id == DOC_CATEGORY:
            ids = [int(e["item_id"]) for e in documented()["category_items"]["items"]] + ids
        if self.delisted:
            ids = [item_id for item_id in ids if item_id not in self.delisted]
        if self.repeat_every:
            # 1688 sometimes lists a product twice as rankings shift.
            out: list[int] = []
            for i, item_id in enumerate(ids):
                out.append(item_id)
                if (i + 1) % self.repeat_every == 0:
                    out.append(item_id)
            ids = out
        return ids

    def category_page_size_of(self, cat_id: int) -> int:
        return DOC_CATEGORY_PAGE_SIZE if cat_id == DOC_CATEGORY else self.category_page_size

    @lru_cache(maxsize=256)  # noqa: B019
    def shop_items(
        self,
        member_id: str,
        sort: str,
        shop_cat_id: str,
        price_start: int | None,
        price_end: int | None,
    ) -> list[int] | None:
        shop = self.shops_by_member.get(member_id)
        if shop is None:
            return None
        ids = [self.shop_item_id(shop, i) for i in range(shop.size)]
        if self.delisted:
            ids = [item_id for item_id in ids if item_id not in self.delisted]
        if shop_cat_id or price_start is not None or price_end is not None:
            kept = []
            for item_id in ids:
                s = self.summary(item_id)
                if shop_cat_id and s.shop_cat_id != shop_cat_id:
                    continue
                if price_start is not None and s.price_cents < price_start:
                    continue
                if price_end is not None and s.price_cents > price_end:
                    continue
                kept.append(item_id)
            ids = kept
        keys: dict[str, Callable[[int], float]] = {
            "sales": lambda i: -self.summary(i).sales,
            "price_up": lambda i: self.summary(i).price_cents,
            "price_down": lambda i: -self.summary(i).price_cents,
            "time_up": lambda i: self.summary(i).created.timestamp(),
            "time_down": lambda i: -self.summary(i).created.timestamp(),
        }
        if sort in keys:
            ids = sorted(ids, key=keys[sort])
        return ids

    def shop_entry(self, item_id: int, language: str) -> dict[str, Any]:
        doc = self._doc_listing.get(item_id)
        if doc is not None and isinstance(doc.get("item_id"), str):
            return doc
        s = self.summary(item_id)
        rng = _rng(self.seed, "entry", item_id)
        price = s.price
        imgs = [self.image(item_id, k) for k in range(3)]
        live = self._living(item_id)
        if live is not None:
            price = _cents(live.cheapest_cents)
        entry = {
            "item_id": str(item_id),
            "title": self.title(item_id, language),
            "img": imgs[0],
            "main_imgs": imgs,
            "video_id": str(rng.randint(10**11, 10**12 - 1)) if rng.random() < 0.5 else "",
            "category_path": [str(rng.randint(10**7, 10**9)) for _ in range(rng.randint(3, 6))],
            "category_name": rng.choice(words(language)["noun"]),
            "price": price,
            "price_info": {
                "drop_ship_price": f"{s.price_cents * 1.5 / 100:.2f}",
                "wholesale_price": price,
                "origin_price": price.rstrip("0").rstrip("."),
                "agent_price": price.rstrip("0").rstrip("."),
            },
            "quantity_begin": str(rng.choice([1, 2, 3, 5, 10])),
            "new_product": rng.random() < 0.1,
            "sale_info": {
                "gmv_30days": f"{s.sales * s.price_cents / 400:.2f}",
                "gmv_90days": f"{s.sales * s.price_cents / 100:.2f}",
                "sale_quantity_30days": str(s.sales // 4),
                "sale_quantity_90days": str(s.sales),
                "orders_count_30days": str(s.sales // 20),
            },
            "primary_rank_score": "0",
            "type": "SALE",
            "unit": "PCS",
            "created_time": s.created.astimezone(_CST).strftime("%Y-%m-%dT%H:%M:00+0800"),
            "status": "published",
        }
        if live is not None:
            entry["sale_info"] |= {
                "sale_quantity_30days": str(live.units_30d),
                "orders_count_30days": str(live.orders_30d),
            }
        return entry

    def category_entry(self, item_id: int, language: str) -> dict[str, Any]:
        doc = self._doc_listing.get(item_id)
        if doc is not None and isinstance(doc.get("item_id"), int):
            return doc
        s = self.summary(item_id)
        rng = _rng(self.seed, "centry", item_id)
        member = self.member_id_of(s.shop)
        live = self._living(item_id)
        price = _cents(live.cheapest_cents) if live is not None else s.price
        sales = live.units_30d if live is not None else s.sales
        return {
            "item_id": item_id,
            "product_url": f"https://detail.1688.com/offer/{item_id}.html",
            "title": self.title(item_id, language),
            "img": self.image(item_id, 0),
            "price": "",
            "price_info": {
                "sale_price": price,
                "show_price": price,
                "origin_price": f"{s.price_cents * 1.2 / 100:.2f}",
            },
            "quantity_begin": rng.choice([1, 2, 3, 50, 200]),
            "sales_count": str(sales),
            "sale_info": {"sale_quantity_int": sales, "buyer_count": sales // 2},
            "shop_info": {
                "login_id": member,
                "shop_url": f"https://{member}.1688.com",
                "company_name": words(language)["shop"].format(member),
                "is_super_factory": s.super_factory,
                "shop_repurchase_rate": f"{rng.uniform(5, 60):.2f}",
            },
        }

    # -- products -----------------------------------------------------------

    def detail(self, item_id: int, language: str) -> dict[str, Any]:
        if item_id == DOC_DETAIL_ID:
            doc = documented()["item_detail"]
            if language == "zh":
                return doc
            doc = copy.deepcopy(doc)
            doc["title"] = translate(doc["title"], language)
            return doc
        return self._generated_detail(item_id, language)

    def _generated_detail(self, item_id: int, language: str) -> dict[str, Any]:
        s = self.summary(item_id)
        rng = _rng(self.seed, "detail", item_id)
        revision = self.revisions.get(item_id, 0)
        # A revised product's stock changes; now and then it sells out.
        stock_rng = _rng(self.seed, "stock", item_id, revision) if revision else rng
        sold_out = bool(revision) and stock_rng.random() < 0.2
        w = words(language)
        member = self.member_id_of(s.shop)
        colours = rng.sample(w["color"], rng.randint(1, 3))
        sizes = rng.sample(w["size"], rng.randint(1, 3))
        sku_props = [
            {
                "pid": "0",
                "prop_name": w["colour_prop"],
                "values": [
                    {"vid": str(v), "name": name, "imageUrl": self.swatch(item_id, s.shop, w["color"].index(name), v)}
                    for v, name in enumerate(colours)
                ],
            },
            {
                "pid": "1",
                "prop_name": w["size_prop"],
                "values": [{"vid": str(v), "name": name, "imageUrl": ""} for v, name in enumerate(sizes)],
            },
        ]
        base = s.price_cents
        tiers = [(1, base + base // 10), (50, base + base // 20), (200, base)]
        top_price = _cents(tiers[0][1])
        skus: list[dict[str, Any]] = []
        for ci, colour in enumerate(colours):
            for si, size in enumerate(sizes):
                skus.append(
                    {
                        "skuid": str(5_000_000_000_000 + item_id % 10**9 * 100 + ci * 10 + si),
                        "specid": hashlib.md5(f"{item_id}:{ci}:{si}".encode(), usedforsecurity=False).hexdigest(),
                        "sale_price": top_price,
                        "origin_price": None,
                        "stock": 0 if sold_out else stock_rng.randint(0, 5000),
                        "props_ids": f"0:{ci};1:{si}",
                        "props_names": f"{w['colour_prop']}:{colour};{w['size_prop']}:{size}",
                        "sale_count": rng.randint(0, 50),
                        "package_info": {
                            "weight": round(rng.uniform(0.05, 2), 2),
                            "length": 0,
                            "width": 0,
                            "height": 0,
                            "volume": 0,
                        },
                    }
                )
        stock = sum(sku["stock"] for sku in skus)
        price_params = [{"beginAmount": str(n), "price": _cents(c)} for n, c in tiers]
        mix = {"mix_amount": 10000, "mix_begin": 0, "mix_num": 1000, "shop_mix_num": 2147483647}
        detail = {
            "item_id": item_id,
            "product_url": f"https://detail.1688.com/offer/{item_id}.html",
            "title": self.title(item_id, language),
            "category_id": 1_000_000 + rng.randint(0, 99_999),
            "root_category_id": rng.choice([312, 10166, 54, 97]),
            "currency": "CNY",
            "offer_unit": w["unit"],
            "product_props": [
                {w["colour_prop"]: ",".join(colours)},
                {w["size_prop"]: ",".join(sizes)},
            ],
            "main_imgs": [self.image(item_id, k) for k in range(rng.randint(3, 8))],
            "video_url": self.video(item_id),
            "detail_url": f"https://itemcdn.tmall.com/1688offer/icoss{item_id:x}",
            "sale_count": str(s.sales),
            "sale_info": {"sale_quantity_90days": s.sales},
            "price_info": {
                "price": _cents(base),
                "price_min": _cents(base),
                "price_max": top_price,
                "origin_price_min": None,
                "origin_price_max": None,
                "discount_price": "",
            },
            "tiered_price_info": {"begin_num": 1, "prices": price_params},
            "mixed_batch": mix,
            "shop_info": {
                "shop_name": w["shop"].format(member),
                "shop_url": f"https://winport.m.1688.com/page/index.html?memberId={member}",
                "seller_login_id": member,
                "seller_user_id": str(2_200_000_000_000 + abs(s.shop)),
                "seller_member_id": member,
            },
            "delivery_info": {
                "location": w["location"],
                "location_code": "34323526",
                "delivery_fee": 0 if s.free_shipping else rng.randint(2, 12),
                "unit_weight": 0,
                "template_id": str(rng.randint(10**7, 10**8)),
            },
            "service_tags": w["tags"][: rng.randint(1, 3)],
            "sku_price_scale": f"{_cents(base)}-{top_price}",
            "sku_price_scale_original": "null",
            "sku_price_range": {
                "begin_num": 1,
                "stock": stock,
                "sku_param": price_params,
                "mix_param": {
                    "mixNum": 1000,
                    "mixAmount": 10000,
                    "shopMixNum": 2147483647,
                    "mixBegin": 0,
                    "supportMix": True,
                },
            },
            "sku_props": sku_props,
            "skus": skus,
            "is_sold_out": stock == 0,
            "stock": stock,
            "promotions": [],
        }
        if self.living is not None:
            _live(detail, self.living.product(item_id, len(skus), base))
        return detail if self.hostile(item_id) is None else _hostile_detail(detail)

    def _living(self, item_id: int) -> LivingProduct | None:
        """The living state of a generated product (made with its detail)."""
        if self.living is None or item_id in self._doc_listing or item_id in (DOC_DETAIL_ID, DOC_DESC_ID):
            return None
        found = self.living.products.get(item_id)
        if found is None:
            self._generated_detail(item_id, "zh")
            found = self.living.products[item_id]
        return found

    def desc(self, item_id: int) -> dict[str, Any]:
        if item_id == DOC_DESC_ID:
            return documented()["item_desc"]
        rng = _rng(self.seed, "desc", item_id)
        imgs = [self.desc_image(item_id, k) for k in range(rng.randint(2, 10))]
        html = "".join(f'<img src="{src}"/>' for src in imgs)
        if self.hostile(item_id) is not None:
            inside = f"http://{self.hostile_media or '127.0.0.2:9'}/internal/{item_id}"
            port = (self.hostile_media or ":9").rsplit(":", 1)[1]
            # Inside the network: by address, through a redirect of an allowed
            # host (the sandbox), and by a name that resolves there.
            hostile_imgs = [f"{inside}.jpg", f"{self.media_base}/media/redirect?to={inside}-r.jpg"]
            hostile_imgs.append(f"http://localhost:{port}/internal/{item_id}-n.jpg")
            imgs += hostile_imgs
            html = HOSTILE_HTML.format(images=html, inside=inside) + "".join(
                f'<img src="{src}">' for src in hostile_imgs
            )
        return {"item_id": item_id, "detail_imgs": imgs, "detail_html": html}


def _live(detail: dict[str, Any], live: LivingProduct) -> None:
    """A generated detail as its living state is today: each SKU's stock and
    price, the product's stock, price range and sold-out flag."""
    for sku, state in zip(detail["skus"], live.skus, strict=True):
        sku["stock"] = state.stock
        sku["sale_price"] = _cents(state.price_cents)
    stock = sum(state.stock for state in live.skus)
    low, high = live.cheapest_cents, max(state.price_cents for state in live.skus)
    detail["stock"] = stock
    detail["is_sold_out"] = stock == 0
    detail["sku_price_range"]["stock"] = stock
    detail["price_info"] |= {"price": _cents(low), "price_min": _cents(low), "price_max": _cents(high)}
    detail["sku_price_scale"] = f"{_cents(low)}-{_cents(high)}"


def _hostile_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """A hostile seller's SKU, property and shop names: formulas, control
    characters and bidi overrides."""
    colour = detail["sku_props"][0]["values"][0]
    hostile = f"=1+2{colour['name']}\u202e"
    for sku in detail["skus"]:
        sku["props_names"] = sku["props_names"].replace(f":{colour['name']};", f":{hostile};")
    colour["name"] = hostile
    detail["sku_props"][0]["prop_name"] += "\x07"
    detail["product_props"].append({"=cmd|' /C calc'!A0": "-1+1\x00"})
    detail["shop_info"]["shop_name"] += "\u202e\x1b[31m"
    return detail


#: What hostile sellers write in a title (``{title}``: the product's own):
#: spreadsheet formulas, chat mentions and links, control characters.
HOSTILE_TITLES = (
    '=HYPERLINK("http://evil.example/x","click") {title}',
    "+cmd|' /C calc'!A0 {title}",
    "@everyone {title} [free gift](http://evil.example/gift) <@123456789>",
    "-2+3 {title}\x00\x07\u202e\u2066txt.exe",
    "@SUM(1+1)*cmd|' /C calc'!A0 {title} <!channel>",
)
#: A hostile seller's description: a script, event handlers, javascript:
#: and data: URLs, an iframe, a form, a style element, around the images.
HOSTILE_HTML = (
    '<p onclick="alert(1)" style="color:red;position:fixed;background:url(http://evil.example/bg)">{images}</p>'
    "<script>document.title='pwned-script'</script>"
    "<img src=x onerror=\"document.title='pwned-onerror'\">"
    "<a href=\"javascript:document.title='pwned-link'\">click</a>"
    '<a href="{inside}">inside</a>'
    "<iframe src=\"javascript:parent.document.title='pwned-iframe'\"></iframe>"
    '<object data="data:text/html,<script>parent.document.title=1</script>"></object>'
    '<form action="http://evil.example/"><input name=q></form>'
    "<style>body{{background:url(http://evil.example/css)}}</style>"
    "<svg onload=\"document.title='pwned-svg'\"></svg>"
    '<img src="data:image/svg+xml,<svg onload=alert(1)>">'
)

_CST = timezone(timedelta(hours=8))


def _cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"
