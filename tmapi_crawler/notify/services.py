"""Notifications through Apprise (``TMAPI_NOTIFY``, docs/operations.md): the
crawl's alert (a failed monitor, the changes that matched
``TMAPI_ALERT_CHANGES``), and with ``TMAPI_NOTIFY_REPORT`` the catalog report
of the crawl's period attached, to any of the services Apprise knows: email
(``mailto://``), Telegram, DingTalk, WeCom, Feishu/Lark, Teams, ntfy, Slack,
Discord, a JSON or form POST...

Apprise (well kept, one URL form for about a hundred services) parses the
URLs, speaks each service's protocol and keeps a message within each
service's limits (:data:`OVERFLOW`).  What is ours:

* :func:`load_services`: the URLs (space or comma separated) or an Apprise
  configuration file, refused in one line when Apprise knows none of a URL;
* :func:`masked`: a service as logs may show it: its scheme and its host as
  Apprise's privacy mode shows them (a Telegram URL's host is its bot's
  token: ``tgram://1...l/...``);
* :class:`Notifier`: one message to every service, each sent in a thread of
  its own (Apprise's plugins block), so that the reactor never waits; the
  crawl's end waits at most :data:`TIMEOUT` seconds for all of them, and a
  service that failed or did not answer costs one warning line, never the
  crawl.  Apprise's own log records are kept out of the crawl's log (they
  can name a URL's secrets at DEBUG): the warning line carries the reason
  Apprise gave, with the URL's secrets masked.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import defer

logger = logging.getLogger(__name__)

#: Seconds the crawl's end waits for every service together (each of
#: Apprise's plugins has its own connect and read timeouts, 4 s by default).
TIMEOUT = 30.0
#: What Apprise does with a message longer than a service takes: cut it to
#: the service's limit, so that a crawl is one message wherever it goes (the
#: digest puts the summary first, and lists TMAPI_ALERT_MAX_CHANGES changes).
OVERFLOW = "truncate"
#: The part of a value that separates URLs.
_SEPARATORS = re.compile(r"[\s,]+")


class NotifyError(ValueError):
    """A ``TMAPI_NOTIFY`` Apprise cannot use; the message is one line."""


@dataclass(slots=True)
class Service:
    """One of Apprise's loaded services, and how logs show it."""

    plugin: Any
    shown: str
    #: The parts of its URL that Apprise's privacy mode hides (tokens,
    #: passwords, keys): masked in anything logged of it.
    secrets: list[str] = field(default_factory=list)

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def targets(value: str) -> list[str]:
    """The URLs of ``TMAPI_NOTIFY`` (space or comma separated)."""
    return [part for part in _SEPARATORS.split(value.strip()) if part]


def masked(url: str, private: str | None = None) -> str:
    """*url* as logs may show it: its scheme and host only, the host as
    Apprise's privacy mode writes it (*private*) when it has one."""
    try:
        parts = urlsplit(private or url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{url.partition(':')[0]}://..."
    return f"{parts.scheme}://{host}{port}/..."


def _secrets(url: str, private: str) -> list[str]:
    """The parts of *url* that *private* (Apprise's privacy form) does not
    show: what must never be logged."""
    try:
        parts = urlsplit(url)
        pieces = [parts.username, parts.hostname]
        password = parts.password
    except ValueError:
        return [url]
    pieces += parts.path.split("/")
    pieces += [value for _, value in parse_qsl(parts.query)]
    shown = unquote(private)
    found = {password, unquote(password)} if password else set()
    for piece in pieces:
        if piece and len(piece) >= 3 and unquote(piece) not in shown:
            found |= {piece, unquote(piece)}
    return sorted(found)


def load_services(value: str) -> list[Service]:
    """The services of ``TMAPI_NOTIFY``: URLs, or the path of an Apprise
    configuration file (YAML or text, Apprise's own format); raises
    :class:`NotifyError` naming (masked) what Apprise cannot use."""
    import apprise  # only for crawls that notify (its import takes a third of a second)

    given = targets(value)
    if not given:
        raise NotifyError("is empty: give Apprise URLs (mailto://..., tgram://...) or a configuration file")
    found: list[Any] = []
    if len(given) == 1 and "://" not in given[0]:
        path = Path(given[0]).expanduser()
        if not path.is_file():
            raise NotifyError(
                "is no configuration file that exists, and not a URL: give Apprise URLs "
                "(mailto://..., tgram://..., see https://appriseit.com/) or the path of an Apprise configuration file"
            )
        config = apprise.AppriseConfig()
        config.add(str(path.resolve()))
        found = list(config.services())
        if not found:
            raise NotifyError(
                f"Apprise found no service URL in {path} "
                "(its format: https://appriseit.com/getting-started/configuration/)"
            )
    else:
        for url in given:
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
            if not plugin:
                raise NotifyError(
                    f"Apprise cannot use {url.partition(':')[0]}://... (an unknown scheme, or a URL its service "
                    "refuses): see the service's URL form at https://appriseit.com/services/"
                )
            found.append(plugin)
    services = []
    for plugin in found:
        private = str(plugin.url(privacy=True))
        raw = str(plugin.url(privacy=False))
        name = f"{plugin.service_name} ({masked(raw, private)})"
        services.append(Service(plugin, name, _secrets(raw, private)))
    return services


class _Captured(logging.Handler):
    """Apprise's log records of each sending thread, kept from the crawl's
    log: the last warning is the reason a service failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread is not None:
            self.last[record.thread] = record.getMessage()


_CAPTURED = _Captured()


def _quiet_apprise() -> None:
    """Apprise's records go to :data:`_CAPTURED` only (once a process)."""
    apprise_log = logging.getLogger("apprise")
    if _CAPTURED not in apprise_log.handlers:
        apprise_log.addHandler(_CAPTURED)
        apprise_log.propagate = False


class Notifier:
    """One message to every service of ``TMAPI_NOTIFY``."""

    def __init__(self, value: str, timeout: float | None = None):
        self.services = load_services(value)
        self.timeout = TIMEOUT if timeout is None else timeout
        _quiet_apprise()

    def describe(self) -> str:
        return ", ".join(service.shown for service in self.services)

    async def send(self, title: str, body: str, *, failure: bool = False, attachment: Path | None = None) -> int:
        """Send *title* and *body* (Markdown) to every service, *attachment*
        where the service takes attachments; returns how many services took
        it.  Never raises: a failed service is one warning line."""
        from twisted.internet import reactor

        results: dict[int, Any] = {}

        def keep(result: Any, number: int) -> None:
            results[number] = result

        sent = []
        for number, service in enumerate(self.services):
            answer = self._in_thread(service, title, body, failure, attachment)
            answer.addCallback(keep, number)
            sent.append(answer)
        everyone: Any = defer.DeferredList(sent, consumeErrors=True)
        everyone.addTimeout(self.timeout, reactor)
        with contextlib.suppress(defer.TimeoutError):  # told below, service by service
            await maybe_deferred_to_future(everyone)
        took = 0
        for number, service in enumerate(self.services):
            result = results.get(number)
            if result is True:
                took += 1
                continue
            problem = f"no answer within {self.timeout:g} s" if result is None else service.mask(str(result))
            logger.warning(
                "The notification could not be sent to %s (%s): the crawl's results are in its log and stats",
                service.shown,
                problem,
            )
        if took:
            logger.info("Notification sent to %d of %d services (TMAPI_NOTIFY)", took, len(self.services))
        return took

    def _in_thread(
        self, service: Service, title: str, body: str, failure: bool, attachment: Path | None
    ) -> defer.Deferred[Any]:
        """*service*'s send in a daemon thread (one that does not answer
        never holds the process's exit), its result on a Deferred."""
        from twisted.internet import reactor

        answer: defer.Deferred[Any] = defer.Deferred()

        def deliver(result: Any) -> None:
            if not answer.called:
                answer.callback(result)

        def run() -> None:
            import apprise

            try:
                ok = service.plugin.notify(
                    body=body,
                    title=title,
                    body_format=apprise.NotifyFormat.MARKDOWN,
                    notify_type=apprise.NotifyType.FAILURE if failure else apprise.NotifyType.INFO,
                    overflow=OVERFLOW,
                    attach=str(attachment) if attachment is not None and service.plugin.attachment_support else None,
                )
                reason = _CAPTURED.last.pop(threading.get_ident(), "")
                result: Any = True if ok else reason or "the service refused the message"
            except Exception as exc:  # a plugin's trouble is never the crawl's
                result = f"{type(exc).__name__}: {exc}"
            reactor.callFromThread(deliver, result)

        threading.Thread(target=run, name=f"notify {service.plugin.service_name}", daemon=True).start()
        return answer
