"""``scrapy catalog report``: made from a store the sandbox filled over three
"days" (SQLite and PostgreSQL), then opened in a real browser, Debian's
headless Chromium, with the network off: no console error, no request, and
the charts hold the data points the store has (counted in the DOM)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import needs, read_jsonl, run_scrapy

SHOP = "b2b-sandbox0000"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(params=["sqlite", "postgresql"])
def filled(request, make_sandbox, tmp_path) -> tuple[str, list[dict]]:
    """A store after three days of the same shop, 1688 changing between
    them; its change records."""
    store = str(tmp_path / "catalog.sqlite") if request.param == "sqlite" else request.getfixturevalue("postgres")
    sb = make_sandbox("--shops", "1", "--shop-size", "80")
    changes: list[dict] = []
    for day in range(3):
        done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-O", f"day{day}.jsonl",
                          "-s", f"TMAPI_BASE_URL={sb.url}", "-s", f"TMAPI_STORE={store}",
                          "-s", f"TMAPI_CHANGES_FILE=changes{day}.jsonl", cwd=tmp_path,
                          env={"TMAPI_TOKEN": sb.token})  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        changes += read_jsonl(tmp_path / f"changes{day}.jsonl")
        sb.revise(0.3, delist=0.05)
    return store, changes


def open_in_chromium(page: Path, workdir: Path) -> tuple[str, str]:
    """The DOM once the page's scripts ran, and Chromium's log; every
    request goes to a closed port (the network is off)."""
    done = subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={workdir / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--proxy-server=http://127.0.0.1:9", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.fixture
def chromium() -> str:
    """Debian's chromium, headless."""
    needs("chromium")
    assert CHROMIUM is not None
    return CHROMIUM


def test_the_report_opens_offline_with_every_data_point(filled, chromium, tmp_path):
    store, changes = filled
    product = next(c["item_id"] for c in changes if c["change"] == "price")
    done = run_scrapy("catalog", "report", "--store", store, "--top", "3", "--item-id", str(product),
                      "-O", "report.html", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = tmp_path / "report.html"
    text = page.read_text(encoding="utf-8")
    # Self-contained: no script, style, font or image fetched from anywhere.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:)?//", text)
    assert "plotly.js" in text.lower() and "Noto Sans CJK SC" in text
    dom, log = open_in_chromium(page, tmp_path)
    assert "CONSOLE" not in log and "net::ERR" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    # Changes per day: a bar for each day and kind with a change, as the records say.
    bars = Counter((c["detected_at"][:10], c["change"]) for c in changes)
    per_day = chart(dom, "per-day")
    assert per_day.count('<g class="point"') == len(bars)
    # Each price chart: a marker for each point of each SKU's series.
    scatter = figures(text)
    assert len(scatter) == 1 + 3  # the product's page and the three movers
    for name, points in scatter.items():
        assert chart(dom, name).count('<path class="point"') == points, name
    assert f"chart-product-{product}" in dom
    assert len(re.findall(r'data-chart="mover-\d+"', dom)) == 3
    # The lists, with their 1688 links.
    delisted = {c["item_id"] for c in changes if c["change"] == "delisted"}
    assert delisted
    for item_id in delisted:
        assert f"https://detail.1688.com/offer/{item_id}.html" in dom
    assert "睡衣" in dom or "韩版" in dom  # Chinese titles as they are
    # The crawls: the store recorded each of the three, with its figures.
    runs = chart_section(dom, "runs")
    assert runs.count("<tr>") == 1 + 3
    assert runs.count("member_id=b2b-sandbox0000") == 3
    # What the store answered, in calls saved: the later days' products, and
    # the descriptions reused for the products whose price changed.
    saved = [int(n) for n in re.findall(r"\((\d+) calls saved\)", runs)]
    assert len(saved) == 3 and saved[-1] == 0 and all(n > 0 for n in saved[:2]), saved
    assert runs.count("descriptions reused") == 2


def chart_section(dom: str, name: str) -> str:
    start = dom.index(f'<section id="{name}">')
    return dom[start : dom.index("</section>", start)]


def chart(dom: str, name: str) -> str:
    start = dom.index(f'data-chart="{name}"')
    end = dom.find('<div class="chart"', start + 1)
    return dom[start : end if end > 0 else len(dom)]


def figures(text: str) -> dict[str, int]:
    """Each scatter chart's number of points, from the data the page gave Plotly."""
    found = {}
    for name, data in re.findall(
        r'data-chart="([\w-]+)">.*?Plotly\.newPlot\(\s*"chart-[\w-]+",\s*(\[.*?\]),\s*\{', text, re.DOTALL
    ):
        traces = json.loads(data)
        if traces and traces[0].get("type") == "scatter":
            found[name] = sum(len(t["x"]) for t in traces)
    return found


@pytest.mark.slow  # the real command
def test_bad_report_input_is_one_line(tmp_path):
    store = tmp_path / "catalog.sqlite"
    for args, message in (
        (["--top", "0", "-O", "r.html", "--store", str(store)], "--top=0"),
        (["--since", "2026-11-20", "--until", "2026-11-10", "-O", "r.html", "--store", str(store)],
         "is not before --until"),
        (["-O", "r.html"], "no catalog store"),
        (["--store", str(store)], "give the file to write"),
        (["-O", "r.html", "--store", str(store)], "no catalog store at"),
    ):  # fmt: skip
        done = run_scrapy("catalog", "report", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert message in done.stderr
