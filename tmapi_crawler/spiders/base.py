"""What the three spiders share: arguments, following a listed product to its
detail and description, and turning every failure into a failure record."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from scrapy import Request, Spider, signals

from tmapi_crawler import api
from tmapi_crawler.api import ApiError, Endpoint, envelope_of
from tmapi_crawler.arguments import CommonArgs, check_seed, parse_arguments
from tmapi_crawler.auth import token_of
from tmapi_crawler.config import ConfigError, config_from_settings
from tmapi_crawler.middlewares import attempts_of
from tmapi_crawler.records import (
    BadAnswer,
    FailureItem,
    ProductItem,
    add_description,
    as_item_id,
    failure_record,
    listing_record,
    product_record,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

    from tmapi_crawler.config import TmapiConfig

logger = logging.getLogger(__name__)

# Finish what was started before opening more: descriptions first, then
# details, then listing pages.  It bounds what a crawl holds in memory.
PRIORITY_PAGE = 0
PRIORITY_DETAIL = 10
PRIORITY_DESC = 20


class Cluster(Protocol):
    """What a spider sees of distributed mode (the Redis scheduler)."""

    def track(self, request: Request, output: Iterable[Any]) -> Iterator[Any]: ...

    def follow_seeds(self, spider: TmapiSpider) -> AsyncIterator[Any]: ...


def tracked(callback: Callable[[Any, Any], Iterable[Any]]) -> Callable[[Any, Any], Iterable[Any]]:
    """A callback (or errback) whose output the Redis scheduler counts, so
    that the request is acknowledged only once all it led to is safe."""

    @functools.wraps(callback)
    def wrapper(self: TmapiSpider, result: Any) -> Iterable[Any]:
        output = callback(self, result)
        if self.cluster is None:
            return output
        return self.cluster.track(result.request, output)

    return wrapper


class TmapiSpider(Spider):
    """Base of the shop, category and item spiders.

    Each listing or input request carries ``meta["opts"]``: the options of the
    seed it came from (``follow``, ``language``, ...), so that seeds with
    options of their own (pushed to Redis as JSON) share one crawl.
    """

    args_model: ClassVar[type[CommonArgs]]
    args: CommonArgs
    config: TmapiConfig
    #: Set by the Redis scheduler in distributed mode.
    cluster: Cluster | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        # Arguments are checked here, before anything is sent; the crawl
        # command checks them even earlier to print one line and exit 2.
        # Whether a seed is needed depends on the settings (from_crawler).
        self.args = parse_arguments(self.args_model, kwargs, require_seed=False)
        super().__init__(*args)

    @classmethod
    def check_arguments(cls, kwargs: dict[str, Any], settings: BaseSettings) -> CommonArgs:
        """Validate *kwargs* as this spider's arguments (raises ConfigError);
        a worker of a distributed crawl may start without a seed."""
        return parse_arguments(cls.args_model, kwargs, require_seed=not settings.get("REDIS_URL"))

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.config = config_from_settings(crawler.settings, token=token_of(crawler))
        if not crawler.settings.get("REDIS_URL"):
            check_seed(spider.args)
        return spider

    # -- seeds ----------------------------------------------------------------

    async def start(self) -> AsyncIterator[Any]:
        for out in self.seed_requests(self.args):
            await self.backpressure()
            yield out
        if self.cluster is not None:
            # Distributed: seeds pushed to Redis, until the cluster is idle.
            async for out in self.cluster.follow_seeds(self):
                await self.backpressure()
                yield out

    async def backpressure(self) -> None:
        """Scrapy takes whatever ``start()`` yields as fast as it comes:
        while the downloader is full, wait until the scheduler is empty, so
        that an ids file of millions of lines is read as the crawl goes, not
        into memory at once."""
        engine = self.crawler.engine
        if engine is not None and engine.needs_backout():
            await self.crawler.signals.wait_for(signals.scheduler_empty)

    def seed_requests(self, args: Any) -> Iterator[Any]:  # pragma: no cover - each spider's own
        raise NotImplementedError

    def seed_args(self, seed: Any) -> CommonArgs:
        """A seed pushed as JSON, checked like command-line arguments."""
        if not isinstance(seed, dict):
            raise ConfigError(f"a seed is a JSON object such as {self.seed_example()}")
        return parse_arguments(self.args_model, seed)

    @classmethod
    def seed_example(cls) -> str:  # pragma: no cover - each spider's own
        raise NotImplementedError

    def options(self, args: CommonArgs) -> dict[str, Any]:
        """What a seed's requests carry in ``meta["opts"]``."""
        return {
            "follow": args.follow,
            "language": args.language or self.config.language,
            "scene": args.scene,
            "optimize_title": args.optimize_title,
            "max_pages": getattr(args, "max_pages", None),
        }

    # -- requests -------------------------------------------------------------

    def api_request(self, endpoint: Endpoint, params: dict[str, Any], **kwargs: Any) -> Request:
        kwargs.setdefault("errback", self.on_error)
        return api.build_request(self.config.base_url, endpoint, params, **kwargs)

    @staticmethod
    def detail_params(opts: dict[str, Any]) -> dict[str, Any]:
        return {"language": opts["language"], "scene": opts["scene"], "optimize_title": opts["optimize_title"]}

    def detail_request(
        self, item_id: int, *, source: dict[str, Any], listing: dict[str, Any] | None, opts: dict[str, Any]
    ) -> Request:
        return self.api_request(
            Endpoint.ITEM_DETAIL,
            {"item_id": item_id, **self.detail_params(opts)},
            callback=self.parse_detail,
            meta={"source": source, "listing": listing, "item_id": item_id, "opts": opts},
            priority=PRIORITY_DETAIL,
        )

    def follow_entry(
        self, entry: Any, source: dict[str, Any], request: Request | None, opts: dict[str, Any]
    ) -> Iterator[Any]:
        """A listing entry: a listing record, or a request for its detail."""
        try:
            if not isinstance(entry, dict):
                raise BadAnswer(f"a listing entry is not an object but {type(entry).__name__}")
            if opts["follow"] == "listing":
                yield listing_record(entry, source=source)
                return
            item_id = as_item_id(entry.get("item_id"))
        except BadAnswer as exc:
            yield self.failure(
                request,
                None,
                f"malformed answer: {exc}",
                listing=entry if isinstance(entry, dict) else None,
                source=source,
            )
            return
        yield self.detail_request(item_id, source=source, listing=entry, opts=opts)

    # -- callbacks ------------------------------------------------------------

    @tracked
    def parse_detail(self, response: Response) -> Iterator[Any]:
        meta = response.meta
        opts = meta["opts"]
        try:
            record = product_record(
                envelope_of(response).data, listing=meta["listing"], source=meta["source"], language=opts["language"]
            )
        except BadAnswer as exc:
            yield self.failure(response.request, None, f"malformed answer: {exc}")
            return
        if opts["follow"] != "detail+desc":
            yield record
            return
        yield self.api_request(
            Endpoint.ITEM_DESC,
            {"item_id": record["item_id"]},
            callback=self.parse_desc,
            meta={"product": record, "item_id": record["item_id"], "source": meta["source"]},
            priority=PRIORITY_DESC,
            # One description per detail answer, and details are deduplicated:
            # in one process the dupefilter would only hold its fingerprint
            # for nothing (half of its memory).  In distributed mode a
            # detail request can be delivered twice (its worker died), so
            # there the description is deduplicated too.
            dont_filter=self.cluster is None,
        )

    @tracked
    def parse_desc(self, response: Response) -> Iterator[Any]:
        record: ProductItem = response.meta["product"]
        try:
            add_description(record, envelope_of(response).data)
        except BadAnswer as exc:
            yield self.failure(response.request, None, f"malformed answer: {exc}")
        yield record

    @tracked
    def on_error(self, failure: Failure) -> Iterator[Any]:
        """Every call that failed for good ends here."""
        yield from self.error_records(failure)

    def error_records(self, failure: Failure) -> Iterator[Any]:
        """A failure record; a product whose description failed is still a
        product record."""
        request: Request = failure.request  # type: ignore[attr-defined]
        exc = failure.value
        if isinstance(exc, ApiError):
            code, msg = exc.code, exc.msg
            if exc.snippet:
                msg = f"{msg}; the body began: {exc.snippet}"
        else:
            code, msg = None, f"{type(exc).__name__}: {exc}"
        if request.meta["tmapi"]["endpoint"] == Endpoint.ITEM_DESC.value:
            yield request.meta["product"]
        yield self.failure(request, code, msg)

    def failure(
        self,
        request: Request | None,
        code: int | None,
        msg: str,
        *,
        listing: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        endpoint: str = "record",
        params: dict[str, Any] | None = None,
    ) -> FailureItem:
        meta = request.meta if request is not None else {}
        info = meta.get("tmapi") or {"endpoint": endpoint, "params": params or {}}
        product = meta.get("product")
        record = failure_record(
            endpoint=info["endpoint"],
            params=info["params"],
            item_id=meta.get("item_id"),
            code=code,
            msg=msg,
            attempts=attempts_of(request) if request is not None else 0,
            source=source or meta.get("source"),
            listing=listing or meta.get("listing") or (product.get("listing") if product else None),
        )
        logger.warning(
            "Failed: %s %s -> %s %s (after %d attempt(s))",
            record["endpoint"],
            record["params"],
            code if code is not None else "error",
            msg,
            record["attempts"],
        )
        return record
