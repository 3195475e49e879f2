"""The real ``scrapy`` command: one-line errors, exit codes, feeds."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, SCRAPY, SandboxProcess, read_jsonl, run_scrapy, scrapy_env


def crawl_cmd(sandbox: SandboxProcess, *args: str, token: str | None = "sandbox") -> list[str]:
    cmd = ["crawl", *args, "-s", f"TMAPI_BASE_URL={sandbox.url}"]
    if token is not None:
        cmd += ["-s", f"TMAPI_TOKEN={sandbox.token if token == 'sandbox' else token}"]
    return cmd


@pytest.mark.slow  # the real command
def test_scrapy_list_shows_the_spiders(tmp_path):
    result = run_scrapy("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["category", "item", "shop"]


@pytest.mark.slow  # the real command
def test_each_spiders_arguments_are_in_its_help_and_in_list_verbose(tmp_path):
    done = run_scrapy("crawl", "shop", "--help", cwd=tmp_path)
    assert done.returncode == 0
    help_lines = done.stdout.splitlines()
    at = help_lines.index(next(line for line in help_lines if line.startswith("Arguments of the shop spider")))
    assert "-a member_id=<seller member id>" in help_lines[at]
    arguments = {line.split()[0]: line for line in help_lines[at + 1 :] if line.startswith("  ")}
    assert next(iter(arguments)) == "member_id"  # the seed first
    assert "seller member id(s), comma-separated (default: -)" in arguments["member_id"]
    assert "products a listing page, 1 to 100 (default: 20)" in arguments["page_size"]
    assert "listing|detail|detail+desc (default: detail+desc)" in arguments["follow"]
    assert "sales" in arguments["sort"]
    assert "Arguments of the item spider" not in done.stdout  # the spider named, alone
    everything = run_scrapy("crawl", "--help", cwd=tmp_path).stdout
    assert all(f"Arguments of the {name} spider" in everything for name in ("shop", "category", "item"))
    listed = run_scrapy("list", "--verbose", cwd=tmp_path)
    assert listed.returncode == 0
    blocks = listed.stdout.strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == ["category", "item", "shop"]
    assert "item_ids" in blocks[1] and "cat_id" in blocks[0] and "free_shipping" in blocks[0]
    assert run_scrapy("list", cwd=tmp_path).stdout.split() == ["category", "item", "shop"]


def test_crawl_exports_json_lines_and_exits_0(sandbox, tmp_path):
    result = run_scrapy(
        *crawl_cmd(sandbox, "shop", "-a", "member_id=b2b-sandbox0000", "-a", "max_pages=1", "-O", "out.jsonl"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = read_jsonl(tmp_path / "out.jsonl")
    assert len(records) == 20
    assert "TMAPI summary" in result.stderr
    assert not (tmp_path / "failures.jsonl").exists()


def test_token_from_the_environment(sandbox, tmp_path):
    result = run_scrapy(
        *crawl_cmd(sandbox, "item", "-a", "item_ids=700000000001", "-O", "o.jsonl", token=None),
        cwd=tmp_path,
        env={"TMAPI_TOKEN": sandbox.token},
    )
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shop", "-a", "member_id=x", "-a", "sort=random"], "invalid argument: sort='random'"),
        (["category", "-a", "cat_id=shoes"], "invalid argument: cat_id"),
        (["shop", "-a", "member_id=x", "-a", "language=xx"], "invalid argument: language='xx'"),
        (
            ["shop", "-a", "member_id=x", "-a", "page_size=-5"],
            "page_size='-5': Input should be greater than or equal to 1",
        ),
        (["shop", "-a", "member_id=x", "-a", "max_pages=0"], "max_pages='0'"),
        (["shop"], "no seed: give -a member_id="),
        (["item", "-a", "urls=https://example.com/x"], "is not a 1688 product URL"),
        (["item", "-a", "item_ids=1", "-a", "follow=listing"], "follow=listing needs a listing"),
        (["shop", "-a", "member_id=x", "-a", "colour=red"], "colour='red': Extra inputs are not permitted"),
        (["nosuchspider"], "no spider 'nosuchspider'"),
        (["shop", "-a", "member_id=店铺-b2b-😀"], "is not a 1688 member id: ASCII letters, digits, '-' and '_'"),
        (["shop", "-a", "member_id=b2b-1;rm"], "member_id='b2b-1;rm': is not a 1688 member id"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(sandbox, tmp_path, args, message):
    result = run_scrapy(*crawl_cmd(sandbox, *args), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
    assert sandbox.stats()["calls"] == 0


def test_ids_file_with_bad_lines_names_them(sandbox, tmp_path):
    (tmp_path / "ids.txt").write_text("700000000001\nnot-an-id\n\n# fine\nhttps://example.com/offer/1.html\n")
    result = run_scrapy(*crawl_cmd(sandbox, "item", "-a", "file=ids.txt"), cwd=tmp_path)
    assert result.returncode == 2
    assert "line 2: 'not-an-id'" in result.stderr
    assert "line 5:" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_scrapy(*crawl_cmd(sandbox, "item", "-a", "file=nope.txt"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "file='nope.txt': no such file" in missing.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ([], "no API token: set the TMAPI_TOKEN environment variable"),
        (["-s", "TMAPI_TOKEN=t", "-s", "TMAPI_BASE_URL=http://api.tmapi.top"], "would send the token in clear text"),
        (["-s", "TMAPI_TOKEN=t", "-s", "TMAPI_RETRY_TIMES=many"], "TMAPI_RETRY_TIMES='many'"),
        (["-s", "TMAPI_TOKEN=t", "-s", "TMAPI_LANGUAGE=fr"], "TMAPI_LANGUAGE='fr': must be one of"),
    ],
)
@pytest.mark.slow  # the real command
def test_bad_settings_print_one_line_and_exit_2(tmp_path, settings, message):
    result = run_scrapy("crawl", "shop", "-a", "member_id=x", *settings, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr


def test_wrong_token_stops_at_once_with_exit_3(sandbox, tmp_path):
    result = run_scrapy(
        *crawl_cmd(sandbox, "shop", "-a", "member_id=b2b-sandbox0000", token="wrong-token"), cwd=tmp_path
    )
    assert result.returncode == 3
    assert "Spider closed (tmapi_auth_failed)" in result.stderr
    assert "TMAPI refused the token" in result.stderr
    assert "wrong-token" not in result.stderr
    assert sandbox.stats()["calls"] == 1
    assert "Traceback" not in result.stderr


def test_token_never_appears_in_the_debug_log(sandbox, tmp_path):
    result = run_scrapy(
        *crawl_cmd(sandbox, "shop", "-a", "member_id=b2b-sandbox0000", "-a", "max_pages=1", "-O", "out.jsonl"),
        "-s",
        "LOG_LEVEL=DEBUG",
        cwd=tmp_path,
    )
    assert result.returncode == 0
    assert "Crawled (200) <GET http://127.0.0.1" in result.stderr
    assert sandbox.token not in result.stderr
    assert sandbox.token not in (tmp_path / "out.jsonl").read_text()
    stats = json.dumps(sandbox.stats())
    assert "calls" in stats


@pytest.mark.slow  # the real command
def test_scrapy_list_loads_no_redis_module(tmp_path):
    """Redis's client (and scrapy-redis) load only in distributed mode."""
    script = (
        "import sys\n"
        "from scrapy.cmdline import execute\n"
        "sys.argv = ['scrapy', 'list']\n"
        "try:\n"
        "    execute()\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'scrapy_redis'))\n"
        "print('loaded:', loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=scrapy_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["category", "item", "shop", "loaded: []"]


def test_a_huge_bad_value_is_not_echoed_whole(sandbox, tmp_path):
    huge = "x" * 10_000
    for args in (["shop", "-a", f"member_id={huge};"], ["item", "-a", f"urls=https://{huge}"], [huge]):
        result = run_scrapy(*crawl_cmd(sandbox, *args), cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert len(result.stderr) < 400, result.stderr[:500]
        assert "characters)" in result.stderr
    assert sandbox.stats()["calls"] == 0


def test_ctrl_c_twice_exits_130(make_sandbox, tmp_path):
    """The second Ctrl-C forces Scrapy to stop before the spider closes;
    the exit code is still the documented 130."""
    sb = make_sandbox("--latency-ms", "1500")
    proc = subprocess.Popen(
        [SCRAPY, *crawl_cmd(sb, "shop", "-a", "member_id=b2b-sandbox0000", "-O", "out.jsonl")],
        cwd=tmp_path, env=scrapy_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sb.stats()["calls"] < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "forcing unclean shutdown" in stderr
    assert proc.returncode == 130, stderr[-2000:]


def test_a_crawl_with_default_settings_logs_no_warning(sandbox, tmp_path):
    result = run_scrapy(*crawl_cmd(sandbox, "shop", "-a", "member_id=b2b-sandbox0000", "-O", "out.jsonl"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if " WARNING: " in line] == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("TMAPI_RETRY_TIME=5", "unknown setting 'TMAPI_RETRY_TIME': did you mean TMAPI_RETRY_TIMES?"),
        ("TMAPI_ALERT_CHANGE=sold_out", "unknown setting 'TMAPI_ALERT_CHANGE': did you mean TMAPI_ALERT_CHANGES?"),
        ("TMAPI_NONSENSE=1", "unknown setting 'TMAPI_NONSENSE' (docs/settings.md lists them)"),
    ],
)
def test_a_misspelled_setting_is_refused_with_the_closest_name(sandbox, tmp_path, setting, message):
    result = run_scrapy(*crawl_cmd(sandbox, "shop", "-a", "member_id=x"), "-s", setting, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"Error: {message}\n"
    assert sandbox.stats()["calls"] == 0


def test_failures_and_changes_files_hold_only_this_crawls_records(sandbox, tmp_path):
    """Yesterday's failures and changes do not stay when today has none."""
    for name in ("failures.jsonl", "changes.jsonl"):
        (tmp_path / name).write_text('{"old": "yesterday"}\n')
    store = ("-s", f"TMAPI_STORE={tmp_path / 'catalog.sqlite'}")
    cmd = crawl_cmd(sandbox, "shop", "-a", "member_id=b2b-sandbox0000", "-a", "max_pages=1", "-O", "out.jsonl")
    first = run_scrapy(*cmd, *store, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (tmp_path / "failures.jsonl").exists()
    assert len(read_jsonl(tmp_path / "changes.jsonl")) == 20  # today's: 20 new products
    # The same compact JSON as `scrapy catalog changes` writes.
    listed = run_scrapy("catalog", "changes", "--since", "2000-01-01", "--store", str(tmp_path / "catalog.sqlite"),
                        cwd=tmp_path)  # fmt: skip
    assert set(listed.stdout.splitlines()) == set((tmp_path / "changes.jsonl").read_text().splitlines())
    again = run_scrapy(*cmd, *store, cwd=tmp_path)
    assert again.returncode == 0
    assert not (tmp_path / "changes.jsonl").exists()  # nothing changed today


def test_a_crawl_that_read_no_listing_fails_and_an_empty_one_warns(make_sandbox, tmp_path):
    sb = make_sandbox("--broken", "shop:b2b-sandbox0000:1:html")
    failed = run_scrapy(*crawl_cmd(sb, "shop", "-a", "member_id=b2b-sandbox0000", "-O", "out.jsonl"), cwd=tmp_path)
    assert failed.returncode == 9, failed.stderr[-2000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: no listing page could be read (the first page of every listing failed: see failures.jsonl); "
        "nothing was crawled"
    ]
    empty = run_scrapy(*crawl_cmd(sb, "shop", "-a", "member_id=b2b-emptyshop", "-O", "out.jsonl"), cwd=tmp_path)
    assert empty.returncode == 0, empty.stderr[-2000:]
    assert "WARNING: Shop b2b-emptyshop lists no product: nothing to crawl there" in empty.stderr


def test_settings_that_may_hold_a_password_come_from_the_environment(sandbox, redis_server, tmp_path):
    """REDIS_URL, TMAPI_STORE, FILES_STORE and TMAPI_ALERT_WEBHOOK from the
    environment (not in ps, not in scrapyd's job list); -s wins."""
    env = {"TMAPI_TOKEN": sandbox.token, "REDIS_URL": redis_server.url, "TMAPI_STORE": str(tmp_path / "env.sqlite"),
           "FILES_STORE": str(tmp_path / "files"),
           "TMAPI_ALERT_WEBHOOK": "http://127.0.0.1:9/hooks/s3cr3t-path"}  # fmt: skip
    cmd = ["crawl", "shop", "-a", "member_id=b2b-sandbox0000", "-a", "max_pages=1", "-O", "out.jsonl",
           "-s", f"TMAPI_BASE_URL={sandbox.url}", "-s", "TMAPI_IDLE_TIMEOUT=0.5"]  # fmt: skip
    # TMAPI_STORE with REDIS_URL needs PostgreSQL: the SQLite store from the
    # environment is refused, naming the setting, which proves both were read.
    refused = run_scrapy(*cmd, cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert "TMAPI_STORE=" in refused.stderr and "distributed crawl" in refused.stderr
    # -s wins over the environment.
    done = run_scrapy(*cmd, "-s", "TMAPI_STORE=", "-a", "media=main", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LeasedScheduler" in done.stderr  # distributed: REDIS_URL from the environment
    assert list((tmp_path / "files").rglob("*.jpg"))  # FILES_STORE from the environment
    assert "s3cr3t-path" not in done.stderr  # the webhook's secret path is masked in the log
    cluster = run_scrapy("cluster", "status", "shop", cwd=tmp_path, env=env)
    assert cluster.returncode == 0, cluster.stderr


def test_fetch_shell_and_parse_on_an_api_url(sandbox, tmp_path):
    """Scrapy's debugging commands on a TMAPI URL: the token is sent (it is
    the API's own URL) and never shown; parse picks the callback from the
    endpoint and prints the record."""
    detail = f"{sandbox.url}/1688/item_detail?item_id=700000000012"
    env = {"TMAPI_TOKEN": sandbox.token}
    settings = ("-s", f"TMAPI_BASE_URL={sandbox.url}")
    fetched = run_scrapy("fetch", "--nolog", detail, *settings, cwd=tmp_path, env=env)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert json.loads(fetched.stdout)["code"] == 200  # the token went with it
    shell = run_scrapy("shell", detail, "--nolog", "-c", "response.json()['data']['item_id']", *settings,
                       cwd=tmp_path, env=env)  # fmt: skip
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert shell.stdout.strip() in ("700000000012", "'700000000012'")
    parsed = run_scrapy("parse", "--spider", "item", detail, *settings, cwd=tmp_path, env=env)
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    assert "'item_id': 700000000012" in parsed.stdout and "Scraped Items" in parsed.stdout
    listing = f"{sandbox.url}/1688/shop/items?member_id=b2b-sandbox0000&page=1"
    pages = run_scrapy("parse", "--spider", "shop", listing, *settings, cwd=tmp_path, env=env)
    assert pages.returncode == 0, pages.stderr[-2000:]
    assert pages.stdout.count("'item_id'") == 20
    for done in (fetched, shell, parsed, pages):
        assert sandbox.token not in done.stdout + done.stderr


def test_a_feed_that_cannot_be_written_from_the_start_is_refused_before_any_call(sandbox, tmp_path):
    """An unknown format or an exporter that cannot be loaded would make
    Scrapy disable every feed and the crawl "finish" with no record."""
    base = ["crawl", "shop", "-a", "member_id=b2b-sandbox0000", "-s", f"TMAPI_BASE_URL={sandbox.url}"]
    cases = {
        'FEEDS={"out.data": {"format": "yaml"}}': "has the format 'yaml', which no exporter has",
        'FEEDS={"out.txt": {"format": "mine"}}': "format 'mine' (nowhere.Exporter) cannot be loaded",
    }
    for feeds, words in cases.items():
        done = run_scrapy(*base, "-s", feeds, "-s", 'FEED_EXPORTERS={"mine": "nowhere.Exporter"}', cwd=tmp_path,
                          env={"TMAPI_TOKEN": sandbox.token})  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().count("\n") == 0 and words in done.stderr, done.stderr
    assert sandbox.stats()["calls"] == 0


def test_every_finish_reason_has_the_exit_code_the_operations_page_gives():
    """One list of finish reasons (FinishReason), each with its exit code,
    and the table of docs/operations.md says the same."""
    from tmapi_crawler.reasons import FinishReason, exit_code_for

    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    documented: dict[str, str] = {}
    for reason, code in re.findall(r"^\| `([a-z_]+)`[^|]* \| (\d+) \|", page, re.M):
        documented.setdefault(reason, code)  # "finished, but no listing page could be read": 9, the command's
    assert {reason.value: str(reason.exit_code) for reason in FinishReason} == documented
    assert exit_code_for("closespider_timeout") == 1 and exit_code_for(None) == 1
