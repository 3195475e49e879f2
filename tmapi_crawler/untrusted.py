"""Text written by 1688's sellers, made safe for where it goes
(docs/exports.md, "Content from sellers").

Titles, SKU names, property names, shop names and descriptions come from
third parties the user does not control, and the crawler carries them into
places where text acts: the user's storefront (a description's HTML), the
spreadsheets a merchant opens (a cell that starts with ``=`` is a formula),
team chat (a mention, a link).  Each destination has one function here:

* :func:`clean_text`: the record's texts without control characters and
  bidi overrides (NUL, BEL, U+202E ...), at validation;
* :func:`sanitize_html`, :func:`html_as_text`: a description for a shop's
  import file, through an allow-list sanitizer (nh3, the binding of Rust's
  Ammonia);
* :func:`cell`: a CSV cell that no spreadsheet reads as a formula (OWASP's
  advice: a leading ``'``).

The JSON-lines record keeps the API's HTML as it came: it is a faithful copy
(docs/records.md says it is untrusted HTML).
"""

from __future__ import annotations

import re
from typing import Any

import nh3

#: C0 and C1 controls but TAB and newline; the bidi embeddings, overrides and
#: isolates (U+202A-U+202E, U+2066-U+2069), which reorder what a reader sees.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> tuple[str, int]:
    """*text* without control characters and bidi overrides, and how many
    were removed."""
    if not CONTROL_CHARS.search(text):
        return text, 0  # as nearly every text is: subn would copy it
    cleaned, removed = CONTROL_CHARS.subn("", text)
    return cleaned, removed


# -- HTML for a shop --------------------------------------------------------------------

#: The tags product descriptions use, and their harmless attributes.
HTML_TAGS = frozenset(
    {
        "a", "b", "br", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "i", "img", "li", "ol", "p", "span",
        "strong", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul", "caption", "colgroup", "col",
        "center", "font", "hr", "blockquote", "pre", "small", "sub", "sup",
    }
)  # fmt: skip
HTML_ATTRIBUTES = {
    "*": {"style", "align", "title"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "width", "height", "valign"},
    "th": {"colspan", "rowspan", "width", "height", "valign"},
    "table": {"width", "border", "cellpadding", "cellspacing"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "font": {"color", "size"},
}
#: The CSS properties a description may keep (layout and type, nothing that
#: loads a URL or moves the page: no background, position or behavior).
STYLE_PROPERTIES = frozenset(
    {
        "color", "font-size", "font-weight", "font-style", "font-family", "text-align", "text-decoration",
        "line-height", "width", "height", "max-width", "margin", "margin-top", "margin-bottom", "margin-left",
        "margin-right", "padding", "padding-top", "padding-bottom", "padding-left", "padding-right",
        "vertical-align", "border", "border-collapse", "display",
    }
)  # fmt: skip
#: What the link of a description may point to.
URL_SCHEMES = frozenset({"http", "https"})
LINK_REL = "nofollow noopener"
#: ``TMAPI_EXPORT_HTML``'s values.
HTML_MODES = ("sanitized", "text", "raw")


def sanitize_html(html: str) -> str:
    """*html* with only the allow-list's tags, attributes, CSS properties and
    http(s) URLs: no script, style, iframe, object, embed or form, no
    ``on*`` attribute, no ``javascript:`` or ``data:`` URL; links get
    ``rel="nofollow noopener"``."""
    return nh3.clean(
        html,
        tags=set(HTML_TAGS),
        attributes={tag: set(names) for tag, names in HTML_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel=LINK_REL,
        filter_style_properties=set(STYLE_PROPERTIES),
        strip_comments=True,
    )


#: The tags that end a line of text, and a cell's.
_BLOCK_END = re.compile(r"<(?:br|hr|/p|/div|/li|/tr|/h[1-6]|/table|/blockquote|/pre)\b[^>]*>", re.IGNORECASE)
_CELL_END = re.compile(r"</t[dh]\s*>", re.IGNORECASE)


def html_as_text(html: str) -> str:
    """*html*'s text (escaped as HTML wants, every tag gone, scripts and
    styles with their content), a line for each block: a description that
    shows as plain text."""
    marked = _CELL_END.sub(" ", _BLOCK_END.sub("\n", html))
    text = nh3.clean(marked, tags=set(), strip_comments=True)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def shop_html(html: str, mode: str) -> str:
    """A description for a shop's import file by ``TMAPI_EXPORT_HTML``."""
    if mode == "raw":
        return html
    if mode == "text":
        return html_as_text(html)
    return sanitize_html(html)


# -- CSV cells ---------------------------------------------------------------------------

#: What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
#: ``TMAPI_CSV_FORMULAS``'s values.
FORMULA_MODES = ("escape", "keep")


def cell(value: Any) -> Any:
    """*value* as a CSV cell no spreadsheet runs: a text that starts with
    ``=``, ``+``, ``-``, ``@``, a TAB or a CR and is not a number gets a
    leading ``'`` (numbers such as ``-1.5`` are left as they are)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def is_formula(value: str) -> bool:
    """Whether a spreadsheet would read *value*, a cell, as a formula."""
    return value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value)


# -- the record's texts ----------------------------------------------------------------


def _clean(value: Any) -> tuple[Any, int]:
    if isinstance(value, str):
        return clean_text(value)
    return value, 0


def _text_places(record: Any) -> list[tuple[dict[str, Any], str]]:
    """Where a record's seller texts are, ``product_props`` apart: the
    (object, key) of each that holds a text."""
    places = [(record, "title"), (record.get("shop_info"), "shop_name"), (record.get("listing"), "title")]
    places += [(sku, "props_names") for sku in record.get("skus") or ()]
    for prop in record.get("sku_props") or ():
        if isinstance(prop, dict):
            places.append((prop, "prop_name"))
            places += [(value, "name") for value in prop.get("values") or ()]
    return [(holder, key) for holder, key in places if isinstance(holder, dict) and isinstance(holder.get(key), str)]


def clean_record(record: Any) -> int:
    """Remove control characters and bidi overrides (:func:`clean_text`)
    from a product or listing record's seller texts, in place: its title,
    the SKUs' names (``props_names``, ``sku_props`` names and values), the
    property names and values (``product_props``), the shop's name, and the
    listing entry's title; returns how many were removed."""
    places = _text_places(record)
    props = record.get("product_props")
    entries = [entry for entry in props if isinstance(entry, dict)] if isinstance(props, list) else []
    texts = [holder[key] for holder, key in places] + [f"{k}{v}" for entry in entries for k, v in entry.items()]
    if not CONTROL_CHARS.search("\n".join(texts)):  # newlines stay: nothing found between the texts
        return 0  # as nearly every record: one search instead of one a text
    removed = 0
    for holder, key in places:
        holder[key], n = clean_text(holder[key])
        removed += n
    if isinstance(props, list):
        for index, entry in enumerate(props):
            if isinstance(entry, dict) and any(CONTROL_CHARS.search(f"{k}{v}") for k, v in entry.items()):
                fixed = {}
                for name, value in entry.items():
                    clean_name, n = _clean(name)
                    fixed[clean_name], m = _clean(value)
                    removed += n + m
                props[index] = fixed
    return removed
