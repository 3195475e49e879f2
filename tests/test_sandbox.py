"""The sandbox on its own, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import SandboxProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "tmapi_crawler" / "sandbox" / "data"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text("utf-8"))["data"]


def test_documented_requests_answer_the_documented_data(sandbox: SandboxProcess):
    status, doc = sandbox.get("/1688/item_detail", item_id=859086919394)
    assert (status, doc["code"], doc["msg"]) == (200, 200, "success")
    assert doc["data"] == example("item_detail")
    status, doc = sandbox.post("/1688/item_detail_by_url", {"url": "https://detail.1688.com/offer/859086919394.html"})
    assert doc["data"] == example("item_detail")
    _, doc = sandbox.get("/1688/item_desc", item_id=622619146604)
    assert doc["data"] == example("item_desc")
    _, doc = sandbox.get("/1688/shop/items", member_id="jane727", page=1, page_size=3)
    assert doc["data"] == example("shop_items")
    _, doc = sandbox.get("/1688/category/items", cat_id=1031910, page=1)
    assert doc["data"] == example("category_items")


def test_shop_paging_quirks_and_documented_total(sandbox: SandboxProcess):
    _, doc = sandbox.get("/1688/shop/items", member_id="jane727", page=1, page_size=20)
    data = doc["data"]
    assert data["total_count"] == "2465"  # a string, as documented
    assert [e["item_id"] for e in data["items"][:3]] == [e["item_id"] for e in example("shop_items")["items"]]
    assert all(isinstance(e["item_id"], str) for e in data["items"])
    _, last = sandbox.get("/1688/shop/items", member_id="jane727", page=124, page_size=20)
    assert len(last["data"]["items"]) == 2465 - 123 * 20  # the last page is short
    _, beyond = sandbox.get("/1688/shop/items", member_id="jane727", page=125, page_size=20)
    assert beyond["data"]["items"] == []
    _, unknown = sandbox.get("/1688/shop/items", member_id="nobody-here")
    assert unknown["data"]["total_count"] == "0"


def test_shop_listing_entries_have_the_documented_shape(sandbox: SandboxProcess):
    documented = example("shop_items")["items"][0]
    _, doc = sandbox.get("/1688/shop/items", member_id="b2b-sandbox0000", page=2, page_size=5)
    for entry in doc["data"]["items"]:
        assert list(entry) == list(documented)
        for key, value in documented.items():
            assert type(entry[key]) is type(value), key
        assert isinstance(entry["price"], str)


def test_category_paging_and_entry_shape(sandbox: SandboxProcess):
    documented = example("category_items")["items"][0]
    ids, page = [], 1
    while True:
        _, doc = sandbox.get("/1688/category/items", cat_id=1032001, page=page)
        data = doc["data"]
        for entry in data["items"]:
            assert isinstance(entry["item_id"], int)
            assert list(entry) == list(documented)
            assert {k: type(v) for k, v in entry["shop_info"].items()} == {
                k: type(v) for k, v in documented["shop_info"].items()
            }
        ids += [e["item_id"] for e in data["items"]]
        if not data["has_next_page"]:
            break
        page += 1
    assert len(ids) == 60 and len(set(ids)) == 60  # --category-size default
    assert page == 3  # 20 a page
    # Consecutive categories share half their products.
    _, nxt = sandbox.get("/1688/category/items", cat_id=1032002, page=1)
    assert nxt["data"]["items"][0]["item_id"] == ids[30]


def test_detail_shape_matches_the_documented_one(sandbox: SandboxProcess):
    documented = example("item_detail")
    _, listing = sandbox.get("/1688/shop/items", member_id="b2b-sandbox0001", page=1, page_size=3)
    item_id = int(listing["data"]["items"][1]["item_id"])
    _, doc = sandbox.get("/1688/item_detail", item_id=item_id)
    data = doc["data"]
    assert list(data) == list(documented)
    for key in ("item_id", "title", "price_info", "skus", "sku_props", "stock", "sale_count", "shop_info"):
        assert type(data[key]) is type(documented[key]), key
    assert data["item_id"] == item_id
    assert data["shop_info"]["seller_member_id"] == "b2b-sandbox0001"
    assert data["title"] == listing["data"]["items"][1]["title"]
    # SKUs are the product of the sku_props values, and the stock adds up.
    props = data["sku_props"]
    assert len(data["skus"]) == len(props[0]["values"]) * len(props[1]["values"])
    names = {(f"0:{v['vid']}", v["name"]) for v in props[0]["values"]}
    for sku in data["skus"]:
        colour_ids = sku["props_ids"].split(";")[0]
        assert any(colour_ids == vid and sku["props_names"].split(";")[0].endswith(name) for vid, name in names)
        assert isinstance(sku["sale_price"], str)
    assert data["stock"] == sum(s["stock"] for s in data["skus"])
    _, desc = sandbox.get("/1688/item_desc", item_id=item_id)
    assert desc["data"]["item_id"] == item_id
    assert desc["data"]["detail_html"].count("<img") == len(desc["data"]["detail_imgs"])


def test_language_changes_text_fields(sandbox: SandboxProcess):
    _, zh = sandbox.get("/1688/item_detail", item_id=700_000_000_005)
    _, en = sandbox.get("/1688/item_detail", item_id=700_000_000_005, language="en")
    _, ru = sandbox.get("/1688/item_detail", item_id=700_000_000_005, language="ru")
    assert zh["data"]["title"] != en["data"]["title"] != ru["data"]["title"]
    assert en["data"]["title"].isascii()
    assert ru["data"]["sku_props"][0]["prop_name"].startswith("[ru]")
    assert zh["data"]["price_info"] == en["data"]["price_info"]
    _, doc_en = sandbox.get("/1688/item_detail", item_id=859086919394, language="en")
    assert doc_en["data"]["title"] == "[en] " + example("item_detail")["title"]


def test_sorting_and_filters(sandbox: SandboxProcess):
    def prices(**params):
        _, doc = sandbox.get("/1688/shop/items", member_id="b2b-sandbox0000", page_size=100, **params)
        return [float(e["price"]) for e in doc["data"]["items"]], doc["data"]

    up, _ = prices(sort="price_up")
    assert up == sorted(up) and len(up) == 60
    down, _ = prices(sort="price_down")
    assert down == sorted(up, reverse=True)
    ranged, data = prices(price_start="20", price_end="150.5")
    assert ranged and all(20 <= p <= 150.5 for p in ranged)
    assert data["total_count"] == str(len(ranged)) and data["price_start"] == "20"
    _, doc = sandbox.get("/1688/shop/items", member_id="b2b-sandbox0000", page_size=100, sort="sales")
    sales = [int(e["sale_info"]["sale_quantity_90days"]) for e in doc["data"]["items"]]
    assert sales == sorted(sales, reverse=True)
    _, doc = sandbox.get("/1688/shop/items", member_id="b2b-sandbox0000", page_size=100, sort="time_down")
    times = [e["created_time"] for e in doc["data"]["items"]]
    assert times == sorted(times, reverse=True)
    _, doc = sandbox.get("/1688/shop/items", member_id="b2b-sandbox0000", page_size=100, shop_cat_id="1021")
    assert 0 < int(doc["data"]["total_count"]) < 60
    _, all_cat = sandbox.get("/1688/category/items", cat_id=1032001)
    _, free = sandbox.get("/1688/category/items", cat_id=1032001, free_shipping="true")
    assert free["data"]["filters"] == {"free_shipping": True}
    assert free["data"]["items"] != all_cat["data"]["items"]
    _, factory = sandbox.get("/1688/category/items", cat_id=1032001, super_factory="true")
    assert all(e["shop_info"]["is_super_factory"] for e in factory["data"]["items"])


@pytest.mark.parametrize(
    ("path", "params", "problem"),
    [
        ("/1688/item_detail", {}, "item_id is required"),
        ("/1688/item_detail", {"item_id": "abc"}, "item_id must be an integer"),
        ("/1688/item_detail", {"item_id": 1, "language": "xx"}, "language must be one of"),
        ("/1688/item_detail", {"item_id": 1, "scene": "retail"}, "scene must be one of"),
        ("/1688/item_desc", {"item_id": "12x"}, "item_id must be an integer"),
        ("/1688/shop/items", {}, "member_id is required"),
        ("/1688/shop/items", {"member_id": "jane727", "page": 0}, "page must be >= 1"),
        ("/1688/shop/items", {"member_id": "jane727", "sort": "random"}, "sort must be one of"),
        ("/1688/shop/items", {"member_id": "jane727", "price_start": "cheap"}, "price_start must be a number"),
        ("/1688/category/items", {"cat_id": "shoes"}, "cat_id must be an integer"),
        ("/1688/category/items", {"cat_id": 1031910, "free_shipping": "maybe"}, "free_shipping must be true or false"),
    ],
)
def test_bad_parameters_answer_422(sandbox: SandboxProcess, path, params, problem):
    status, doc = sandbox.get(path, **params)
    assert status == 422 and doc["code"] == 422
    assert problem in doc["msg"]
    assert sandbox.stats()["billed"] == 0


def test_detail_by_url_needs_a_product_url(sandbox: SandboxProcess):
    status, doc = sandbox.post("/1688/item_detail_by_url", {"url": "https://example.com/x"})
    assert (status, doc["code"]) == (422, 422)
    status, doc = sandbox.post("/1688/item_detail_by_url", b"not json")
    assert status == 422
    status, doc = sandbox.post(
        "/1688/item_detail_by_url", {"url": "https://detail.1688.com/offer/700000000007.html", "language": "en"}
    )
    assert status == 200 and doc["data"]["item_id"] == 700000000007 and doc["data"]["title"].isascii()


def test_wrong_or_missing_token(sandbox: SandboxProcess):
    for token in ("wrong", None):
        status, doc = sandbox.get("/1688/item_detail", item_id=1, apiToken=token)
        assert status == 401 and doc["code"] == 401
        assert "token is invalid" in doc["msg"].lower()
    assert sandbox.stats()["codes"] == {"401": 2}


def test_removed_products_answer_417_forever(make_sandbox):
    sb = make_sandbox("--removed", "700000000003,859086919394")
    for _ in range(3):
        status, doc = sb.get("/1688/item_detail", item_id=859086919394)
        assert (status, doc["code"]) == (417, 417)
        assert "Failed to retrieve data" in doc["msg"]
    assert sb.get("/1688/item_desc", item_id=700000000003)[0] == 417
    assert sb.get("/1688/item_detail", item_id=700000000004)[0] == 200
    stats = sb.stats()
    assert stats["billed"] == 1 and stats["codes"]["417"] == 4


def test_error_style_body_sends_the_code_in_an_http_200(make_sandbox):
    sb = make_sandbox("--removed", "5", "--error-style", "body")
    status, doc = sb.get("/1688/item_detail", item_id=5)
    assert (status, doc["code"]) == (200, 417)
    status, doc = sb.get("/1688/item_detail", item_id=5, apiToken="nope")
    assert (status, doc["code"]) == (200, 401)


def test_error_style_mixed_uses_both(make_sandbox):
    sb = make_sandbox("--removed", "5", "--error-style", "mixed", "--seed", "3")
    statuses = {sb.get("/1688/item_detail", item_id=5)[0] for _ in range(30)}
    assert statuses == {200, 417}


def test_fault_rate_is_seeded_and_mixes_documented_codes(make_sandbox):
    def run(seed: str) -> list[int]:
        sb = make_sandbox("--fault-rate", "0.5", "--seed", seed)
        return [sb.get("/1688/item_desc", item_id=100 + i)[1]["code"] for i in range(60)]

    first, again, other = run("7"), run("7"), run("8")
    assert first == again != other
    assert set(first) == {200, 417, 499, 500}
    assert 15 < first.count(200) < 45


def test_latency_and_concurrency_limit(make_sandbox):
    sb = make_sandbox("--latency-ms", "300", "--concurrency", "2")
    results: list[int] = []

    def call() -> None:
        results.append(sb.get("/1688/item_desc", item_id=42)[1]["code"])

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # arrive one after the other, within the latency
    for t in threads:
        t.join()
    assert sorted(results) == [200, 200, 503, 503, 503]
    assert time.monotonic() - started >= 0.3
    stats = sb.stats()
    assert stats["max_in_flight"] == 2 and stats["codes"]["503"] == 3 and stats["in_flight"] == 0


def test_quota_topup_and_refill(make_sandbox):
    sb = make_sandbox("--quota", "3", "--quota-refill-s", "0.5")
    codes = [sb.get("/1688/item_desc", item_id=i)[1]["code"] for i in range(1, 6)]
    assert codes == [200, 200, 200, 439, 439]
    status, doc = sb.get("/1688/item_desc", item_id=9)
    assert (status, doc["msg"]) == (439, "Subscription expired or insufficient balance.")
    sb.topup(1)
    assert sb.get("/1688/item_desc", item_id=10)[1]["code"] == 200
    assert sb.get("/1688/item_desc", item_id=11)[1]["code"] == 439
    time.sleep(0.6)
    assert sb.get("/1688/item_desc", item_id=12)[1]["code"] == 200
    assert sb.stats()["billed"] == 5


def test_failed_calls_are_not_billed_against_the_quota(make_sandbox):
    sb = make_sandbox("--quota", "2", "--removed", "1")
    assert [sb.get("/1688/item_desc", item_id=1)[1]["code"] for _ in range(3)] == [417] * 3
    assert [sb.get("/1688/item_desc", item_id=2)[1]["code"] for _ in range(3)] == [200, 200, 439]


def test_admin_counts_billed_twice_and_resets(sandbox: SandboxProcess):
    sandbox.get("/1688/item_detail", item_id=5, language="en")
    sandbox.get("/1688/item_detail", item_id=5, language="zh")
    sandbox.get("/1688/item_detail", item_id=5, language="en")
    sandbox.get("/1688/shop/items", member_id="jane727", page=2)
    stats = sandbox.stats()
    assert stats["calls"] == 4 and stats["billed"] == 4
    assert stats["calls_per_endpoint"] == {"item_detail": 3, "shop_items": 1}
    assert stats["billed_twice"] == 1 and "item_detail" in stats["billed_twice_keys"][0]
    sandbox.reset()
    assert sandbox.stats()["calls"] == 0


def test_same_seed_same_catalog(make_sandbox):
    a, b, c = make_sandbox("--seed", "5"), make_sandbox("--seed", "5"), make_sandbox("--seed", "6")
    page = {"member_id": "b2b-sandbox0002", "page": 2}

    def listing(sb: SandboxProcess) -> str:
        # Images are on each sandbox's own port.
        return json.dumps(sb.get("/1688/shop/items", **page)).replace(sb.url, "SANDBOX")

    assert listing(a) == listing(b)
    assert listing(a) != listing(c)


def test_catalog_sizes_are_configurable(make_sandbox):
    sb = make_sandbox("--shops", "1", "--shop-size", "7", "--category-size", "5", "--category-page-size", "2")
    _, doc = sb.get("/1688/shop/items", member_id="b2b-sandbox0000")
    assert doc["data"]["total_count"] == "7"
    assert sb.get("/1688/shop/items", member_id="b2b-sandbox0001")[1]["data"]["total_count"] == "0"
    _, last = sb.get("/1688/category/items", cat_id=1032001, page=3)
    assert len(last["data"]["items"]) == 1 and last["data"]["has_next_page"] is False


def test_repeat_every_lists_entries_twice(make_sandbox):
    sb = make_sandbox("--repeat-every", "4", "--category-page-size", "50")
    _, doc = sb.get("/1688/category/items", cat_id=1032001)
    ids = [e["item_id"] for e in doc["data"]["items"]]
    assert ids[3] == ids[4] and len(ids) == 50


def test_unknown_paths_and_methods(sandbox: SandboxProcess):
    assert sandbox.get("/1688/nothing")[0] == 404
    assert sandbox.post("/1688/item_detail", {})[0] == 404


def test_media_of_the_generated_catalog(make_sandbox):
    """Real JPEG images and an MP4 video at the sandbox's own URLs; the
    documented products keep their CDN URLs; faults by product."""
    import urllib.error
    import urllib.request

    sb = make_sandbox("--media-fault", "700020000001:404,700020000002:html")
    _, doc = sb.get("/1688/item_detail", item_id=700020000000)
    detail = doc["data"]
    urls = [*detail["main_imgs"], *(v["imageUrl"] for v in detail["sku_props"][0]["values"])]
    assert all(u.startswith(sb.url + "/media/") for u in urls)
    _, desc = sb.get("/1688/item_desc", item_id=700020000000)
    assert all(u.startswith(sb.url + "/media/desc/") for u in desc["data"]["detail_imgs"])
    _, documented = sb.get("/1688/item_detail", item_id=859086919394)
    assert all("alicdn.com" in u for u in documented["data"]["main_imgs"])

    def fetch(url: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return answer.status, answer.headers["Content-Type"], answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    status, kind, body = fetch(detail["main_imgs"][0])
    assert (status, kind, body[:3]) == (200, "image/jpeg", b"\xff\xd8\xff")
    assert fetch(detail["main_imgs"][0])[2] == body and fetch(detail["main_imgs"][1])[2] != body
    videos = [sb.get("/1688/item_detail", item_id=700020000000 + n)[1]["data"]["video_url"] for n in range(30)]
    video = next(v for v in videos if v)
    status, kind, body = fetch(video)
    assert (status, kind, body[4:8]) == (200, "video/mp4", b"ftyp")
    assert fetch(f"{sb.url}/media/img/700020000001/0.jpg")[0] == 404
    assert fetch(f"{sb.url}/media/img/700020000002/0.jpg")[1] == "text/html"
    assert fetch(f"{sb.url}/media/img/x.jpg")[0] == 404
    media = sb.stats()["media"]
    assert media["requests"] == 7 and media["with_token"] == 0
    assert sb.stats()["calls"] == 33  # the API's; files are not calls
