"""What an alert says of the catalog's changes (``TMAPI_ALERT_CHANGES``,
docs/operations.md): the rules, the changes that match them, and the three
forms of the message (``TMAPI_ALERT_FORMAT``).

Pure functions and small classes over change records; the webhook
(:mod:`tmapi_crawler.notify.alerts`) collects the changes of a crawl, and sends.

* :func:`parse_rules`: ``price_drop:10%,sold_out,new`` -> :class:`Rule` s;
* :class:`Digest`: the changes that matched, the largest price moves first,
  at most ``TMAPI_ALERT_MAX_CHANGES`` of them kept (memory bounded whatever
  the crawl's size), and how many there were of each kind;
* :func:`render`: the payload in the chosen format: ``json`` (the report,
  with a Markdown ``text``), ``slack`` (``text`` and ``blocks``, within
  Slack's limits), ``discord`` (``content``, at most 2,000 characters a
  message and :data:`DISCORD_MOST_MESSAGES` messages).
"""

from __future__ import annotations

import heapq
import itertools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from tmapi_crawler.api import offer_url

if TYPE_CHECKING:
    from collections.abc import Callable

#: The rules of TMAPI_ALERT_CHANGES; the first two take an optional ``:P%``.
RULES = (
    "price_drop",
    "price_rise",
    "sold_out",
    "back_in_stock",
    "delisted",
    "new",
    "sku_added",
    "sku_removed",
    "title",
)
#: Slack's documented limits: blocks per message, characters of a section's
#: text, of a header.
SLACK_MOST_BLOCKS = 50
SLACK_SECTION_CHARS = 3000
SLACK_HEADER_CHARS = 150
#: Discord's: characters of a message's content; the messages an alert may take.
DISCORD_CONTENT_CHARS = 2000
DISCORD_MOST_MESSAGES = 3


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    #: For price rules: the least move, in percent (``None``: any).
    percent: float | None = None

    def matches(self, change: dict[str, Any], relative: float | None) -> bool:
        if self.kind in ("price_drop", "price_rise"):
            if change.get("change") != "price" or relative is None:
                return False
            move = -relative if self.kind == "price_drop" else relative
            return move > 0 and (self.percent is None or move * 100 >= self.percent)
        return change.get("change") == self.kind

    def __str__(self) -> str:
        return self.kind if self.percent is None else f"{self.kind}:{self.percent:g}%"


def parse_rules(text: str) -> list[Rule]:
    """``TMAPI_ALERT_CHANGES`` as rules; raises ValueError with what is
    wrong and what is allowed."""
    rules = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, _, amount = part.partition(":")
        if kind not in RULES:
            raise ValueError(f"unknown rule {part[:40]!r}; the rules are {', '.join(RULES)} (price ones take :P%)")
        percent = None
        if amount:
            if kind not in ("price_drop", "price_rise"):
                raise ValueError(f"{kind} takes no amount ({part[:40]!r}); only price_drop:P% and price_rise:P% do")
            try:
                percent = float(amount.removesuffix("%"))
            except ValueError:
                raise ValueError(f"{part[:40]!r}: the amount is a percentage, such as {kind}:10%") from None
            if not 0 < percent < 1000:
                raise ValueError(f"{part[:40]!r}: the percentage must be above 0")
        rules.append(Rule(kind, percent))
    if not rules:
        raise ValueError(f"no rule; give some of {', '.join(RULES)}")
    return rules


def relative_change(change: dict[str, Any]) -> float | None:
    """A price change's move, as a fraction of the old price."""
    if change.get("change") != "price":
        return None
    try:
        old, new = Decimal(str(change.get("old"))), Decimal(str(change.get("new")))
    except (InvalidOperation, ValueError):
        return None
    if not old.is_finite() or not new.is_finite() or old <= 0:
        return None
    return float((new - old) / old)


@dataclass(slots=True)
class Digest:
    """The changes that matched the rules: at most *most* kept, the largest
    price moves first, then the others as they came; every one counted."""

    rules: list[Rule]
    most: int
    matched: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    _kept: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, change: dict[str, Any]) -> bool:
        relative = relative_change(change)
        if not any(rule.matches(change, relative) for rule in self.rules):
            return False
        self.matched += 1
        kind = change["change"]
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self._keep({**change, "relative_change": None if relative is None else round(relative, 4)})
        return True

    def _keep(self, entry: dict[str, Any]) -> None:
        """Keep *entry* if it is among the *most* largest price moves (a
        change of another kind after them, the earlier first)."""
        relative = entry.get("relative_change")
        # A min-heap of the kept: the smallest move (then the latest) goes first.
        rank = (abs(relative) if relative is not None else -1.0, -next(self._order), entry)
        if len(self._kept) < self.most:
            heapq.heappush(self._kept, rank)
        elif rank[:2] > self._kept[0][:2]:
            heapq.heapreplace(self._kept, rank)

    def changes(self) -> list[dict[str, Any]]:
        return [entry for *_, entry in sorted(self._kept, key=lambda rank: rank[:2], reverse=True)]

    def merge(self, changes: list[dict[str, Any]], matched: int, by_kind: dict[str, int]) -> None:
        """Another worker's digest (its kept changes and its counts)."""
        for change in changes:
            self._keep(change)
        self.matched += matched
        for kind, count in by_kind.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + count


# -- the message ----------------------------------------------------------------------


def _line(
    change: dict[str, Any],
    text: Callable[[str], str] | None = None,
    link: Callable[[str, str], str] | None = None,
) -> str:
    """One change: the product (a link to it), the SKU, what moved; the
    seller's texts (title, SKU name, a title change's values) through *text*,
    which escapes them for the destination, and the link made by *link*
    (Markdown's ``[title](url)`` by default)."""
    text = text or markdown_text
    link = link or (lambda label, url: f"[{label}]({url})")
    title = text(change["title"]) if change.get("title") else f"item {change['item_id']}"
    sku = f" ({text(change['sku'])})" if change.get("sku") else ""
    what = change["change"].replace("_", " ")
    if change["change"] == "price":
        relative = change.get("relative_change")
        move = f" ({relative:+.1%})" if relative is not None else ""
        what = f"price {change.get('old')} → {change.get('new')}{move}"
    elif change["change"] == "title" and (change.get("old") is not None or change.get("new") is not None):
        what += f": {text(str(change.get('old')))} → {text(str(change.get('new')))}"
    return f"{link(title, change.get('url') or offer_url(change['item_id']))}{sku}: {what}"


#: What Markdown (Discord's, Apprise's) reads as formatting, a link, a heading or a quote.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~|<>\[\]()#:!-])")
#: A mention in Discord (@everyone, @here, <@id> once "<" is escaped) or Slack.
_MENTION = re.compile(r"@(?=\w)")


def _no_autolink(text: str) -> str:
    """A URL in a seller's text would be made a link by the chat: its
    ``://`` is broken by a zero-width space."""
    return text.replace("://", ":\u200b//").replace("www.", "www\u200b.")


def markdown_text(text: str) -> str:
    """A seller's *text* as Markdown that shows it as it is: every character
    Markdown reads escaped with a backslash, no mention (a zero-width space
    after ``@``), no automatic link."""
    return _MENTION.sub("@\u200b", _MARKDOWN_SPECIAL.sub(r"\\\1", _no_autolink(text)))


def slack_text(text: str) -> str:
    """A seller's *text* in Slack's mrkdwn: ``&``, ``<`` and ``>`` as Slack
    says to escape them (so no ``<!everyone>`` nor ``<url|link>``), ``|``
    harmless, no automatic link, no ``@`` mention."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u200b", _no_autolink(escaped))


def headline(report: dict[str, Any]) -> str:
    failed = report.get("failed_monitors") or []
    kinds = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(report["changes_by_kind"].items()))
    parts = [f"TMAPI crawl of {report.get('spider')} ended ({report.get('finish_reason')})"]
    if kinds:
        parts.append(f"changes: {kinds}")
    if failed:
        parts.append(f"{len(failed)} monitor(s) failed")
    return "; ".join(parts)


def markdown_items(report: dict[str, Any]) -> list[str]:
    """The Markdown list of the message: failed monitors, then changes."""
    lines = [f"- monitor failed: {m['monitor']}: {m['reason']}" for m in report.get("failed_monitors") or []]
    lines += [f"- {_line(change)}" for change in report.get("changes") or []]
    if report.get("more_changes"):
        lines.append(f"- and {report['more_changes']} more changes (scrapy catalog changes has them all)")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The whole message: the headline in bold, then :func:`markdown_items`."""
    return "\n".join([f"**{headline(report)}**", *markdown_items(report)])


def render(report: dict[str, Any], form: str) -> list[dict[str, Any]]:
    """The payloads to POST, in order, for *form* (``json``, ``slack``,
    ``discord``)."""
    if form == "slack":
        return [_slack(report)]
    if form == "discord":
        return _discord(report)
    return [{**report, "text": markdown(report)}]


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _slack(report: dict[str, Any]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(headline(report), SLACK_HEADER_CHARS)}}
    ]
    items = [f"• monitor failed: {m['monitor']}: {m['reason']}" for m in report.get("failed_monitors") or []]
    items += [f"• {_slack_line(change)}" for change in report.get("changes") or []]
    section = ""
    left = len(items)
    for item in items:
        if len(section) + len(item) + 1 > SLACK_SECTION_CHARS:
            if len(blocks) >= SLACK_MOST_BLOCKS - 2:
                break
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": section}})
            section = ""
        section = f"{section}\n{item}" if section else _cut(item, SLACK_SECTION_CHARS)
        left -= 1
    if section:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": section}})
    more = left + (report.get("more_changes") or 0)
    if more:
        text = f"and {more} more (scrapy catalog changes has them all)"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    return {"text": _cut(headline(report), SLACK_SECTION_CHARS), "blocks": blocks}


def _slack_line(change: dict[str, Any]) -> str:
    """Slack's mrkdwn links are ``<url|text>`` (a ``|`` in the text would end it)."""
    return _line(change, slack_text, lambda label, url: f"<{url}|{label.replace('|', '¦')}>")


def _discord(report: dict[str, Any]) -> list[dict[str, Any]]:
    lines = markdown(report).splitlines()
    messages: list[str] = []
    current = ""
    shown = 0
    for full in lines:
        line = _cut(full, DISCORD_CONTENT_CHARS - 100)
        if len(current) + len(line) + 1 > DISCORD_CONTENT_CHARS - 100:
            if len(messages) + 1 >= DISCORD_MOST_MESSAGES:
                break
            messages.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
        shown += 1
    hidden = len(lines) - shown
    if hidden:
        current += f"\n… and {hidden} more lines (scrapy catalog changes has them all)"
    messages.append(current)
    # No mention pings anyone, whatever a message holds (Discord's allowed_mentions).
    return [{"content": message, "allowed_mentions": {"parse": []}} for message in messages]
