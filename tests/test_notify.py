"""Notifications through Apprise (TMAPI_NOTIFY): real receivers on loopback
(an HTTP server for json://, form:// and ntfy://, an SMTP server for
mailto://), the report attached and opened, URLs masked in the log, a
receiver that is down or slow."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import crawl, run_scrapy
from tests.test_alerts import report
from tmapi_crawler.notify import services
from tmapi_crawler.notify.digest import markdown
from tmapi_crawler.notify.services import Notifier, NotifyError, load_services, masked

SHOP = "b2b-sandbox0000"  # 60 products
SECRET = "s3cr3t-pass"


class HttpSink:
    """A local HTTP service: every request kept (method, path, headers,
    body); it answers *status* after *delay* seconds."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.requests: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                time.sleep(delay)
                answer = b'{"id": "1"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """A local SMTP server (aiosmtpd): every message kept, parsed."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                return "250 OK"

        self.port = free_port()
        self.logins: list[tuple[bytes, bytes]] = []

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            self.logins.append((auth_data.login, auth_data.password))
            return AuthResult(success=True)

        self.controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticate, auth_require_tls=False
        )
        self.controller.start()

    def url(self) -> str:
        return f"mailto://buyer:{SECRET}@127.0.0.1:{self.port}?from=crawler@example.com&to=team@example.com"

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def sinks():
    made: list[Any] = []

    def make(kind: type = HttpSink, **kwargs: Any) -> Any:
        made.append(kind(**kwargs))
        return made[-1]

    yield make
    for sink in made:
        sink.stop()


def test_urls_are_masked_to_scheme_and_host_and_bad_ones_refused(tmp_path):
    services = load_services(
        f"tgram://123456789:AAHsecretbot/12345, json://user:{SECRET}@127.0.0.1:9/hooks/x ntfy://127.0.0.1:9/topic"
    )
    assert [s.shown for s in services] == [
        "Telegram (tgram://1...t/...)",  # the bot's token is the host: Apprise's privacy form
        "JSON (json://127.0.0.1:9/...)",
        "ntfy (ntfy://127.0.0.1:9/...)",
    ]
    assert "123456789:AAHsecretbot" in services[0].secrets and SECRET in services[1].secrets
    assert services[1].mask(f"refused for user:{SECRET}") == "refused for user:***"
    assert masked("json://u:p@h.example:8080/path/token") == "json://h.example:8080/..."
    with pytest.raises(NotifyError, match=r"Apprise cannot use bogus://\.\.\. "):
        load_services("bogus://x/also-secret")
    with pytest.raises(NotifyError, match="no configuration file"):
        load_services(str(tmp_path / "missing.yml"))
    config = tmp_path / "apprise.yml"
    config.write_text("urls:\n  - json://127.0.0.1:9/a\n  - ntfy://127.0.0.1:9/b\n")
    assert [s.plugin.service_name for s in load_services(str(config))] == ["JSON", "ntfy"]


def test_a_notify_url_apprise_cannot_use_is_one_line_before_any_call(sandbox, tmp_path):
    done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-s", f"TMAPI_BASE_URL={sandbox.url}",
                      cwd=tmp_path,
                      env={"TMAPI_TOKEN": sandbox.token, "TMAPI_NOTIFY": f"tgramx://{SECRET}/1"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "TMAPI_NOTIFY: Apprise cannot use tgramx://" in done.stderr
    assert SECRET not in done.stderr
    assert sandbox.stats()["calls"] == 0
    done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-s", f"TMAPI_BASE_URL={sandbox.url}",
                      "-s", "TMAPI_NOTIFY=json://127.0.0.1:9/x", "-s", "TMAPI_NOTIFY_REPORT=true",
                      cwd=tmp_path, env={"TMAPI_TOKEN": sandbox.token})  # fmt: skip
    assert done.returncode == 2 and "set TMAPI_STORE too" in done.stderr


def test_a_failed_monitor_reaches_json_form_and_ntfy_once_each_with_urls_masked(make_sandbox, tmp_path, sinks):
    sb = make_sandbox("--fault-rate", "0.3", "--seed", "7", "--latency-ms", "2")
    hook, form, ntfy = sinks(), sinks(), sinks()
    urls = (
        f"json://user:{SECRET}@127.0.0.1:{hook.port}/hooks/x, form://127.0.0.1:{form.port}/form "
        f"ntfy://127.0.0.1:{ntfy.port}/tmapi-alerts"
    )
    done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-O", "products.jsonl",
                      "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "TMAPI_RETRY_TIMES=0", "-s", f"TMAPI_NOTIFY={urls}",
                      cwd=tmp_path, env={"TMAPI_TOKEN": sb.token})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert SECRET not in done.stderr  # not in Scrapy's settings, not in ours
    assert f"JSON (json://127.0.0.1:{hook.port}/...)" in done.stderr
    assert "Notification sent to 3 of 3 services" in done.stderr
    [sent] = hook.requests
    payload = json.loads(sent["body"])
    assert payload["type"] == "failure"
    assert payload["title"].startswith("TMAPI crawl of shop ended (finished)")
    assert "monitor(s) failed" in payload["title"]
    assert "monitor failed: failures/failure share" in payload["message"]
    assert "calls billed" in payload["message"].splitlines()[0]
    [posted] = form.requests
    fields = parse_qs(posted["body"].decode())
    assert fields["title"][0] == payload["title"] and fields["message"][0] == payload["message"]
    [note] = ntfy.requests
    assert note["path"].startswith("/tmapi-alerts") or json.loads(note["body"])["topic"] == "tmapi-alerts"
    assert b"monitor failed" in note["body"]


def test_two_services_down_or_slow_cost_one_line_each_never_the_crawl(make_sandbox, tmp_path, sinks):
    sb = make_sandbox("--fault-rate", "0.3", "--seed", "7", "--latency-ms", "2")
    slow = sinks(delay=8.0)
    down = free_port()  # nothing listens there
    urls = f"json://127.0.0.1:{down}/x json://127.0.0.1:{slow.port}/slow?rto=2"
    started = time.monotonic()
    done = run_scrapy("crawl", "shop", "-a", f"member_id={SHOP}", "-O", "products.jsonl",
                      "-s", f"TMAPI_BASE_URL={sb.url}", "-s", "TMAPI_RETRY_TIMES=0", "-s", f"TMAPI_NOTIFY={urls}",
                      cwd=tmp_path, env={"TMAPI_TOKEN": sb.token})  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [line for line in done.stderr.splitlines() if "The notification could not be sent" in line]
    assert len(failed) == 2, failed
    assert any(f"127.0.0.1:{down}/..." in line for line in failed)
    assert any(f"127.0.0.1:{slow.port}/..." in line for line in failed)
    assert "Traceback" not in done.stderr
    assert took < 60  # bounded by Apprise's timeouts, not the slow receiver's 8 s per try


@deferred_f_from_coro_f
async def test_the_crawl_end_waits_for_no_service_longer_than_its_bound(monkeypatch, sinks, caplog):
    slow = sinks(delay=6.0)
    monkeypatch.setattr(services, "TIMEOUT", 1.0)
    notifier = Notifier(f"json://127.0.0.1:{slow.port}/slow?rto=30")
    started = time.monotonic()
    took = await notifier.send("title", "body")
    assert took == 0
    assert time.monotonic() - started < 4
    assert "no answer within 1 s" in caplog.text


@deferred_f_from_coro_f
async def test_a_500_change_digest_keeps_to_each_services_limit(sinks):
    """Apprise cuts what is longer than a service takes (OVERFLOW): one
    message, the summary first."""
    big = report(500)  # 500 listed, as with TMAPI_ALERT_MAX_CHANGES=500
    body = markdown(big)
    assert len(body) > 20_000
    hook, ntfy = sinks(), sinks()
    notifier = Notifier(f"json://127.0.0.1:{hook.port}/x ntfy://127.0.0.1:{ntfy.port}/t")
    assert await notifier.send("title", body) == 2
    [sent] = hook.requests
    [note] = ntfy.requests
    json_limit, ntfy_limit = (service.plugin.body_maxlen for service in notifier.services)
    assert len(json.loads(sent["body"])["message"]) <= json_limit * 1.01 < len(body)
    # ntfy's message cut to its limit (and sent as ntfy takes a long one: a Markdown file).
    assert len(note["body"].decode()) <= ntfy_limit * 1.01 < len(body)
    assert json.loads(sent["body"])["message"].startswith(body[:200])


@deferred_f_from_coro_f
async def test_the_daily_email_carries_the_report_of_its_crawl(make_sandbox, tmp_path, sinks):
    sb = make_sandbox("--shops", "1", "--shop-size", "40", "--latency-ms", "2")
    smtp = sinks(SmtpSink)
    store = str(tmp_path / "catalog.sqlite")
    settings = {"TMAPI_STORE": store, "TMAPI_NOTIFY": smtp.url(), "TMAPI_NOTIFY_REPORT": True}
    result = await crawl("shop", sb, tmp_path, settings, member_id=SHOP)
    assert result.reason == "finished" and len(result.records) == 40
    [message] = smtp.messages  # every monitor passed, no rule: the report alone, every crawl
    assert message["Subject"].startswith("TMAPI crawl of shop ended (finished)")
    assert message["To"] == "team@example.com"
    assert smtp.logins[0] == (b"buyer", SECRET.encode())
    [attached] = list(message.iter_attachments())
    assert attached.get_filename().startswith("catalog-report-") and attached.get_filename().endswith(".html")
    page = attached.get_content()
    page = page.decode("utf-8") if isinstance(page, bytes) else page
    assert "<title>Catalog report:" in page
    assert "40" in page and "new" in page  # this crawl's 40 new products
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "40 products" in text
    # The next day: the report of that day's crawl only.
    sb.revise(0.5)
    await crawl("shop", sb, tmp_path, settings, member_id=SHOP)
    assert len(smtp.messages) == 2
    second = next(smtp.messages[1].iter_attachments()).get_content()
    second = second.decode("utf-8") if isinstance(second, bytes) else second
    assert second != page
