"""Requests as JSON, never pickle: what a worker reads from Redis is data.

``dumps``/``loads`` are the serializer that scrapy-redis's queue takes.  JSON
has no bytes and no record classes, so they are tagged: bytes as
``{"__b64__": "..."}``, a record of ours (in ``meta``) as
``{"__record__": "product", "fields": {...}}``.  Anything else that JSON
cannot hold is refused with an error that names it, rather than stored in a
form that cannot be read back.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tmapi_crawler.records import FailureItem, ListingItem, ProductItem

_RECORDS: dict[str, type[dict[str, Any]]] = {"product": ProductItem, "listing": ListingItem, "failure": FailureItem}
_RECORD_NAMES = {cls: name for name, cls in _RECORDS.items()}


class CodecError(ValueError):
    """An entry that is not a request this project wrote."""


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__b64__": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"a request holds a {type(value).__name__}, which cannot be stored as JSON")


def _tag(value: Any) -> Any:
    """Records to tagged objects, bytes keys (headers) to text."""
    if isinstance(value, dict):
        items = {(k.decode("latin-1") if isinstance(k, bytes) else k): _tag(v) for k, v in value.items()}
        name = _RECORD_NAMES.get(type(value))
        return {"__record__": name, "fields": items} if name else items
    if isinstance(value, (list, tuple)):
        return [_tag(v) for v in value]
    return value


def _untag(obj: dict[str, Any]) -> Any:
    if "__b64__" in obj:
        return base64.b64decode(obj["__b64__"])
    if "__record__" in obj:
        cls = _RECORDS.get(obj["__record__"])
        if cls is None or not isinstance(obj.get("fields"), dict):
            raise CodecError(f"unknown record type {obj['__record__']!r}")
        return cls(obj["fields"])
    return obj


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(_tag(obj), default=_default, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes | str) -> dict[str, Any]:
    try:
        obj = json.loads(data, object_hook=_untag)
    except (ValueError, TypeError, KeyError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
        raise CodecError(f"not a JSON request: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
        raise CodecError("not a JSON request: no url")
    return obj
