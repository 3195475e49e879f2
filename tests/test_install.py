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

from tests.helpers import ROOT, read_jsonl

SHOP = "b2b-sandbox0000"


@pytest.fixture(scope="module")
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
