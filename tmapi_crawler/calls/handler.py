"""The download handler: the token is added here, at the very last moment,
and held nowhere else.

Scrapy logs, caches, queues, fingerprints and signals requests at many points
between the spider and the socket, and every downloader middleware (even the
last one) hands its request to code that may log it.  So the request that
Scrapy knows never carries the token: :class:`TokenDownloadHandler` wraps the
real HTTP download handler (``TMAPI_INNER_DOWNLOAD_HANDLER``), sends a copy
of the request with ``apiToken`` added, and gives Scrapy back a response
whose URL and request are the token-free originals.  An exception whose
message carries the URL (a timeout, say) is re-raised with the token masked,
and every log line is masked while the engine runs.

It is also the last moment before a call is really sent, so this is where a
call is admitted by the gate (:mod:`tmapi_crawler.calls.gate`) and counted
(``tmapi/calls``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from scrapy import signals
from scrapy.core.downloader.handlers.base import BaseDownloadHandler
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import build_from_crawler, load_object
from w3lib.url import add_or_replace_parameter

from tmapi_crawler.api import TOKEN_PARAM, Endpoint, Outcome, endpoint_of, outcome_of
from tmapi_crawler.calls.gate import gate_of
from tmapi_crawler.compat import import_tls_modules
from tmapi_crawler.config import config_from_settings
from tmapi_crawler.redaction import redact_exception, redact_logs

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response


class TokenDownloadHandler(BaseDownloadHandler):
    lazy = False

    def __init__(self, crawler: Crawler):
        super().__init__(crawler)
        config = config_from_settings(crawler.settings)
        self.token = config.token.get_secret_value() if config.token is not None else None
        self.api_host = config.api_host
        self.api_scheme = urlparse(config.base_url).scheme
        self.stats = crawler.stats
        self.gate = gate_of(crawler)
        import_tls_modules()  # before Scrapy's HTTP handler imports them, at a cost
        self.inner: Any = build_from_crawler(load_object(config.inner_download_handler), crawler)
        self.stop_redacting = lambda: None
        crawler.signals.connect(self.engine_started, signal=signals.engine_started)
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    def engine_started(self) -> None:
        # From the first call to the last, every log line is masked.
        self.stop_redacting = redact_logs(self.token)

    def engine_stopped(self) -> None:
        self.stop_redacting()

    async def download_request(self, request: Request) -> Response:
        endpoint = endpoint_of(request) or self._api_call(request)
        if endpoint is None or urlparse_cached(request).netloc != self.api_host or not self.token:
            # Not an API call (or no token to add): nothing of ours to add.
            return await self.inner.download_request(request)
        # Waits for a place among the account's calls in flight; raises
        # CrawlStopping when the crawl stops (budget, 439, bad token).
        ticket = await self.gate.acquire(request)
        sent = request.replace(url=add_or_replace_parameter(request.url, TOKEN_PARAM, self.token))
        self.stats.inc_value("tmapi/calls")
        self.stats.inc_value(f"tmapi/calls/{endpoint.value}")
        outcome: Outcome | None = None
        try:
            response: Response = await self.inner.download_request(sent)
            response = response.replace(url=request.url, request=request)
            outcome = outcome_of(response)
        except Exception as exc:
            clean = redact_exception(exc, self.token)
            if clean is None:
                raise
            raise clean from None
        finally:
            self.gate.release(ticket, outcome)
        return response

    def _api_call(self, request: Request) -> Endpoint | None:
        """The endpoint of a request made by hand (``scrapy fetch``, ``scrapy
        shell``, ``scrapy parse``) to the API's own URL, with its scheme
        (https, unless TMAPI_BASE_URL itself is not): it gets the token too."""
        url = urlparse_cached(request)
        if url.scheme != self.api_scheme:
            return None
        return Endpoint.from_path(url.path)

    async def close(self) -> None:
        await self.inner.close()
