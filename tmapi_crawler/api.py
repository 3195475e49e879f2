"""Everything the project knows about TMAPI's 1688 endpoints, in one place.

Spiders never build a URL by hand: they call :func:`build_request` with an
:class:`Endpoint` and typed parameters.  Middlewares never parse a body by
hand: they call :func:`envelope_of`, which parses a response once, caches the
result for the callback, and tells a success from each documented error,
whether the error code arrives as the HTTP status or as HTTP 200 with the code
in the body.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from scrapy import Request
from scrapy.http import JsonRequest

if TYPE_CHECKING:
    from collections.abc import Mapping

    from scrapy.http import Response

PRODUCTION_URL = "https://api.tmapi.io"
TOKEN_PARAM = "apiToken"  # noqa: S105 - the name of the parameter

SORTS = ("default", "sales", "price_up", "price_down", "time_up", "time_down")
LANGUAGES = ("en", "zh", "ru", "th", "pt", "es", "tr", "vi", "ja", "ko")
SCENES = ("drop_shipping",)
DEFAULT_SHOP_PAGE_SIZE = 20
MAX_SHOP_PAGE_SIZE = 100

#: A product URL as 1688 prints it: ``https://detail.1688.com/offer/<id>.html``.
OFFER_URL_RE = re.compile(r"^https?://(?:detail|m)\.1688\.com/offer/(\d{1,20})\.html")
#: The largest id 1688 uses (products, categories): a signed 64-bit integer.
MAX_ID = 2**63 - 1


class Endpoint(str, Enum):
    """The five endpoints the crawler uses; the value is the short name used in
    stats, failure records and ``request.meta``."""

    SHOP_ITEMS = "shop_items"
    CATEGORY_ITEMS = "category_items"
    ITEM_DETAIL = "item_detail"
    ITEM_DETAIL_BY_URL = "item_detail_by_url"
    ITEM_DESC = "item_desc"

    @property
    def path(self) -> str:
        return _PATHS[self]

    @property
    def method(self) -> str:
        return "POST" if self is Endpoint.ITEM_DETAIL_BY_URL else "GET"

    @classmethod
    def from_path(cls, path: str) -> Endpoint | None:
        return _BY_PATH.get(path)


_PATHS = {
    Endpoint.SHOP_ITEMS: "/1688/shop/items",
    Endpoint.CATEGORY_ITEMS: "/1688/category/items",
    Endpoint.ITEM_DETAIL: "/1688/item_detail",
    Endpoint.ITEM_DETAIL_BY_URL: "/1688/item_detail_by_url",
    Endpoint.ITEM_DESC: "/1688/item_desc",
}
_BY_PATH = {path: endpoint for endpoint, path in _PATHS.items()}
_BY_VALUE = {endpoint.value: endpoint for endpoint in Endpoint}


class Outcome(Enum):
    """What the crawler does with an answer (the README's table, docs/behaviour.md)."""

    OK = "ok"
    RETRY = "retry"  # 417, 499, 500: retry with backoff, then a failure record
    FAIL = "fail"  # 422 and anything undocumented: a failure record at once
    CONCURRENCY = "concurrency"  # 503: fewer calls in flight, retry later
    QUOTA = "quota"  # 439: pause all traffic, probe, maybe stop
    AUTH = "auth"  # 401/403 or "token invalid": stop at once


OK = 200
RETRY_CODES = frozenset({417, 499, 500})
CONCURRENCY_CODE = 503
QUOTA_CODE = 439
AUTH_CODES = frozenset({401, 403})
PARAMETER_ERROR = 422
#: Codes of our own, for answers that never were a valid envelope.
MALFORMED = -1

_TOKEN_INVALID_RE = re.compile(r"token", re.IGNORECASE)


def classify(code: int, msg: str = "") -> Outcome:
    if code == OK:
        return Outcome.OK
    if code in AUTH_CODES or _TOKEN_INVALID_RE.search(msg):
        return Outcome.AUTH
    if code in RETRY_CODES:
        return Outcome.RETRY
    if code == CONCURRENCY_CODE:
        return Outcome.CONCURRENCY
    if code == QUOTA_CODE:
        return Outcome.QUOTA
    return Outcome.FAIL


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters worth sending: ``None`` means "not given"."""
    return {k: v for k, v in params.items() if v is not None}


#: The download slot of every API call, apart from whatever else a project
#: crawls: the add-on gives it no delay and room for the gate's calls
#: (``DOWNLOAD_SLOTS``), so that a project's politeness settings
#: (``DOWNLOAD_DELAY``, ``CONCURRENT_REQUESTS_PER_DOMAIN``, AutoThrottle) keep
#: applying to websites and never pace the API, which the gate paces.
API_SLOT = "tmapi-api"
#: The meta key of a request's download slot (Scrapy's ``Downloader.DOWNLOAD_SLOT``).
DOWNLOAD_SLOT = "download_slot"
#: What every API call carries: its own download slot, no robots.txt, no
#: AutoThrottle, and no redirect followed (an answer is what was billed).
API_META = {
    DOWNLOAD_SLOT: API_SLOT,
    "dont_obey_robotstxt": True,
    "autothrottle_dont_adjust_delay": True,
    "dont_redirect": True,
}


def build_request(
    base_url: str,
    endpoint: Endpoint,
    params: Mapping[str, Any],
    **kwargs: Any,
) -> Request:
    """A Scrapy request for *endpoint*; the token is **not** part of it (it is
    added by :class:`tmapi_crawler.auth.TokenDownloadHandler` at the last
    moment).  ``meta["tmapi"]`` records the endpoint and parameters, which is
    what failure records and stats are made from."""
    params = clean_params(params)
    meta = {**API_META, **(kwargs.pop("meta", None) or {}), "tmapi": {"endpoint": endpoint.value, "params": params}}
    url = base_url.rstrip("/") + endpoint.path
    if endpoint.method == "POST":
        return JsonRequest(url, data=params, meta=meta, **kwargs)
    # Made safe here (a checked base URL, a constant path, an encoded query):
    # Scrapy need not make it safe again, nor canonicalize it for each
    # fingerprint (Scrapy's verbatim_url: the same parameters make the same
    # URL, in the same order).
    meta["verbatim_url"] = True
    return Request(f"{url}?{query_string(params)}", meta=meta, **kwargs)


#: A query's name or value that ``urlencode`` leaves as it is.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*", re.ASCII)


def query_string(params: Mapping[str, Any]) -> str:
    """*params* as ``urlencode`` writes them; ids, numbers, flags and codes
    (two calls a product) joined as they are, without its quoting."""
    parts = []
    for key, value in params.items():
        text = _query_value(value)
        # An int or a flag is plain (digits and a sign, true or false): no regex for it.
        if not (type(value) in (int, bool) or _PLAIN.fullmatch(text)) or not _plain_name(key):
            return urlencode([(k, _query_value(v)) for k, v in params.items()])
        parts.append(f"{key}={text}")
    return "&".join(parts)


@functools.lru_cache(maxsize=256)
def _plain_name(key: str) -> bool:
    """Whether a parameter's name needs no quoting (a handful of names,
    checked once each)."""
    return _PLAIN.fullmatch(key) is not None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed answer: ``code`` is the effective code (the body's code when
    there is one, else the HTTP status), ``data`` the ``data`` member."""

    code: int
    msg: str
    data: Any

    @property
    def outcome(self) -> Outcome:
        return classify(self.code, self.msg)


class MalformedAnswer(ValueError):
    """The body is not a TMAPI envelope; ``snippet`` holds its start."""

    def __init__(self, problem: str, body: bytes):
        self.problem = problem
        self.snippet = body[:200].decode("utf-8", "replace")
        super().__init__(problem)


def parse_envelope(status: int, body: bytes) -> Envelope:
    """Parse a body into an :class:`Envelope`.

    An error sent as an HTTP status counts even when its body is not JSON
    (a proxy's HTML error page, say): the status is the code then.  A 200
    whose body is not an envelope raises :class:`MalformedAnswer`.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        if status != OK:
            return Envelope(status, body[:200].decode("utf-8", "replace"), None)
        raise MalformedAnswer("the body is not JSON", body) from None
    if not isinstance(doc, dict) or "code" not in doc:
        if status != OK:
            return Envelope(status, "", None)
        raise MalformedAnswer("the body is not a {code, msg, data} envelope", body)
    code = doc["code"]
    if isinstance(code, bool) or not isinstance(code, int):
        if status != OK:
            return Envelope(status, str(doc.get("msg", "")), None)
        raise MalformedAnswer(f"the envelope's code is not a number: {code!r}", body)
    if code == OK and status != OK:
        # An error status whose body claims success: trust the status.
        code = status
    msg = doc.get("msg")
    if code == OK and "data" not in doc:
        raise MalformedAnswer("the envelope has no data", body)
    return Envelope(code, msg if isinstance(msg, str) else "", doc.get("data"))


_parsed: weakref.WeakKeyDictionary[Response, Envelope | MalformedAnswer] = weakref.WeakKeyDictionary()


#: meta key: when the stored answer given for this request was fetched (set
#: by the catalog store, which answers it without a call).
FETCHED_AT_META = "tmapi_fetched_at"
#: meta key: the product's description as the catalog store keeps it, still
#: good, given with its stored detail: ``(data, fetched_at)``.  The detail's
#: callback makes the product whole with it, without asking for the
#: description (a request and a response fewer a product the store answers).
STORED_DESC_META = "tmapi_stored_desc"
#: The flag of a response that the catalog store gave: no call was made.
STORED_FLAG = "tmapi_store"
#: The flag of a response answered with an answer an earlier run of the crawl
#: paid for and kept in JOBDIR (:mod:`tmapi_crawler.calls.paid`).
KEPT_FLAG = "tmapi_kept"


def remember_envelope(response: Response, envelope: Envelope) -> None:
    """Give *response* its parsed envelope (an answer made here, not parsed)."""
    _parsed[response] = envelope


def envelope_of(response: Response) -> Envelope:
    """The response's envelope, parsed once per response (the middleware that
    classifies the answer and the callback that uses its data share it)."""
    cached = _parsed.get(response)
    if cached is None:
        try:
            cached = parse_envelope(response.status, response.body)
        except MalformedAnswer as exc:
            cached = exc
        _parsed[response] = cached
    if isinstance(cached, MalformedAnswer):
        raise cached
    return cached


def outcome_of(response: Response) -> Outcome:
    """What to do with *response* (a malformed answer fails)."""
    try:
        return envelope_of(response).outcome
    except MalformedAnswer:
        return Outcome.FAIL


def offer_url(item_id: Any) -> str:
    """A product's page on 1688.com."""
    return f"https://detail.1688.com/offer/{item_id}.html"


def offer_id_from_url(url: str) -> int | None:
    match = OFFER_URL_RE.match(url.strip())
    offer = int(match.group(1)) if match else None
    return offer if offer is not None and 0 < offer <= MAX_ID else None


def endpoint_of(request: Request) -> Endpoint | None:
    info = request.meta.get("tmapi")
    if not info:
        return None
    value = info["endpoint"]
    try:
        # A dict's look-up: Endpoint(value) runs the enum's Python code, and
        # this is asked three times a product.
        return _BY_VALUE[value]
    except (KeyError, TypeError):
        return Endpoint(value)  # raises its ValueError, as ever


def listing_key(request: Request) -> str:
    """The listing a listing page's request reads (its endpoint and filters,
    without the page): what the catalog store knows a listing by."""
    info = request.meta["tmapi"]
    params = {k: v for k, v in sorted(info["params"].items()) if k != "page" and v is not None}
    return info["endpoint"] + "?" + "&".join(f"{k}={v}" for k, v in params.items())


#: The endpoints that start a product (its detail).
DETAIL_ENDPOINTS = frozenset({Endpoint.ITEM_DETAIL, Endpoint.ITEM_DETAIL_BY_URL})


def calls_to_finish(request: Request) -> int:
    """The calls a product needs from *request* on: its detail, and its
    description when the seed follows it (``follow=detail+desc``)."""
    if endpoint_of(request) not in DETAIL_ENDPOINTS:
        return 1
    opts = request.cb_kwargs.get("opts") or {}
    return 2 if opts.get("follow") == "detail+desc" else 1


def attempts_of(request: Request) -> int:
    """How many times *request* was sent (Scrapy's retry counter, plus one)."""
    return int(request.meta.get("retry_times", 0)) + 1


class ApiError(Exception):
    """A call that failed for good: a documented error code after its retries,
    or an answer that is not an envelope (``code`` is ``None`` then)."""

    def __init__(self, code: int | None, msg: str, *, snippet: str | None = None):
        self.code = code
        self.msg = msg
        self.snippet = snippet
        super().__init__(f"{code if code is not None else 'malformed'}: {msg}")
