"""What the three spiders share: arguments, following a listed product to its
detail and description, and turning every failure into a failure record."""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy import Request, Spider, signals
from scrapy.utils.httpobj import urlparse_cached

from tmapi_crawler import api
from tmapi_crawler.api import (
    DETAIL_ENDPOINTS,
    FETCHED_AT_META,
    STORED_DESC_META,
    ApiError,
    Endpoint,
    attempts_of,
    envelope_of,
    listing_key,
)
from tmapi_crawler.arguments import (
    PARSING,
    CommonArgs,
    ListingArgs,
    check_media,
    check_seed,
    parse_arguments,
    tool_arguments,
)
from tmapi_crawler.calls.budget import RESERVED_META, STARTED_META
from tmapi_crawler.calls.gate import CallGate, gate_of
from tmapi_crawler.compat import queued_requests
from tmapi_crawler.config import ConfigError, config_from_settings, is_distributed
from tmapi_crawler.durable.leases import LeaseTracker, tracker_of
from tmapi_crawler.records import (
    BadAnswer,
    FailureItem,
    ProductItem,
    add_description,
    add_media,
    as_item_id,
    failure_record,
    listing_record,
    product_record,
)
from tmapi_crawler.store.extension import store_of
from tmapi_crawler.store.listings import PageNote

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

    from tmapi_crawler.config import TmapiConfig
    from tmapi_crawler.spiders.context import Description, Detail, Options
    from tmapi_crawler.store.extension import CatalogStore

logger = logging.getLogger(__name__)

# Finish what was started before opening more: descriptions first, then
# details, then listing pages.  It bounds what a crawl holds in memory.
PRIORITY_PAGE = 0
PRIORITY_DETAIL = 10
PRIORITY_DESC = 20
#: A listing page asked for while the frontier is short goes before every
#: product call: its products need two more round trips, so that the calls
#: of the account never wait for a page (#37).
PRIORITY_PAGE_FIRST = 30
#: The frontier is short below this many queued requests; a page asked for
#: past it waits behind them (PRIORITY_PAGE), so that a big category's
#: listing is not all held in memory ahead of its products.
FRONTIER_MOST = 1000


async def wait_for_room(crawler: Crawler) -> None:
    """While the downloader is full (``ExecutionEngine.needs_backout``),
    wait until the scheduler is empty: the ``start()`` recipe of Scrapy's
    documentation.  Scrapy takes whatever ``start()`` yields as fast as it
    comes, so without this an ids file of millions of lines would be read
    into memory at once."""
    engine = crawler.engine
    if engine is not None and engine.needs_backout():
        await crawler.signals.wait_for(signals.scheduler_empty)


def request_of(response: Response) -> Request:
    """The request of a response given to a callback (Scrapy always sets it;
    its type says it may be ``None``)."""
    request = response.request
    assert request is not None
    return request


def tracked(callback: Callable[..., Iterable[Any]]) -> Callable[..., Iterable[Any]]:
    """A callback (or errback) whose output is counted by the lease tracker,
    so that a leased request is acknowledged only once all it led to is safe
    (:mod:`tmapi_crawler.durable.leases`).

    A decorator rather than a spider middleware: what an errback yields for
    a failed download does not pass through spider middlewares."""

    @functools.wraps(callback)
    def wrapper(self: TmapiSpider, result: Any, **kwargs: Any) -> Iterable[Any]:
        return self.leases.track(result.request, callback(self, result, **kwargs))

    setattr(wrapper, TRACKED, True)
    return wrapper


#: The mark :func:`tracked` leaves on a callback.
TRACKED = "tmapi_tracked"


def check_tracked(spider: Spider, callback: Any, role: str) -> None:
    """Refuse an API call whose *callback* (or errback) is not
    :func:`tracked`: its lease would never be acknowledged, and a resumed
    crawl would pay for the call again.  Raises ``TypeError`` naming it,
    when the request is made (the seeds: at the crawl's start)."""
    if callback is None or not getattr(callback, TRACKED, False):
        name = getattr(callback, "__qualname__", None) or f"{type(spider).__name__}.parse"
        raise TypeError(
            f"the {role} {name} of an API call is not decorated with @tracked "
            "(tmapi_crawler.spiders.base.tracked): its request would never be acknowledged, and a resumed crawl "
            "would pay for it again; decorate it"
        )


def check_overrides(cls: type) -> None:
    """Refuse a subclass that overrides a callback of its base without
    :func:`tracked` (raises ConfigError, one line; the crawl command says it
    before the crawl): the base's requests would call it, untracked."""
    for name in dir(cls):
        value = getattr(cls, name, None)
        tracked_above = any(getattr(base.__dict__.get(name), TRACKED, False) for base in cls.__mro__[1:])
        if tracked_above and not getattr(value, TRACKED, False):
            raise ConfigError(
                f"{cls.__name__}.{name} overrides a callback of {cls.__mro__[1].__name__} without @tracked "
                "(tmapi_crawler.spiders.base.tracked): its requests would never be acknowledged, and a resumed "
                "crawl would pay for them again; decorate it"
            )


class TmapiSpider(Spider):
    """Base of the shop, category and item spiders.

    Callback data travels in ``cb_kwargs``; every listing or input request
    carries ``opts``, the options of the seed it came from (``follow``,
    ``language``, ...), so that seeds with options of their own (pushed to
    Redis as JSON) share one crawl.  ``meta["tmapi"]`` describes the call
    itself (:func:`tmapi_crawler.api.build_request`).
    """

    args_model: ClassVar[type[CommonArgs]]
    args: CommonArgs
    config: TmapiConfig

    def __init__(self, *args: Any, **kwargs: Any):
        # Arguments are checked here, before anything is sent; the crawl
        # command checks them even earlier to print one line and exit 2.
        # Whether a seed is needed depends on the settings (from_crawler).
        self.args = parse_arguments(self.args_model, kwargs, require_seed=False)
        super().__init__(*args, **tool_arguments(kwargs))

    @classmethod
    def check_arguments(cls, kwargs: dict[str, Any], settings: BaseSettings) -> CommonArgs:
        """Validate *kwargs* as this spider's arguments (raises ConfigError);
        a worker of a distributed crawl may start without a seed."""
        check_overrides(cls)
        args = parse_arguments(cls.args_model, kwargs, require_seed=not is_distributed(settings))
        check_media(args, settings)
        return args

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        check_overrides(cls)
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.config = config_from_settings(crawler.settings)
        if not is_distributed(crawler.settings) and PARSING not in kwargs:
            check_seed(spider.args)
        check_media(spider.args, crawler.settings)
        return spider

    @functools.cached_property
    def leases(self) -> LeaseTracker:
        # Looked up on first use: extensions are built after the spider.
        return tracker_of(self.crawler)

    @functools.cached_property
    def gate(self) -> CallGate:
        return gate_of(self.crawler)

    @functools.cached_property
    def catalog(self) -> CatalogStore | None:
        """The catalog store, when ``TMAPI_STORE`` is set."""
        return store_of(self.crawler)

    def note_page(self, request: Request, entries: list[Any] | None, pages_total: int | None = None) -> None:
        """Tell the catalog store that a listing page was read (the entries
        it listed, and the number of pages when the page says it) or failed
        (*entries* ``None``): a listing read completely tells which stored
        products it no longer names.  Nothing to do without a store."""
        read = request.cb_kwargs.get("opts", {}).get("read")
        if self.catalog is None or read is None:
            return
        info = request.meta["tmapi"]
        key = listing_key(request)
        item_ids = []
        for entry in entries or ():
            # An entry that is not a product is a failure record of its own.
            with contextlib.suppress(BadAnswer):
                item_ids.append(as_item_id(entry.get("item_id") if isinstance(entry, dict) else None))
        self.catalog.note_page(
            PageNote(key, read, info["params"]["page"], item_ids, pages_total, failed=entries is None)
        )

    # -- seeds ----------------------------------------------------------------

    async def start(self) -> AsyncIterator[Any]:
        for out in self.seed_requests(self.args):
            await wait_for_room(self.crawler)
            if self.gate.budget.draining:
                return  # the budget is reached: no new product
            yield out

    def seed_requests(self, args: Any) -> Iterator[Any]:  # pragma: no cover - each spider's own
        raise NotImplementedError

    def options(self, args: CommonArgs) -> Options:
        """The ``opts`` that a seed's requests carry; ``read`` names this
        crawl's read of a listing (:meth:`note_page`): a copy per seed."""
        return {
            "read": uuid.uuid4().hex,
            "follow": args.follow,
            "language": args.language or self.config.language,
            "scene": args.scene,
            "optimize_title": args.optimize_title,
            "max_pages": args.max_pages if isinstance(args, ListingArgs) else None,
            "media": list(args.media),
        }

    # -- requests -------------------------------------------------------------

    def page_priority(self) -> int:
        """The priority of a listing page asked for now: first while the
        frontier is short (:data:`FRONTIER_MOST`), else after the products."""
        return PRIORITY_PAGE_FIRST if queued_requests(self.crawler) < FRONTIER_MOST else PRIORITY_PAGE

    def api_request(self, endpoint: Endpoint, params: dict[str, Any], **kwargs: Any) -> Request:
        kwargs.setdefault("errback", self.on_error)
        check_tracked(self, kwargs.get("callback"), "callback")
        check_tracked(self, kwargs["errback"], "errback")
        return api.build_request(self.config.base_url, endpoint, params, **kwargs)

    @staticmethod
    def detail_params(opts: Options) -> dict[str, Any]:
        return {"language": opts["language"], "scene": opts["scene"], "optimize_title": opts["optimize_title"]}

    def detail_request(
        self, item_id: int, *, source: dict[str, Any], listing: dict[str, Any] | None, opts: Options
    ) -> Request:
        context: Detail = {"source": source, "listing": listing, "item_id": item_id, "opts": opts}
        return self.api_request(
            Endpoint.ITEM_DETAIL,
            {"item_id": item_id, **self.detail_params(opts)},
            callback=self.parse_detail,
            cb_kwargs=dict(context),
            priority=PRIORITY_DETAIL,
        )

    def follow_entry(self, entry: Any, source: dict[str, Any], request: Request, opts: Options) -> Iterator[Any]:
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

    def parse(self, response: Response, **_: Any) -> Iterator[Any]:
        """``scrapy parse --spider <name> <TMAPI URL>``: the record the URL's
        answer makes, by its endpoint: a product record (its description is
        another call), a description, or a listing record per entry."""
        endpoint = Endpoint.from_path(urlparse_cached(response).path)
        envelope = envelope_of(response)
        if envelope.code != 200:
            self.logger.error("TMAPI answered %s: %s", envelope.code, envelope.msg)
            return
        source = {"spider": self.name, "input": response.url}
        if endpoint in DETAIL_ENDPOINTS:
            language = self.args.language or self.config.language
            yield product_record(envelope.data, listing=None, source=source, language=language, fetched_at=None)
        elif endpoint is Endpoint.ITEM_DESC:
            yield dict(envelope.data) if isinstance(envelope.data, dict) else {"data": envelope.data}
        elif endpoint in (Endpoint.SHOP_ITEMS, Endpoint.CATEGORY_ITEMS):
            items = envelope.data.get("items") if isinstance(envelope.data, dict) else None
            for position, entry in enumerate(items or []):
                if isinstance(entry, dict):
                    yield listing_record(entry, source={**source, "position": position})
        else:
            self.logger.error("%s is not a TMAPI call this crawler knows", response.url)

    @tracked
    def parse_detail(
        self,
        response: Response,
        *,
        source: dict[str, Any],
        listing: dict[str, Any] | None,
        item_id: int | None,
        opts: Options,
    ) -> Iterator[Any]:
        try:
            record = product_record(
                envelope_of(response).data,
                listing=listing,
                source=source,
                language=opts["language"],
                fetched_at=response.meta.get(FETCHED_AT_META),
            )
        except BadAnswer as exc:
            self.gate.budget.unreserve(response.request)
            yield self.failure(response.request, None, f"malformed answer: {exc}")
            return
        media = opts.get("media") or []
        if opts["follow"] != "detail+desc" or self.took_stored_desc(response, record):
            yield from self.product_outputs(record, media)
            return
        context: Description = {"product": record, "item_id": record["item_id"], "source": source}
        if media:
            context["media"] = media
        # The budget's marks go on to the description: its product started.
        budget = {key: response.meta.pop(key) for key in (STARTED_META, RESERVED_META) if key in response.meta}
        yield self.api_request(
            Endpoint.ITEM_DESC,
            {"item_id": record["item_id"]},
            callback=self.parse_desc,
            cb_kwargs=dict(context),
            priority=PRIORITY_DESC,
            meta=budget,
            # One description per detail answer, and details are deduplicated:
            # the dupefilter would only hold its fingerprint for nothing (half
            # of its memory).  Where a request can be delivered twice (a
            # leased queue whose worker died), the description is
            # deduplicated too.
            dont_filter=not self.leases.enabled,
        )

    def took_stored_desc(self, response: Response, record: ProductItem) -> bool:
        """Whether the store gave the product's description with its detail
        (:data:`~tmapi_crawler.api.STORED_DESC_META`), now in *record*: no
        call for it.  One that does not fit is left (the store counts it as
        not taken), and asked for: its answer says why, in a failure record
        of ``item_desc``."""
        given = response.meta.get(STORED_DESC_META)
        if given is None:
            return False
        try:
            add_description(record, given[0], fetched_at=given[1])
        except BadAnswer:
            return False
        del response.meta[STORED_DESC_META]
        self.gate.budget.unreserve(response.request)
        return True

    @tracked
    def parse_desc(
        self, response: Response, *, product: ProductItem, media: list[str] | None = None, **_: Any
    ) -> Iterator[Any]:
        self.gate.budget.unreserve(response.request)  # answered by the store: no call was made
        try:
            add_description(product, envelope_of(response).data, fetched_at=response.meta.get(FETCHED_AT_META))
        except BadAnswer as exc:
            yield self.failure(response.request, None, f"malformed answer: {exc}")
        yield from self.product_outputs(product, media)

    def product_outputs(self, product: ProductItem, media: list[str] | None) -> Iterator[Any]:
        """What a finished product yields: its record as it leaves the spider: with ``-a media=...``,
        its ``media`` entries, which the media pipeline downloads.  A worker
        without ``FILES_STORE`` that is given a request with media says so
        in a failure record (the entries keep ``path`` null)."""
        if not media:
            yield product
            return
        add_media(product, media)
        if product["media"] and not self.crawler.settings.get("FILES_STORE"):
            msg = f"media={','.join(media)} asked for, but this worker has no FILES_STORE: set it as the others have it"
            logger.warning("Failed: media of item %s: %s", product["item_id"], msg)
            yield failure_record(
                endpoint="media",
                params={"kinds": media},
                item_id=product["item_id"],
                code=None,
                msg=msg,
                attempts=0,
                source=product["source"],
                listing=product.get("listing"),
            )
        yield product

    @tracked
    def on_error(self, failure: Failure) -> Iterator[Any]:
        """Every call that failed for good ends here."""
        yield from self.error_records(failure)

    def error_records(self, failure: Failure) -> Iterator[Any]:
        """A failure record; a product whose description failed is still a
        product record."""
        request: Request = failure.request  # type: ignore[attr-defined]
        self.gate.budget.unreserve(request)
        exc = failure.value
        if isinstance(exc, ApiError):
            code, msg = exc.code, exc.msg
            if exc.snippet:
                msg = f"{msg}; the body began: {exc.snippet}"
        else:
            code, msg = None, f"{type(exc).__name__}: {exc}"
        endpoint = request.meta["tmapi"]["endpoint"]
        if endpoint == Endpoint.ITEM_DESC.value:
            yield from self.product_outputs(request.cb_kwargs["product"], request.cb_kwargs.get("media"))
        elif endpoint in (Endpoint.SHOP_ITEMS.value, Endpoint.CATEGORY_ITEMS.value):
            self.note_page(request, None)
        yield self.failure(request, code, msg)

    def failure(
        self,
        request: Request | None,
        code: int | None,
        msg: str,
        *,
        listing: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> FailureItem:
        """The failure record of *request* (what its ``cb_kwargs`` know of
        the product, unless given)."""
        info: dict[str, Any] = request.meta["tmapi"] if request is not None else {"endpoint": "record", "params": {}}
        context = request.cb_kwargs if request is not None else {}
        product = context.get("product")
        record = failure_record(
            endpoint=info["endpoint"],
            params=info["params"],
            item_id=context.get("item_id"),
            code=code,
            msg=msg,
            attempts=attempts_of(request) if request is not None else 0,
            source=source or context.get("source"),
            listing=listing or context.get("listing") or (product.get("listing") if product else None),
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
