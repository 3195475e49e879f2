"""The API module: requests, envelopes, outcomes."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from scrapy.http import TextResponse

from tmapi_crawler import api
from tmapi_crawler.api import Endpoint, Envelope, MalformedAnswer, Outcome, classify, parse_envelope


def test_get_request_has_typed_parameters_and_no_token():
    req = api.build_request(
        "https://api.tmapi.io/",
        Endpoint.CATEGORY_ITEMS,
        {"cat_id": 1031910, "page": 2, "free_shipping": True, "super_factory": None},
    )
    assert req.method == "GET"
    assert req.url == "https://api.tmapi.io/1688/category/items?cat_id=1031910&page=2&free_shipping=true"
    assert req.meta["tmapi"] == {
        "endpoint": "category_items",
        "params": {"cat_id": 1031910, "page": 2, "free_shipping": True},
    }
    assert "apiToken" not in req.url


@pytest.mark.parametrize(
    "params",
    [
        {"item_id": 610947572360, "language": "en"},
        {"member_id": "b2b-2206", "page": 3, "sort": "-price"},
        {"keyword": "连衣裙 夏", "q": "a b&c=d", "price": 1.5, "free_shipping": False},
        {"path": "/x?y", "plus": "+1", "pct": "100%", "tilde": "a~b"},
        {},
    ],
)
def test_a_query_is_what_urlencode_writes(params):
    """Plain parameters are joined as they are, the others quoted: either
    way, the URL urlencode would make (fingerprints stay the same)."""
    expected = urlencode({k: "true" if v is True else "false" if v is False else str(v) for k, v in params.items()})
    assert api.query_string(params) == expected
    req = api.build_request("https://api.tmapi.io", Endpoint.SHOP_ITEMS, params, meta={"dont_redirect": False})
    assert req.url == f"https://api.tmapi.io/1688/shop/items?{expected}"
    assert req.meta["dont_redirect"] is False and req.meta["tmapi"]["params"] == params  # the caller's meta wins


def test_post_request_sends_a_json_body():
    req = api.build_request("https://api.tmapi.io", Endpoint.ITEM_DETAIL_BY_URL, {"url": "u", "language": "en"})
    assert req.method == "POST"
    assert req.url == "https://api.tmapi.io/1688/item_detail_by_url"
    assert json.loads(req.body) == {"url": "u", "language": "en"}
    assert req.headers["Content-Type"] == b"application/json"


@pytest.mark.parametrize(
    ("code", "msg", "outcome"),
    [
        (200, "success", Outcome.OK),
        (417, "", Outcome.RETRY),
        (499, "", Outcome.RETRY),
        (500, "", Outcome.RETRY),
        (422, "Parameter error", Outcome.FAIL),
        (439, "Subscription expired or insufficient balance.", Outcome.QUOTA),
        (503, "", Outcome.CONCURRENCY),
        (401, "", Outcome.AUTH),
        (403, "", Outcome.AUTH),
        (400, "apiToken is invalid", Outcome.AUTH),
        (418, "teapot", Outcome.FAIL),
    ],
)
def test_classify(code, msg, outcome):
    assert classify(code, msg) is outcome


def test_error_as_http_status_or_in_the_body_is_the_same():
    body = b'{"code": 417, "msg": "Failed", "data": null}'
    assert parse_envelope(417, body) == parse_envelope(200, body) == Envelope(417, "Failed", None)


def test_error_status_with_a_non_json_body_keeps_the_status():
    env = parse_envelope(503, b"<html>Service Unavailable</html>")
    assert env.code == 503
    assert env.outcome is Outcome.CONCURRENCY


def test_error_status_with_a_success_body_is_an_error():
    assert parse_envelope(500, b'{"code": 200, "msg": "success", "data": {}}').code == 500


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>proxy error</html>", "not JSON"),
        (b'{"code": 200, "msg": "success", "data": {"item', "not JSON"),
        (b"[1, 2]", "not a {code, msg, data} envelope"),
        (b'{"msg": "x", "data": {}}', "not a {code, msg, data} envelope"),
        (b'{"code": "200", "data": {}}', "code is not a number"),
        (b'{"code": 200, "msg": "success"}', "has no data"),
    ],
)
def test_malformed_answers(body, problem):
    with pytest.raises(MalformedAnswer, match=problem) as info:
        parse_envelope(200, body)
    assert info.value.snippet == body[:200].decode()


def test_envelope_is_parsed_once_per_response():
    response = TextResponse("https://api.tmapi.io/x", body=b'{"code": 200, "msg": "ok", "data": {"a": 1}}')
    first = api.envelope_of(response)
    assert api.envelope_of(response) is first
    broken = TextResponse("https://api.tmapi.io/x", body=b"nope")
    for _ in range(2):
        with pytest.raises(MalformedAnswer):
            api.envelope_of(broken)


@pytest.mark.parametrize(
    ("url", "item_id"),
    [
        ("https://detail.1688.com/offer/652702302959.html", 652702302959),
        ("https://detail.1688.com/offer/652702302959.html?spm=a26352", 652702302959),
        ("http://m.1688.com/offer/1.html", 1),
        ("https://detail.1688.com/offer/abc.html", None),
        ("https://example.com/offer/1.html", None),
    ],
)
def test_offer_id_from_url(url, item_id):
    assert api.offer_id_from_url(url) == item_id


def test_a_request_names_its_endpoint():
    for endpoint in Endpoint:
        request = api.build_request("http://127.0.0.1:1", endpoint, {"item_id": 1})
        assert api.endpoint_of(request) is endpoint
    assert api.endpoint_of(api.build_request("http://127.0.0.1:1", Endpoint.ITEM_DESC, {}).replace(meta={})) is None
    unknown = api.build_request("http://127.0.0.1:1", Endpoint.ITEM_DESC, {})
    for value in ("item_nothing", ["item_desc"]):
        unknown.meta["tmapi"]["endpoint"] = value
        with pytest.raises(ValueError, match="is not a valid Endpoint"):
            api.endpoint_of(unknown)
