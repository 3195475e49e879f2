"""The installed command: the project built as a wheel, installed into a new
virtual environment, and ``tmapi`` run from a folder that is not the
repository, against the sandbox.

The new environment sees the tested packages of requirements.txt (a ``.pth``
file names this environment's site-packages) and installs from no index:
pip then resolves the wheel's declared dependencies against exactly the
tested set, and fails if one is missing or out of its range.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT, read_jsonl, starts_process

SHOP = "b2b-sandbox0000"


@starts_process(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a new environment with the project's wheel."""
    where = tmp_path_factory.mktemp("install")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(where / "dist"), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = list((where / "dist").glob("tmapi_crawler-*.whl"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "tested-set.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", str(wheel)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]  # every dependency declared, in range
    return venv / "bin"


def tmapi(bin_dir: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCRAPY_", "TMAPI_", "PYTHONPATH"))}
    return subprocess.run(
        [str(bin_dir / "tmapi"), *args], cwd=cwd, env={**clean, **(env or {})},
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip


def test_the_installed_command_crawls_from_any_folder(installed, sandbox, tmp_path):
    elsewhere = tmp_path / "anywhere"
    elsewhere.mkdir()
    listed = tmapi(installed, "list", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["category", "item", "shop"]
    done = tmapi(installed, "crawl", "shop", "-a", f"member_id={SHOP}", "-O", "products.jsonl",
                 "-s", f"TMAPI_BASE_URL={sandbox.url}", "-s", "TMAPI_STORE=catalog.sqlite",
                 cwd=elsewhere, env={"TMAPI_TOKEN": sandbox.token})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_jsonl(elsewhere / "products.jsonl")) == 60
    # The project's own commands too, from the installed package.
    report = tmapi(installed, "catalog", "report", "--store", "catalog.sqlite", "-O", "report.html", cwd=elsewhere)
    assert report.returncode == 0, report.stderr
    assert (elsewhere / "report.html").stat().st_size > 100_000
    # It is the installed copy that ran, not this checkout.
    where = subprocess.run(
        [str(installed / "python"), "-c", "import tmapi_crawler; print(tmapi_crawler.__file__)"],
        capture_output=True, text=True, check=True, cwd=elsewhere,
    )  # fmt: skip
    assert str(ROOT / "tmapi_crawler") not in where.stdout


SUPPLIER_SPIDER = '''
from tmapi_crawler.spiders.shop import ShopSpider


class SupplierSpider(ShopSpider):
    """The shop spider, subclassed: our suppliers' shops, with a failures file of their own."""

    name = "supplier"
    custom_settings = {"TMAPI_FAILURES_FILE": "supplier-failures.jsonl"}
'''


def python_m(
    bin_dir: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCRAPY_", "TMAPI_", "PYTHONPATH"))}
    return subprocess.run(
        [str(bin_dir / "python"), "-m", *args], cwd=cwd, env={**clean, **(env or {})},
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip


def test_the_addon_alone_in_a_project_made_by_scrapy_startproject(installed, make_sandbox, tmp_path):
    """docs/in-your-project.md, as a user does it: the template's politeness
    settings (DOWNLOAD_DELAY = 1, one request a domain, robots.txt) stay for
    what else the project crawls, never pace the API."""
    sb = make_sandbox("--fault-rate", "0.2", "--seed", "3", "--latency-ms", "20")
    made = python_m(installed, "scrapy", "startproject", "sourcing", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    project = tmp_path / "sourcing"
    settings = project / "sourcing" / "settings.py"
    template = settings.read_text()
    assert "ROBOTSTXT_OBEY = True" in template and "DOWNLOAD_DELAY = 1" in template
    assert "CONCURRENT_REQUESTS_PER_DOMAIN = 1" in template
    settings.write_text(template + '\nADDONS = {"tmapi_crawler.addon.TmapiAddon": 0}\n')
    (project / "sourcing" / "spiders" / "supplier.py").write_text(SUPPLIER_SPIDER)
    env = {"TMAPI_TOKEN": sb.token, "TMAPI_STORE": "catalog.sqlite"}  # read from the environment, as the docs say
    done = python_m(installed, "scrapy", "crawl", "supplier", "-a", f"member_id={SHOP}", "-O", "products.jsonl",
                    "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "TMAPI_RETRY_TIMES=0", cwd=project, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if " ERROR: " in line and "[Spidermon] FAIL" not in line]
    assert errors == []  # Scrapy's "Unknown feed format: jsonlines-compact", before
    records = read_jsonl(project / "products.jsonl")
    failures = read_jsonl(project / "supplier-failures.jsonl")  # the subclass's own setting
    assert records and failures
    stats = sb.stats()
    assert stats["unknown_paths"] == {}  # no /robots.txt asked of the API
    assert stats["max_in_flight"] > 4  # not one call at a time, a second apart
    assert (project / "catalog.sqlite").stat().st_size > 0
    # A feed no exporter can write, with Scrapy's own crawl: stopped before any call, never "finished".
    calls = sb.stats()["calls"]
    done = python_m(installed, "scrapy", "crawl", "supplier", "-a", f"member_id={SHOP}", "-s",
                    'FEEDS={"out.data": {"format": "nope"}}', "-s", f"TMAPI_BASE_URL={sb.url}",
                    cwd=project, env=env)  # fmt: skip
    assert "the format 'nope', which no exporter has" in done.stderr, done.stderr[-2000:]
    assert "Spider closed (tmapi_feed_failed)" in done.stderr
    assert "Unknown feed format" not in done.stderr
    assert sb.stats()["calls"] == calls
    # The commands of the tmapi command, through COMMANDS_MODULE.
    settings.write_text(settings.read_text() + 'COMMANDS_MODULE = "tmapi_crawler.commands"\n')
    checked = python_m(installed, "scrapy", "catalog", "check", cwd=project, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "is sound" in checked.stderr
    # The spiders as they are, next to the project's own; media and a shop export.
    settings.write_text(settings.read_text().replace(
        'SPIDER_MODULES = ["sourcing.spiders"]', 'SPIDER_MODULES = ["sourcing.spiders", "tmapi_crawler.spiders"]'
    ))  # fmt: skip
    listed = python_m(installed, "scrapy", "list", cwd=project)
    assert listed.stdout.split() == ["category", "item", "shop", "supplier"]
    sb.reset()
    done = python_m(installed, "scrapy", "crawl", "shop", "-a", f"member_id={SHOP}", "-a", "media=main",
                    "-O", "shop.csv:shopify", "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "FILES_STORE=media",
                    cwd=project, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "shop.csv").read_text().startswith("Handle,")
    assert len(list((project / "media").rglob("*.jpg"))) >= 50
    # Media are the project's crawling: its ROBOTSTXT_OBEY applies to them (the
    # sandbox serves them from the API's host), never to the API's calls.
    assert sb.stats()["unknown_paths"] == {"/robots.txt": 1}
