"""``scrapy catalog report``: one self-contained HTML file of what the
catalog store saw over a period (docs/catalog.md).

The charts are Plotly's (``plotly``, well kept, interactive: zoom, hover,
a legend to hide a series): its JavaScript is written once, inline, into the
file, so that the page opens with no network; nothing is fetched, no font,
no script, no style.  Chinese titles use the CJK fonts the reader has
(:data:`FONTS`).  The figures come from :class:`tmapi_crawler.store.history.History`.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from tmapi_crawler.api import offer_url
from tmapi_crawler.extensions import from_the_store

if TYPE_CHECKING:
    from tmapi_crawler.store.history import History, Listed, Mover, Period

#: Sans-serif fonts with Chinese glyphs, those of every common system first.
FONTS = (
    '"Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", '
    '"WenQuanYi Micro Hei", sans-serif'
)
#: The kinds of change, in the order the charts stack them, with their colours.
KINDS = {
    "new": "#2ca02c",
    "price": "#1f77b4",
    "stock": "#9467bd",
    "sold_out": "#d62728",
    "back_in_stock": "#17becf",
    "sku_added": "#bcbd22",
    "sku_removed": "#8c564b",
    "title": "#7f7f7f",
    "delisted": "#e377c2",
}
#: The lists of products the report shows, with their headings.
LISTS = {
    "sold_out": "Sold out",
    "back_in_stock": "Back in stock",
    "new": "New",
    "delisted": "Delisted",
}

STYLE = f"""
body {{ font-family: {FONTS}; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #eee; padding: 4px 6px; text-align: left; vertical-align: top; }}
td.n {{ text-align: right; }} .muted {{ color: #777; }} a {{ color: #1f5fa8; }}
"""


def _e(value: Any) -> str:
    return html.escape(str(value if value is not None else ""))


class Report:
    """The page, chart by chart: Plotly's script goes with the first."""

    def __init__(self, history: History, period: Period):
        self.history = history
        self.period = period
        self.script_written = False
        self.charts = 0

    def _chart(self, figure: go.Figure, name: str) -> str:
        figure.update_layout(font={"family": FONTS}, margin={"l": 50, "r": 20, "t": 40, "b": 40}, height=360)
        self.charts += 1
        chart = figure.to_html(
            full_html=False,
            include_plotlyjs=not self.script_written,  # inline, once: no network
            div_id=f"chart-{name}",
            config={"displaylogo": False, "responsive": True},
        )
        self.script_written = True
        return f'<div class="chart" data-chart="{_e(name)}">{chart}</div>'

    def render(self, top: int, item_ids: list[int]) -> str:
        since, until = self.period.since or "the first change", self.period.until or "now"
        written = datetime.now(UTC).isoformat(timespec="seconds")
        parts = [
            "<!DOCTYPE html>",
            '<html lang="zh-CN"><head><meta charset="utf-8">',
            f"<title>Catalog report: {_e(since)} to {_e(until)}</title>",
            f"<style>{STYLE}</style></head><body>",
            "<h1>Catalog report</h1>",
            f'<p class="muted">From {_e(since)} to {_e(until)}, written {_e(written)}.</p>',
        ]
        for item_id in item_ids:
            parts.append(self._product(item_id))
        parts += [self._runs(), self._freshness(), self._per_day(), self._movers(top)]
        parts += [self._listed(self.history.listed(kind, self.period), heading) for kind, heading in LISTS.items()]
        parts.append("</body></html>")
        return "\n".join(parts)

    def _runs(self) -> str:
        runs = self.history.runs(self.period)
        rows = [
            "<tr><th>started</th><th>spider</th><th>seed</th><th>finish reason</th><th>products</th>"
            "<th>calls billed</th><th>from the store</th><th>changes</th></tr>"
        ]
        for run in runs:
            seed = ", ".join(f"{k}={v}" for s in run["seed"] or [] for k, v in s.items()) if run["seed"] else ""
            changes = ", ".join(f"{kind} {count}" for kind, count in sorted(run["changes"].items()))
            workers = f" ({run['workers']} workers)" if run["workers"] > 1 else ""
            rows.append(
                f"<tr><td>{_e(run['started_at'])}</td><td>{_e(run['spider'])}{_e(workers)}</td><td>{_e(seed)}</td>"
                f"<td>{_e(run['finish_reason'])}</td><td class='n'>{run['products']}</td>"
                f"<td class='n'>{run['calls']}</td><td>{_e(from_the_store(run['served'], run['descriptions_reused']))}"
                f"</td><td>{_e(changes)}</td></tr>"
            )
        body = f"<table>{''.join(rows)}</table>" if runs else '<p class="muted">No crawl in the period.</p>'
        return f'<h2>Crawls</h2><section id="runs">{body}</section>'

    def _freshness(self) -> str:
        """Per crawl: the calls it spent refreshing stored products, the
        changes that matter they caught, and the share of orders the store
        estimated current after it."""
        runs = [run for run in self.history.runs(self.period) if run["refresh_spent"] is not None]
        rows = [
            "<tr><th>started</th><th>refresh budget</th><th>calls spent refreshing</th>"
            "<th>changes that matter caught</th><th>orders current (estimated)</th></tr>"
        ]
        for run in runs:
            current = run["estimated_current"]
            shown = f"{current:.1%}" if current is not None else ""
            rows.append(
                f"<tr><td>{_e(run['started_at'])}</td><td class='n'>{run['refresh_budget'] or 0}</td>"
                f"<td class='n'>{run['refresh_spent'] or 0}</td><td class='n'>{run['refresh_caught'] or 0}</td>"
                f"<td class='n'>{_e(shown)}</td></tr>"
            )
        body = (
            f"<table>{''.join(rows)}</table>"
            if runs
            else '<p class="muted">No crawl refreshed stored products in the period.</p>'
        )
        return f'<h2>Freshness</h2><section id="freshness">{body}</section>'

    def _per_day(self) -> str:
        days = self.history.per_day(self.period)
        if not days:
            return '<h2>Changes per day</h2><p class="muted">No change in the period.</p>'
        figure = go.Figure()
        dates = sorted(days)
        for kind, colour in KINDS.items():
            counts = [days[d].get(kind, 0) for d in dates]
            if any(counts):
                figure.add_bar(x=dates, y=counts, name=kind.replace("_", " "), marker_color=colour)
        figure.update_layout(barmode="stack", xaxis_type="category", yaxis_title="changes")
        return f"<h2>Changes per day</h2>{self._chart(figure, 'per-day')}"

    def _series_chart(self, mover: Mover, name: str) -> str:
        figure = go.Figure()
        for sku, points in sorted(mover.series.items()):
            stock = sku.endswith(" stock")
            figure.add_scatter(
                x=[at for at, _ in points],
                y=[value for _, value in points],
                mode="lines+markers",
                line_shape="hv",
                name=sku,
                yaxis="y2" if stock else "y",
            )
        layout: dict[str, Any] = {"yaxis_title": "price (CNY)"}
        if any(sku.endswith(" stock") for sku in mover.series):
            layout["yaxis2"] = {"title": "stock", "overlaying": "y", "side": "right"}
        figure.update_layout(**layout)
        return self._chart(figure, name)

    def _movers(self, top: int) -> str:
        movers = self.history.movers(self.period, top)
        parts = [f"<h2>The {top} biggest price movers</h2>"]
        if not movers:
            parts.append('<p class="muted">No price change in the period.</p>')
        for mover in movers:
            parts.append(
                f'<h3><a href="{_e(offer_url(mover.item_id))}">{_e(mover.title or mover.item_id)}</a> '
                f"<span class='muted'>{mover.relative:+.1%}</span></h3>"
            )
            parts.append(self._series_chart(mover, f"mover-{mover.item_id}"))
        return "".join(parts)

    def _product(self, item_id: int) -> str:
        product = self.history.product(item_id)
        if product is None:
            return f'<h2>Product {item_id}</h2><p class="muted">Not in the store.</p>'
        title = f'<a href="{_e(offer_url(item_id))}">{_e(product.title or item_id)}</a>'
        return f"<h2>{title}: price and stock of each SKU</h2>{self._series_chart(product, f'product-{item_id}')}"

    @staticmethod
    def _listed(listed: Listed, heading: str) -> str:
        if not listed.count:
            return f'<h2>{_e(heading)}</h2><p class="muted">None in the period.</p>'
        items = "".join(
            f'<li><a href="{_e(offer_url(item_id))}">{_e(title or item_id)}</a> '
            f"<span class='muted'>{_e(at)}</span></li>"
            for item_id, title, at in listed.products
        )
        more = listed.count - len(listed.products)
        tail = f'<p class="muted">and {more} more (scrapy catalog changes --change {listed.kind})</p>' if more else ""
        return f'<h2>{_e(heading)} ({listed.count})</h2><ul id="{_e(listed.kind)}">{items}</ul>{tail}'
