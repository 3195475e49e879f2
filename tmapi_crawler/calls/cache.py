"""An HTTP cache policy for the API: only successful answers are kept.

Scrapy's ``DummyPolicy`` caches every answer, so a 417 (or a 200 whose body
says 417) would be replayed to every retry and to every later run; with this
policy (the project's default ``HTTPCACHE_POLICY``) a cached answer is always
one that TMAPI billed.  The cache never holds the token: requests are stored
as Scrapy knows them, before the token is added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.extensions.httpcache import DummyPolicy

from tmapi_crawler.api import Outcome, outcome_of

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.http import Response


class ApiCachePolicy(DummyPolicy):
    def should_cache_response(self, response: Response, request: Request) -> bool:
        if "tmapi" not in request.meta:
            return super().should_cache_response(response, request)
        return response.status == 200 and outcome_of(response) is Outcome.OK
