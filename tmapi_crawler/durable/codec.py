"""Requests as JSON, never pickle: what a crawl reads back from its queue
(Redis, or the crawl state in ``JOBDIR``) is data.

:func:`encode_request` and :func:`decode_request` are what both queues use;
``dumps``/``loads`` are the serializer of a request's dict (the one
scrapy-redis's queue takes).  JSON has no bytes and no record classes, so
they are tagged: bytes as ``{"__b64__": "..."}``, a record of ours (a value of
``meta`` or ``cb_kwargs``, where the spiders keep them) as
``{"__record__": "product", "fields": {...}}``.  Anything else that JSON
cannot hold is refused with an error that names it, rather than stored in a
form that cannot be read back.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import orjson
from scrapy.utils.request import request_from_dict

from tmapi_crawler.api import API_META
from tmapi_crawler.compat import request_dict
from tmapi_crawler.records import FailureItem, ListingItem, ProductItem

if TYPE_CHECKING:
    from scrapy import Request, Spider

_RECORDS: dict[str, type[dict[str, Any]]] = {"product": ProductItem, "listing": ListingItem, "failure": FailureItem}
_RECORD_NAMES = {cls: name for name, cls in _RECORDS.items()}


class CodecError(ValueError):
    """An entry that is not a request this project wrote."""


def _b64(value: bytes) -> dict[str, str]:
    return {"__b64__": base64.b64encode(value).decode("ascii")}


def _default(value: Any) -> Any:
    # Only what _tagged did not place: bytes or objects elsewhere in a
    # request cannot be read back, so they are refused.
    where = "bytes outside the body, headers and meta values" if isinstance(value, bytes) else type(value).__name__
    raise TypeError(f"a request holds {where}, which cannot be stored as JSON")


def _tag(value: Any) -> Any:
    if isinstance(value, bytes):
        return _b64(value)
    name = _RECORD_NAMES.get(type(value))
    return {"__record__": name, "fields": value} if name else value


def _tagged(obj: dict[str, Any]) -> dict[str, Any]:
    """A request's dict with its bytes (body, header values, values of
    ``meta`` and ``cb_kwargs``) and its records (values of ``meta`` and
    ``cb_kwargs``, where the spiders keep them) tagged.  Only there: walking
    every nested value of a request that carries a whole product costs more
    than the rest of its encoding."""
    out = dict(obj)
    if isinstance(out.get("body"), bytes):
        out["body"] = _b64(out["body"])
    headers = out.get("headers")
    if isinstance(headers, dict):
        out["headers"] = {
            (k.decode("latin-1") if isinstance(k, bytes) else k): [
                _tag(v) for v in (vs if isinstance(vs, list) else [vs])
            ]
            for k, vs in headers.items()
        }
    for key in ("meta", "cb_kwargs"):
        values = out.get(key)
        if isinstance(values, dict):
            out[key] = {k: _tag(v) for k, v in values.items()}
    return out


def _untag(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "__b64__" in value:
        return base64.b64decode(value["__b64__"])
    if "__record__" in value:
        cls = _RECORDS.get(value["__record__"])
        if cls is None or not isinstance(value.get("fields"), dict):
            raise CodecError(f"unknown record type {value['__record__']!r}")
        return cls(value["fields"])
    return value


def _untagged(obj: dict[str, Any]) -> dict[str, Any]:
    if "body" in obj:
        obj["body"] = _untag(obj["body"])
    headers = obj.get("headers")
    if isinstance(headers, dict):
        obj["headers"] = {k: [_untag(v) for v in vs] if isinstance(vs, list) else vs for k, vs in headers.items()}
    for key in ("meta", "cb_kwargs"):
        values = obj.get(key)
        if isinstance(values, dict):
            obj[key] = {k: _untag(v) for k, v in values.items()}
    return obj


def dumps(obj: dict[str, Any]) -> bytes:
    """A request's dict as JSON (orjson: several times the standard
    library's speed; its output is compact UTF-8)."""
    tagged = _tagged(obj)
    try:
        return orjson.dumps(tagged, default=_default)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, TypeError):
            raise TypeError(str(exc.__cause__)) from None
        # orjson takes integers of 64 bits at most; the standard library any.
        return json.dumps(tagged, default=_default, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes | str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
        if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
            raise CodecError("not a JSON request: no url")
        return _untagged(obj)
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"not a JSON request: {exc}") from None


def encode_request(request: Request, spider: Spider) -> bytes:
    """*request* as JSON; its callback and errback by name."""
    return dumps(request_dict(request, spider))


def decode_request(data: bytes | str, spider: Spider) -> Request:
    """The request :func:`encode_request` wrote; raises :class:`CodecError`
    (or what Scrapy raises for an unknown callback).  An API call queued by
    an earlier version gets what every API call carries now (its download
    slot, no robots.txt, no redirect followed)."""
    request = request_from_dict(loads(data), spider=spider)
    if "tmapi" in request.meta:
        for key, value in API_META.items():
            request.meta.setdefault(key, value)
    return request
