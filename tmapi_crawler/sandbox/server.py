"""The sandbox HTTP server: TMAPI's five 1688 endpoints, its errors and faults.

One :class:`twisted.web.resource.Resource` answers every path; calls go
through the same checks in the same order as a real account would meet them:

1. the token (a wrong or missing one answers 401, "apiToken is invalid");
2. the concurrency limit (a call arriving while ``concurrency`` are in flight
   answers 503 at once);
3. the quota (no balance left answers 439 at once);
4. the latency, then the parameters (422), random faults (417/499/500),
   removed products (417 forever), and at last the data, which is billed.

Counters (``GET /__admin/stats``) let tests prove how many calls a crawl made.

It also plays 1688's CDN for its generated products (``/media/...``): small
real JPEG images (a colour of their own each) and a small H.264 video, with
faults of their own (``--media-fault``), and counts what was fetched, and
whether a media request ever carried the token.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from twisted.internet import reactor
from twisted.web import resource, server

from tmapi_crawler.api import (
    LANGUAGES,
    MAX_SHOP_PAGE_SIZE,
    SCENES,
    SORTS,
    TOKEN_PARAM,
    Endpoint,
    offer_id_from_url,
)

if TYPE_CHECKING:
    from twisted.web.server import Request

    from tmapi_crawler.sandbox.catalog import Catalog

_reactor: Any = reactor

MESSAGES = {
    200: "success",
    401: "apiToken is invalid or missing, please check it in the console.",
    417: "Failed to retrieve data, please try again or contact customer service.",
    422: "Parameter error",
    439: "Subscription expired or insufficient balance.",
    499: "Please try again or set your request timeout to 60 seconds.",
    500: "Unexpected error, please contact customer service.",
    503: "API request concurrency limit exceeded, please reduce concurrency.",
}
ERROR_STYLES = ("http", "body", "mixed")
#: What ``--broken KEY:KIND`` sends instead of a successful answer.
BROKEN_KINDS = {
    "html": "an HTML error page from a proxy, with HTTP 200",
    "truncated": "the first half of the JSON body",
    "no-code": "an envelope without code",
    "no-data": "an envelope without data",
    "wrong-data": "data that is a list instead of an object",
    "bad-item-id": "an item_id that is not a number (in a listing: the first entry's)",
    "items-not-list": "a listing whose items is an object",
    "huge": "a 2 MB body (over a small DOWNLOAD_MAXSIZE)",
}
#: What ``--media-fault ITEM_ID:KIND`` does to that product's media files.
MEDIA_FAULTS = {
    "404": "404 Not Found",
    "html": "an HTML page with HTTP 200 (not an image)",
    "huge": "a 2 MB file (over a small TMAPI_MEDIA_MAXSIZE)",
    "slow": "an answer after 30 seconds (over a short TMAPI_MEDIA_TIMEOUT)",
    "flaky": "503 the first time each file is asked for, then the file",
    "moved": "a redirect to the same file (?hop=1), which is then served",
    "loop": "a redirect to the same file with one more hop, for ever",
}
MEDIA_PATH = re.compile(r"^/media/(img|desc|sku|video)/(-?\d{1,20})(?:/(\d{1,4}))?\.(jpg|mp4)$")


def broken_keys(endpoint: Endpoint, params: dict[str, Any]) -> tuple[str, ...]:
    """The ``--broken`` keys of a call: the item id for item_detail(_by_url),
    ``desc:<id>`` for item_desc, ``shop:<member_id>`` or ``category:<cat_id>``
    for every page of a listing, with ``:<page>`` for one page."""
    if endpoint is Endpoint.ITEM_DETAIL_BY_URL:
        return (str(offer_id_from_url(str(params.get("url", "")))),)
    if endpoint is Endpoint.ITEM_DESC:
        return (f"desc:{params.get('item_id')}",)
    if endpoint in (Endpoint.SHOP_ITEMS, Endpoint.CATEGORY_ITEMS):
        listing = "shop:" + str(params.get("member_id")) if endpoint is Endpoint.SHOP_ITEMS else ""
        listing = listing or "category:" + str(params.get("cat_id"))
        return (f"{listing}:{params.get('page', 1)}", listing)
    return (str(params.get("item_id")),)


def broken_body(kind: str, data: bytes) -> bytes:
    ok = b'{"code":200,"msg":"success","data":%s}'
    if kind == "html":
        return b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
    if kind == "truncated":
        full = ok % data
        return full[: len(full) // 2]
    if kind == "no-code":
        return b'{"msg":"success","data":%s}' % data
    if kind == "no-data":
        return b'{"code":200,"msg":"success"}'
    if kind == "wrong-data":
        return ok % b'["not","an","object"]'
    doc = json.loads(data)
    if kind == "bad-item-id":
        if isinstance(doc.get("items"), list) and doc["items"]:
            doc["items"][0]["item_id"] = "not-a-number"
        else:
            doc["item_id"] = "not-a-number"
    elif kind == "items-not-list":
        doc["items"] = {"0": doc.get("items")}
    elif kind == "huge":
        doc["padding"] = "x" * 2_000_000
    return ok % _dumps(doc)


@dataclass
class Faults:
    """How the sandbox misbehaves; every field is a command-line flag."""

    token: str = "demo"  # noqa: S105 - the sandbox's well-known token
    removed: frozenset[int] = frozenset()
    removed_desc: frozenset[int] = frozenset()  # description gone, detail still there
    invalid: frozenset[int] = frozenset()  # detail answered with an empty title
    broken: dict[str, str] = field(default_factory=dict)  # key -> kind, see BROKEN_KINDS
    fault_rate: float = 0.0
    concurrency: int = 0  # 0: no limit
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    quota: int = 0  # 0: unlimited
    quota_refill_s: float = 0.0  # 0: only a top-up refills
    error_style: str = "http"
    seed: int = 0
    media_faults: dict[int, str] = field(default_factory=dict)  # item id -> kind, see MEDIA_FAULTS
    media_latency_ms: float = 0.0


@dataclass
class Counters:
    calls: Counter[str] = field(default_factory=Counter)
    codes: Counter[int] = field(default_factory=Counter)
    billed: int = 0
    billed_twice: int = 0
    billed_twice_keys: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    first_call: float | None = None
    last_answer: float | None = None
    media: Counter[str] = field(default_factory=Counter)  # path -> times asked
    media_codes: Counter[int] = field(default_factory=Counter)
    media_bytes: int = 0
    media_with_token: int = 0
    media_in_flight: int = 0
    media_max_in_flight: int = 0
    #: Paths that are no endpoint (a client fetching /robots.txt, say) -> times asked.
    unknown: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "media": {
                "requests": sum(self.media.values()),
                "files": len(self.media),
                "asked_twice": sum(1 for n in self.media.values() if n > 1),
                "codes": {str(code): n for code, n in sorted(self.media_codes.items())},
                "bytes": self.media_bytes,
                "with_token": self.media_with_token,
                "max_in_flight": self.media_max_in_flight,
            },
            "calls": sum(self.calls.values()),
            "unknown_paths": dict(self.unknown),
            "calls_per_endpoint": dict(self.calls),
            "codes": {str(code): n for code, n in sorted(self.codes.items())},
            "billed": self.billed,
            "billed_twice": self.billed_twice,
            "billed_twice_keys": self.billed_twice_keys[:100],
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            # From the first call to the last answer: what benchmarks divide by.
            "busy_seconds": round(self.last_answer - self.first_call, 4)
            if self.first_call is not None and self.last_answer is not None
            else 0.0,
        }


class ParameterError(ValueError):
    pass


def _int(params: dict[str, str], name: str, default: int | None = None, minimum: int = 1) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ParameterError(f"{name} is required")
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ParameterError(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(params: dict[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return raw
    lowered = str(raw).lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ParameterError(f"{name} must be true or false, got {raw!r}")


def _choice(params: dict[str, str], name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        raise ParameterError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _price(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ParameterError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ParameterError(f"{name} must not be negative, got {raw!r}")
    return round(value * 100)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@lru_cache(maxsize=4096)
def jpeg(path: str) -> bytes:
    """A small real JPEG for a media path: 96x96, two colours of its own."""
    from PIL import Image, ImageDraw

    digest = hashlib.blake2b(path.encode(), digest_size=6).digest()
    image = Image.new("RGB", (96, 96), tuple(digest[:3]))
    ImageDraw.Draw(image).rectangle((24, 24, 72, 72), fill=tuple(digest[3:]))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


@lru_cache(maxsize=1)
def video() -> bytes:
    """A 2-second 96x96 H.264 MP4 (3 kB), the same for every video."""
    return resources.files(__package__).joinpath("data", "video.mp4").read_bytes()


class Sandbox:
    """The state of one sandbox: its catalog, faults and counters."""

    def __init__(self, catalog: Catalog, faults: Faults):
        self.catalog = catalog
        self.faults = faults
        self.counters = Counters()
        self.rng = random.Random(faults.seed)
        self.balance = faults.quota
        self.exhausted_at: float | None = None
        # Data documents are generated once and kept as bytes.
        self.detail_bytes = lru_cache(maxsize=8192)(self._detail_bytes)
        self.desc_bytes = lru_cache(maxsize=8192)(self._desc_bytes)

    def _detail_bytes(self, item_id: int, language: str, optimize_title: bool) -> bytes:
        data = self.catalog.detail(item_id, language)
        if item_id in self.faults.invalid:
            data = {**data, "title": ""}
        if optimize_title and language == "zh" and item_id != 859086919394:
            data = {**data, "title": data["title"][2:]}
        return _dumps(data)

    def _desc_bytes(self, item_id: int) -> bytes:
        return _dumps(self.catalog.desc(item_id))

    # -- quota ----------------------------------------------------------------

    def _quota_allows(self) -> bool:
        if not self.faults.quota:
            return True
        refill = self.faults.quota_refill_s
        spent_for = time.monotonic() - self.exhausted_at if self.exhausted_at is not None else 0.0
        if self.balance <= 0 and refill and spent_for >= refill:
            self.balance = self.faults.quota
            self.exhausted_at = None
        if self.balance <= 0:
            return False
        self.balance -= 1  # reserved; given back if the call is not billed
        return True

    def _quota_refund(self) -> None:
        if self.faults.quota:
            self.balance += 1

    def _quota_spent(self) -> None:
        if self.faults.quota and self.balance <= 0 and self.exhausted_at is None:
            self.exhausted_at = time.monotonic()

    def topup(self, calls: int) -> None:
        self.balance += calls
        if self.balance > 0:
            self.exhausted_at = None

    def revise(self, share: float, delist: float) -> dict[str, int]:
        """Change the catalog as a day on 1688 would (:meth:`Catalog.revise`)."""
        summary = self.catalog.revise(share, delist)
        self.detail_bytes.cache_clear()
        self.desc_bytes.cache_clear()
        return summary

    def advance(self) -> int:
        """One simulated day of the living catalog (``--living``)."""
        assert self.catalog.living is not None
        day = self.catalog.living.advance()
        self.detail_bytes.cache_clear()  # every detail is what its day makes it
        return day

    def reset(self) -> None:
        self.counters = Counters(in_flight=self.counters.in_flight)
        self.balance = self.faults.quota
        self.exhausted_at = None

    # -- answers --------------------------------------------------------------

    def answer(self, endpoint: Endpoint, params: dict[str, Any]) -> tuple[int, bytes]:
        """(code, data JSON) for a call that passed the token, limit and quota
        checks; raises :class:`ParameterError` for a 422."""
        handler = getattr(self, f"_{endpoint.value}")
        code, data = handler(params)
        return code, data

    def _item_id(self, params: dict[str, Any]) -> int:
        return _int(params, "item_id")

    def _detail_params(self, params: dict[str, Any]) -> tuple[str, bool]:
        language = _choice(params, "language", LANGUAGES, "zh")
        _choice(params, "scene", SCENES, None)
        optimize = bool(_bool(params, "optimize_title"))
        assert language is not None
        return language, optimize

    def _item_detail(self, params: dict[str, Any]) -> tuple[int, bytes]:
        item_id = self._item_id(params)
        language, optimize = self._detail_params(params)
        if item_id in self.faults.removed:
            return 417, b"null"
        return 200, self.detail_bytes(item_id, language, optimize)

    def _item_detail_by_url(self, params: dict[str, Any]) -> tuple[int, bytes]:
        url = params.get("url")
        if not isinstance(url, str) or not url:
            raise ParameterError("url is required")
        item_id = offer_id_from_url(url)
        if item_id is None:
            raise ParameterError(f"url is not a 1688 product URL: {url!r}")
        language, optimize = self._detail_params(params)
        if item_id in self.faults.removed:
            return 417, b"null"
        return 200, self.detail_bytes(item_id, language, optimize)

    def _item_desc(self, params: dict[str, Any]) -> tuple[int, bytes]:
        item_id = self._item_id(params)
        if item_id in self.faults.removed or item_id in self.faults.removed_desc:
            return 417, b"null"
        return 200, self.desc_bytes(item_id)

    def _shop_items(self, params: dict[str, Any]) -> tuple[int, bytes]:
        member_id = params.get("member_id") or ""
        if not member_id:
            raise ParameterError("member_id is required")
        page = _int(params, "page", 1)
        page_size = _int(params, "page_size", 20)
        if page_size > MAX_SHOP_PAGE_SIZE:
            raise ParameterError(f"page_size must be <= {MAX_SHOP_PAGE_SIZE}, got {page_size}")
        sort = _choice(params, "sort", SORTS, "default")
        assert sort is not None
        shop_cat_id = params.get("shop_cat_id") or ""
        price_start, price_end = _price(params, "price_start"), _price(params, "price_end")
        ids = self.catalog.shop_items(member_id, sort, shop_cat_id, price_start, price_end) or []
        chunk = ids[(page - 1) * page_size : page * page_size]
        data = {
            "page": page,
            "page_size": page_size,
            "total_count": str(len(ids)),
            "shop_cat_id": shop_cat_id,
            "keyword": "",
            "price_start": params.get("price_start") or "",
            "price_end": params.get("price_end") or "",
            "sort": sort,
            "items": [self.catalog.shop_entry(i, "zh") for i in chunk],
        }
        return 200, _dumps(data)

    def _category_items(self, params: dict[str, Any]) -> tuple[int, bytes]:
        cat_id = _int(params, "cat_id")
        page = _int(params, "page", 1)
        filters = {
            name: value
            for name in ("super_factory", "support_dropshipping", "free_shipping")
            if (value := _bool(params, name)) is not None
        }
        ids = self.catalog.category_items(cat_id) or []
        if filters:
            attrs = {
                "super_factory": "super_factory",
                "support_dropshipping": "dropshipping",
                "free_shipping": "free_shipping",
            }
            ids = [i for i in ids if all(getattr(self.catalog.summary(i), attrs[k]) == v for k, v in filters.items())]
        page_size = self.catalog.category_page_size_of(cat_id)
        chunk = ids[(page - 1) * page_size : page * page_size]
        data = {
            "page": page,
            "page_size": page_size,
            "has_next_page": page * page_size < len(ids),
            "filters": filters,
            "items": [self.catalog.category_entry(i, "zh") for i in chunk],
        }
        return 200, _dumps(data)

    # -- billing --------------------------------------------------------------

    def bill(self, endpoint: Endpoint, params: dict[str, Any]) -> None:
        counters = self.counters
        counters.billed += 1
        key = (endpoint.value, json.dumps(params, sort_keys=True, default=str))
        if key in counters.seen:
            counters.billed_twice += 1
            counters.billed_twice_keys.append(f"{key[0]} {key[1]}")
        else:
            counters.seen.add(key)


class ApiResource(resource.Resource):
    isLeaf = True

    def __init__(self, sandbox: Sandbox):
        super().__init__()
        self.sandbox = sandbox

    # twisted.web calls render_<METHOD>
    def render_GET(self, request: Request) -> bytes | int:
        return self._render(request)

    def render_POST(self, request: Request) -> bytes | int:
        return self._render(request)

    def _render(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        if path.startswith("/__admin/"):
            return self._admin(request, path[len("/__admin/") :])
        if path.startswith("/media/"):
            return self._media(request, path)
        endpoint = Endpoint.from_path(path)
        if endpoint is None or request.method.decode() != endpoint.method:
            self.sandbox.counters.unknown[path] += 1
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return _dumps({"code": 404, "msg": f"no such endpoint: {request.method.decode()} {path}", "data": None})
        sb = self.sandbox
        sb.counters.calls[endpoint.value] += 1
        if sb.counters.first_call is None:
            sb.counters.first_call = time.monotonic()
        query = {k.decode(): v[-1].decode("utf-8", "replace") for k, v in (request.args or {}).items()}
        token = query.pop(TOKEN_PARAM, None)
        params: dict[str, Any] = query
        if endpoint.method == "POST":
            try:
                body = json.loads(request.content.read() or b"{}")  # type: ignore[union-attr]
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return self._error(request, 422, "Parameter error: the body must be a JSON object")
            params = body
        if token != sb.faults.token:
            return self._error(request, 401)
        if sb.faults.concurrency and sb.counters.in_flight >= sb.faults.concurrency:
            return self._error(request, 503)
        if not sb._quota_allows():
            return self._error(request, 439)
        counters = sb.counters
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        delay = sb.faults.latency_ms
        if sb.faults.jitter_ms:
            delay += sb.rng.uniform(-sb.faults.jitter_ms, sb.faults.jitter_ms)
        if delay <= 0:
            return self._finish(request, endpoint, params, counters) or server.NOT_DONE_YET
        call: Any = _reactor.callLater(delay / 1000, self._finish, request, endpoint, params, counters)
        request.notifyFinish().addErrback(lambda _: self._gone(call, counters))
        return server.NOT_DONE_YET

    def _media(self, request: Request, path: str) -> bytes | int:
        """A file of the sandbox's CDN: never billed, no token needed (and
        one that arrives with the token is counted: it must never be)."""
        counters = self.sandbox.counters
        counters.media[path] += 1
        if request.args and TOKEN_PARAM.encode() in request.args:
            counters.media_with_token += 1
        if path == "/media/redirect" and request.args.get(b"to"):
            # An allowed host that sends the download elsewhere (a hostile
            # seller's image, --hostile-every).
            request.setHeader(b"Location", request.args[b"to"][0])
            return self._media_answer(request, 302, b"", "text/plain")
        match = MEDIA_PATH.match(path)
        if match is None or request.method != b"GET":
            return self._media_answer(request, 404, b"not found", "text/plain")
        kind, number, _, ext = match.groups()
        if (kind == "video") != (ext == "mp4"):
            return self._media_answer(request, 404, b"not found", "text/plain")
        fault = self.sandbox.faults.media_faults.get(int(number)) if kind != "sku" else None
        hop = int(request.args.get(b"hop", [b"0"])[0] or b"0") if request.args else 0
        if fault == "loop" or (fault == "moved" and hop == 0):
            request.setHeader(b"Location", f"{path}?hop={hop + 1}".encode())
            return self._media_answer(request, 302, b"", "text/plain")
        status, body, content_type = 200, video() if kind == "video" else jpeg(path), f"{ext_type(ext)}"
        delay = self.sandbox.faults.media_latency_ms / 1000
        if fault == "404":
            status, body, content_type = 404, b"not found", "text/plain"
        elif fault == "html":
            body, content_type = b"<html><body>Access denied</body></html>", "text/html"
        elif fault == "huge":
            body = body + b"\0" * 2_000_000
        elif fault == "slow":
            delay = 30.0
        elif fault == "flaky" and counters.media[path] == 1:
            status, body, content_type = 503, b"busy", "text/plain"
        if delay <= 0:
            return self._media_answer(request, status, body, content_type)
        counters.media_in_flight += 1
        counters.media_max_in_flight = max(counters.media_max_in_flight, counters.media_in_flight)

        def answer() -> None:
            counters.media_in_flight -= 1
            if not request._disconnected:
                request.write(self._media_answer(request, status, body, content_type))
                request.finish()

        call: Any = _reactor.callLater(delay, answer)

        def gone(_: Any) -> None:
            if call.active():
                call.cancel()
                counters.media_in_flight -= 1

        request.notifyFinish().addErrback(gone)
        return server.NOT_DONE_YET

    def _media_answer(self, request: Request, status: int, body: bytes, content_type: str) -> bytes:
        counters = self.sandbox.counters
        counters.media_codes[status] += 1
        counters.media_bytes += len(body)
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _gone(self, call: Any, counters: Counters) -> None:
        """The client hung up before the answer: the call ends unbilled."""
        if call.active():
            call.cancel()
            counters.in_flight -= 1
            self.sandbox._quota_refund()

    def _finish(self, request: Request, endpoint: Endpoint, params: dict[str, Any], counters: Counters) -> bytes:
        sb = self.sandbox
        counters.in_flight -= 1
        try:
            code, data = sb.answer(endpoint, params)
        except ParameterError as exc:
            code, data = 422, b"null"
            msg = f"Parameter error: {exc}"
        else:
            msg = MESSAGES[code]
        if code == 200 and sb.faults.fault_rate and sb.rng.random() < sb.faults.fault_rate:
            code, data = sb.rng.choice((417, 499, 500)), b"null"
            msg = MESSAGES[code]
        if code == 200:
            sb.bill(endpoint, params)
            sb._quota_spent()
        else:
            sb._quota_refund()
        body = b'{"code":%d,"msg":%s,"data":%s}' % (code, _dumps(msg), data)
        if code == 200 and sb.faults.broken:
            kind = next(filter(None, map(sb.faults.broken.get, broken_keys(endpoint, params))), None)
            if kind is not None:
                body = broken_body(kind, data)
        self._write(request, code, body)
        return b""

    def _error(self, request: Request, code: int, msg: str | None = None) -> bytes:
        body = _dumps({"code": code, "msg": msg or MESSAGES[code], "data": None})
        self._write(request, code, body)
        return server.NOT_DONE_YET  # type: ignore[return-value]

    def _write(self, request: Request, code: int, body: bytes) -> None:
        sb = self.sandbox
        sb.counters.codes[code] += 1
        sb.counters.last_answer = time.monotonic()
        style = sb.faults.error_style
        if style == "mixed":
            style = sb.rng.choice(("http", "body"))
        request.setResponseCode(code if style == "http" else 200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        if not request._disconnected:
            request.write(body)
            request.finish()

    def _admin(self, request: Request, action: str) -> bytes:
        sb = self.sandbox
        method = request.method.decode()
        request.setHeader(b"content-type", b"application/json")
        if action == "stats" and method == "GET":
            return _dumps(sb.counters.as_json() | {"balance": sb.balance if sb.faults.quota else None})
        if action == "reset" and method == "POST":
            sb.reset()
            return _dumps({"ok": True})
        if action == "topup" and method == "POST":
            args = parse_qs(request.uri.decode().partition("?")[2])
            try:
                calls = int(args.get("calls", ["0"])[-1])
            except ValueError:
                calls = -1
            if calls <= 0:
                request.setResponseCode(400)
                return _dumps({"ok": False, "error": "calls must be a positive integer"})
            sb.topup(calls)
            return _dumps({"ok": True, "balance": sb.balance})
        if action == "revise" and method == "POST":
            args = parse_qs(request.uri.decode().partition("?")[2])
            try:
                share = float(args.get("share", ["0.05"])[-1])
                delist = float(args.get("delist", ["0"])[-1])
            except ValueError:
                share = delist = -1.0
            if not (0 <= share <= 1 and 0 <= delist <= 1 and share + delist <= 1):
                request.setResponseCode(400)
                return _dumps({"ok": False, "error": "share and delist must be fractions that add up to at most 1"})
            return _dumps({"ok": True, **sb.revise(share, delist)})
        living = sb.catalog.living
        if action in ("advance", "truth") and living is None:
            request.setResponseCode(409)
            return _dumps({"ok": False, "error": "the catalog is still: start the sandbox with --living"})
        if action == "advance" and method == "POST" and living is not None:
            # One simulated day per call; the world stands still in between.
            return _dumps({"ok": True, "day": sb.advance()})
        if action == "truth" and method == "GET" and living is not None:
            catalog = sb.catalog
            truth = living.truth(lambda item_id: [s["skuid"] for s in catalog.detail(item_id, "zh")["skus"]])
            return _dumps({"ok": True, **truth})
        request.setResponseCode(404)
        return _dumps({"ok": False, "error": f"no such admin action: {method} {action}"})


def ext_type(ext: str) -> str:
    return "video/mp4" if ext == "mp4" else "image/jpeg"


class QuietSite(server.Site):
    """A Site that keeps no access log: at thousands of calls a second the
    log would cost more than the answers."""

    def log(self, request: Any) -> None:
        pass


def make_site(catalog: Catalog, faults: Faults) -> QuietSite:
    site = QuietSite(ApiResource(Sandbox(catalog, faults)))
    site.displayTracebacks = False
    return site
