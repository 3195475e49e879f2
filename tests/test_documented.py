"""Every command of the daily-use pages works as written: the ``scrapy``
lines of docs/catalog.md and docs/exports.md, and docs/operations.md's cron
line, run in the order the pages give them, against the sandbox.

The only changes made to a line: a real shop becomes the sandbox's, a path
under ``/srv`` becomes one in the test's folder, and a crawl is pointed at
the sandbox (``TMAPI_BASE_URL``).  A page that drifts from the code fails
here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_scrapy

SHOP = "b2b-sandbox0000"


def commands(page: str) -> list[list[str]]:
    """The ``scrapy`` command lines of *page*'s code blocks, continuation
    lines joined, comments dropped."""
    found: list[list[str]] = []
    in_block = False
    pending = ""
    for text in (ROOT / "docs" / page).read_text(encoding="utf-8").splitlines():
        if text.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = pending + text
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if "scrapy" in [Path(w).name for w in words]:
            found.append(words[[Path(w).name for w in words].index("scrapy") :])
    return found


def adapted(words: list[str], sandbox_url: str) -> list[str]:
    out = [
        re.sub(r"b2b-(22146365959302bc20|\.\.\.)", SHOP, word).replace("/srv/", "srv/").replace("/var/lib/", "var/")
        for word in words[1:]
    ]
    if out[0] == "crawl":
        out += ["-s", f"TMAPI_BASE_URL={sandbox_url}", "-s", "TMAPI_PROGRESS_INTERVAL=0"]
    return out


@pytest.mark.parametrize("page", ["exports.md", "catalog.md"])
def test_the_commands_of_a_page_work_as_written(make_sandbox, tmp_path, page):
    sb = make_sandbox("--shops", "1", "--shop-size", "60")
    lines = commands(page)
    assert len(lines) >= 7, lines  # the page has them all (none lost to a format change)
    for n, words in enumerate(lines):
        if n and words[1] == "crawl":
            sb.revise(0.2, delist=0.05)  # the next day
        args = adapted(words, sb.url)
        (tmp_path / "srv").mkdir(exist_ok=True)
        done = run_scrapy(*args, cwd=tmp_path, env={"TMAPI_TOKEN": sb.token}, timeout=180)
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stderr[-2000:]}"


def test_the_cron_line_works_every_day(make_sandbox, tmp_path):
    cron = next(
        line for line in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").splitlines()
        if "0 3 * * *" in line and "scrapy crawl" in line
    )  # fmt: skip
    words = shlex.split(cron.split("&&", 1)[1].split(">>", 1)[0])
    words = [w for w in words if not w.startswith("TMAPI_TOKEN=")]
    sb = make_sandbox("--shops", "1", "--shop-size", "60")
    (tmp_path / "srv" / "data").mkdir(parents=True)
    for _day in range(3):
        done = run_scrapy(*adapted(words, sb.url), cwd=tmp_path, env={"TMAPI_TOKEN": sb.token}, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
    lines = (tmp_path / "srv" / "data" / "shop.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 * 60  # -o appends: every day a whole crawl
