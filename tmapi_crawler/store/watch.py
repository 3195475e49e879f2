"""The watch list: the products a user sells (``TMAPI_WATCH``; docs/catalog.md,
"The products you sell").

A file of one item id or 1688 product URL a line (blank lines and ``#``
comments skipped), or a products CSV exported from the user's shop:
Shopify's products export (its ``Handle`` column) or WooCommerce's (its
``SKU`` column), recognised by the handles and SKUs this project's exports
write (``1688-<item id>``; a variant's SKU is its 1688 SKU id, and the
product's own row names the product).  UTF-8, with or without a byte-order
mark (as Excel and Notepad save it).
"""

from __future__ import annotations

import csv
import re
from typing import TYPE_CHECKING

from tmapi_crawler.api import MAX_ID, offer_id_from_url
from tmapi_crawler.config import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

#: A handle or SKU of this project's shop exports.
HANDLE = re.compile(r"1688-(\d{1,19})")
#: The columns of a shop's products export that name the product.
ID_COLUMNS = ("Handle", "SKU", "handle", "sku")


def read_watch(path: Path) -> frozenset[int]:
    """The item ids *path* names; raises :class:`ConfigError` (one line) for
    a file that cannot be read or names no product."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"TMAPI_WATCH={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"TMAPI_WATCH={path} cannot be read ({exc}): give a UTF-8 text or CSV file") from None
    first = text.lstrip().split("\n", 1)[0]
    ids = _from_csv(text) if any(column in first.split(",")[:80] for column in ID_COLUMNS) else _from_lines(text)
    if not ids:
        raise ConfigError(
            f"TMAPI_WATCH={path} names no product: give item ids or 1688 product URLs one a line, or a products "
            "CSV exported from your shop whose handles (Shopify) or SKUs (WooCommerce) are this project's 1688-<id>"
        )
    return frozenset(ids)


def _from_lines(text: str) -> set[int]:
    ids = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.isascii() and line.isdigit() and 0 < int(line) <= MAX_ID:
            ids.add(int(line))
            continue
        found = offer_id_from_url(line) or _handle(line)
        if found is not None:
            ids.add(found)
    return ids


def _from_csv(text: str) -> set[int]:
    ids = set()
    for row in csv.DictReader(text.splitlines()):
        for column in ID_COLUMNS:
            found = _handle(row.get(column) or "")
            if found is not None:
                ids.add(found)
    return ids


def _handle(value: str) -> int | None:
    match = HANDLE.fullmatch(value.strip())
    if match is None:
        return None
    item_id = int(match.group(1))
    return item_id if 0 < item_id <= MAX_ID else None
