"""Media: a product's images and videos, downloaded into ``FILES_STORE`` by
Scrapy's own files (and images) pipeline and tied to its record
(``-a media=main,sku,desc,video``; docs/media.md tells what, where, when and
how often).

:class:`MediaFilesPipeline` and :class:`MediaImagesPipeline` fill each
``media`` entry's ``path`` and ``checksum``; :class:`MediaDownloads` is what
they and :class:`MediaMiddleware` share (files in flight, records waiting,
the claims of a distributed crawl: :mod:`tmapi_crawler.cluster.claims`).  A
media request is no API call: no ``tmapi`` meta, no token, no gate.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from ftplib import error_perm
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import urlsplit

from scrapy import Request
from scrapy.exceptions import DownloadCancelledError, NotConfigured
from scrapy.http import Response
from scrapy.pipelines.files import FilesPipeline, FSFilesStore, FTPFilesStore
from scrapy.pipelines.images import ImagesPipeline
from scrapy.utils.asyncio import sleep
from scrapy.utils.defer import ensure_awaitable
from scrapy.utils.misc import load_object
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tmapi_crawler.calls.answers import BACKOFF_META, retry_exceptions, retry_later
from tmapi_crawler.calls.room import Room, add_room
from tmapi_crawler.compat import files_store, media_cache, replace_files_store, set_slot
from tmapi_crawler.config import config_from_settings, local_directory
from tmapi_crawler.durable.feeds import to_feeds
from tmapi_crawler.media.hosts import (
    MEDIA_TARGETS,
    NAMED_TARGETS,
    REFUSED,
    MediaHosts,
    install_public_only,
    media_target,
)
from tmapi_crawler.records import ProductItem, failure_record

if TYPE_CHECKING:
    from os import PathLike
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.pipelines.files import StatInfo
    from scrapy.pipelines.media import FileInfo, FileInfoOrError
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: meta key of a media request: the kind of file (``main``, ``sku``, ...).
MEDIA_META = "tmapi_media"
#: meta key: why a media download failed for good (set by MediaMiddleware).
ERROR_META = "tmapi_media_error"
#: The flag of the response that stands for a download that failed for good.
ERROR_FLAG = "tmapi_media_error"
_HOLDS_META = "tmapi_media_holds"
_PATH_META = "tmapi_media_path"
_TARGET_META = "tmapi_media_target"
#: The download slot of a media host: never the API's, even on its host.
SLOT_PREFIX = "tmapi-media:"
#: Answers worth asking again, and redirects to follow.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 524})
#: Redirects a media download follows at most (Scrapy's RedirectMiddleware
#: follows them, ``redirect_ttl``; each hop's host is checked here).
MAX_REDIRECTS = 5
#: The answers Scrapy's RedirectMiddleware follows (with a Location).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: MediaMiddleware's place: after RedirectMiddleware (600) for requests, so
#: before it for answers: each hop's answer is seen here first.
MEDIA_MIDDLEWARE_PRIORITY = 650
#: Files whose outcome this crawl remembers (Scrapy's cache has no bound).
#: A file forgotten is found in the store (``FILES_EXPIRES``), not fetched.
NEWEST_FILES = 20_000
#: Threads that read and write a local FILES_STORE.
DISK_THREADS = 4
IMAGE_KINDS = frozenset({"main", "sku", "desc"})
FAILED = "failed"

_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_VIDEO_SIGNATURES = (b"\x1aE\xdf\xa3", b"FLV")


def media_store(settings: BaseSettings) -> str | None:
    return settings.get("FILES_STORE") or None


def looks_like(kind: str, body: bytes) -> bool:
    """Whether *body* is an image (or, for ``video``, a video) and not, say,
    the HTML page a CDN sends for a file it refuses."""
    if kind == "video":
        return body[4:8] == b"ftyp" or body.startswith(_VIDEO_SIGNATURES) or body[8:12] == b"AVI "
    return body.startswith(_IMAGE_SIGNATURES) or (body[:4] == b"RIFF" and body[8:12] == b"WEBP")


class _NewestFiles(OrderedDict[bytes, Any]):
    """Scrapy's per-crawl ``downloaded`` cache, holding the newest files only."""

    def __init__(self, most: int):
        super().__init__()
        self.most = most

    def __setitem__(self, key: bytes, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > self.most:
            self.popitem(last=False)


class MediaDownloads:
    """What the media pipelines and middleware share: how many files are in
    flight, how many records wait for theirs, and the claims of a
    distributed crawl.  An extension, on when ``FILES_STORE`` is set."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.config = config_from_settings(crawler.settings)
        self.stats = crawler.stats
        self.in_flight = asyncio.Semaphore(self.config.media_concurrency)
        self.pending = 0
        #: API calls wait while TMAPI_MEDIA_MAX_PENDING records wait for their files
        #: (every waiting call then goes on: some are listing pages, which make no record).
        self.room = Room(lambda: self.pending >= self.config.media_max_pending, crawler.stats, "tmapi/media/api_waits")
        add_room(crawler, self.room)
        self.claims: Claims | None = None
        if self.config.media_claims_class:
            self.claims = load_object(self.config.media_claims_class)(crawler, timeout=self._claim_timeout())

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if media_store(crawler.settings) is None:
            raise NotConfigured("no FILES_STORE")
        return cls(crawler)

    def _claim_timeout(self) -> float:
        # Longer than a download with all its retries can take.
        config = self.config
        return config.media_timeout * (config.media_retry_times + 1) + 30

    # -- records waiting for their files -----------------------------------------------

    def record_waits(self) -> None:
        self.pending += 1
        self.stats.max_value("tmapi/media/pending_max", self.pending)

    def record_done(self) -> None:
        self.pending -= 1
        self.room.check()

    # -- requests -------------------------------------------------------------------------

    def request(self, url: str, kind: str) -> Request:
        """The request of a file: its own slot per host, its own timeout and
        size limit; no ``tmapi`` meta (so: no token, no gate, no count)."""
        slot = SLOT_PREFIX + (urlsplit(url).hostname or "")
        set_slot(self.crawler, slot, self.config.media_concurrency_per_host)
        accept = "*/*" if kind == "video" else "image/avif,image/webp,image/*,*/*;q=0.8"
        return Request(
            url,
            headers={"Accept": accept},
            meta={
                MEDIA_META: kind,
                "download_slot": slot,
                "download_timeout": self.config.media_timeout,
                "download_maxsize": self.config.media_maxsize,
                "download_warnsize": 0,
                "dont_cache": True,
                "redirect_ttl": MAX_REDIRECTS,
            },
        )


def downloads_of(crawler: Crawler) -> MediaDownloads:
    found = crawler.get_extension(MediaDownloads)
    if found is None:
        raise NotConfigured("no FILES_STORE")
    return found


class Claims(Protocol):
    """Who downloads a file among the workers (distributed mode:
    :class:`tmapi_crawler.cluster.claims.MediaClaims`, by class path,
    ``TMAPI_MEDIA_CLAIMS_CLASS``, as the gate's)."""

    async def claim(self, key: str) -> bool: ...

    async def release(self, key: str) -> None: ...


class _ThreadedFSStore(FSFilesStore):
    """Scrapy's local store, whose reads and writes go to threads: a file's
    ``open`` takes a millisecond or more on a busy disk, which the reactor
    (and the API calls) would wait for."""

    def __init__(self, basedir: str, threads: ThreadPoolExecutor):
        super().__init__(basedir)
        self.threads = threads

    def persist_file(  # type: ignore[override] # a Deferred, which Scrapy awaits
        self,
        path: str | PathLike[str],
        buf: BytesIO,
        info: Any,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Deferred[None]:
        write = functools.partial(FSFilesStore.persist_file, self, path, buf, info, meta, headers)
        return Deferred.fromFuture(asyncio.get_running_loop().run_in_executor(self.threads, write))

    def stat_file(self, path: str | PathLike[str], info: Any) -> Deferred[StatInfo]:  # type: ignore[override]
        # Scrapy's stat and checksum (it reads the whole file).
        read = functools.partial(FSFilesStore.stat_file, self, path, info)
        return Deferred.fromFuture(asyncio.get_running_loop().run_in_executor(self.threads, read))


class _FTPStore(FTPFilesStore):
    """Scrapy's FTP store, whose uploads make their directories as they go
    (``scrapy.utils.ftp.ftp_makedirs_cwd``): an upload that finds a
    directory made meanwhile by another one fails with 550 "exists".  Such
    an upload is tried again (as often as a path has directories)."""

    TRIES = 4

    def persist_file(
        self,
        path: str,
        buf: BytesIO,
        info: Any,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Deferred[Any]:
        data = buf.getvalue()  # Scrapy closes the buffer it uploads

        def upload(tries: int) -> Deferred[Any]:
            sent = FTPFilesStore.persist_file(self, path, BytesIO(data), info, meta, headers)

            def again(failure: Failure) -> Any:
                if tries > 1 and failure.check(error_perm) and "exist" in str(failure.value).lower():
                    return upload(tries - 1)
                return failure

            return sent.addErrback(again)

        return upload(self.TRIES)


class MediaFilesPipeline(FilesPipeline):
    """Scrapy's ``FilesPipeline`` for the product's files (see the module):
    every kind, or the videos alone when :class:`MediaImagesPipeline` takes
    the images."""

    def __init__(self, store_uri: str, *, crawler: Crawler):
        local = local_directory(store_uri)
        if local is not None:
            # Made first: Scrapy's store looks for it, then makes it, and of
            # two workers starting together on one store, one fails.
            local.mkdir(parents=True, exist_ok=True)
        super().__init__(store_uri, crawler=crawler)
        thumbs = bool(crawler.settings.getdict("IMAGES_THUMBS"))
        self.kinds = frozenset({"video"}) if thumbs else frozenset({*IMAGE_KINDS, "video"})
        self.downloads = downloads_of(crawler)
        self._disk: ThreadPoolExecutor | None = None
        store = files_store(self)
        if isinstance(store, FSFilesStore):
            # The directories Scrapy writes in, made now: its check for them
            # is not safe in threads.
            base = Path(store.basedir)
            for name in ("full", *(f"thumbs/{t}" for t in crawler.settings.getdict("IMAGES_THUMBS"))):
                (base / name).mkdir(parents=True, exist_ok=True)
            self._disk = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="tmapi-media-disk")
            replace_files_store(self, _ThreadedFSStore(store.basedir, self._disk))
        elif isinstance(store, FTPFilesStore):
            replace_files_store(self, _FTPStore(store_uri))

    async def close_spider(self) -> None:
        if self._disk is not None:
            self._disk.shutdown()

    def _entries(self, item: Any) -> list[dict[str, Any]]:
        if not isinstance(item, ProductItem) or not isinstance(item.get("media"), list):
            return []
        return [e for e in item["media"] if e.get("kind") in self.kinds]

    # -- Scrapy's hooks ---------------------------------------------------------------

    async def process_item(self, item: Any) -> Any:  # type: ignore[override] # no spider argument
        if not self._entries(item):
            return item
        info = media_cache(self)
        if not isinstance(info.downloaded, _NewestFiles):
            info.downloaded = _NewestFiles(NEWEST_FILES)
        self.downloads.record_waits()
        try:
            return await super().process_item(item)
        finally:
            self.downloads.record_done()

    def get_media_requests(self, item: Any, info: Any) -> list[Request]:
        return [self.downloads.request(entry["url"], entry["kind"]) for entry in self._entries(item)]

    async def media_to_download(  # type: ignore[override] # Scrapy awaits what it returns
        self, request: Request, info: Any, *, item: Any = None
    ) -> FileInfo | None:
        """The file as the store has it (not too old for ``FILES_EXPIRES``),
        or ``None`` to download it: then it waits for a place among the
        media downloads in flight (and, distributed, for its claim)."""
        if urlsplit(request.url).scheme not in ("http", "https"):
            return self._failed(request, None, "not an http(s) URL")
        found = await self._stored(request, info, item)
        if found is not None:
            self.downloads.stats.inc_value("tmapi/media/uptodate")
            return found
        claims = self.downloads.claims
        if claims is not None:
            key = self.file_path(request, info=info, item=item)
            while True:
                mine = await claims.claim(key)
                # Another worker may have stored it since this one looked.
                found = await self._stored(request, info, item)
                if found is not None:
                    if mine:
                        await claims.release(key)
                    self.downloads.stats.inc_value("tmapi/media/other_worker")
                    return found
                if mine:
                    break
                # The other worker failed: claim it here.
        await self.downloads.in_flight.acquire()
        request.meta[_HOLDS_META] = True
        return None

    async def _stored(self, request: Request, info: Any, item: Any) -> FileInfo | None:
        """The file as the store has it, if it is younger than ``FILES_EXPIRES``
        days (Scrapy's check)."""
        found: FileInfo | None = await ensure_awaitable(super().media_to_download(request, info, item=item))
        return found

    def file_path(
        self, request: Request, response: Response | None = None, info: Any = None, *, item: Any = None
    ) -> str:
        """Scrapy's path (from the URL alone), worked out once per file: the
        store check, the claim and the write all ask for it."""
        path: str | None = request.meta.get(_PATH_META)
        if path is None:
            path = request.meta[_PATH_META] = super().file_path(request, response, info, item=item)
        return path

    async def _let_go(self, request: Request, info: Any, item: Any) -> None:
        if request.meta.pop(_HOLDS_META, False):
            self.downloads.in_flight.release()
            if self.downloads.claims is not None:
                await self.downloads.claims.release(self.file_path(request, info=info, item=item))

    async def media_downloaded(self, response: Response, request: Request, info: Any, *, item: Any = None) -> FileInfo:
        """The stored file, or a failed entry (never an exception: a
        failed file is an outcome, with a failure record, not a traceback)."""
        try:
            return await self._store(response, request, info, item)
        finally:
            await self._let_go(request, info, item)

    async def _store(self, response: Response, request: Request, info: Any, item: Any) -> FileInfo:
        kind = request.meta[MEDIA_META]
        stats = self.downloads.stats
        # The request last sent (a retry's, a redirect's) knows the attempts.
        sent = response.request if response.request is not None else request
        attempts = int(sent.meta.get("retry_times", 0)) + 1
        if ERROR_FLAG in response.flags:
            return self._failed(request, None, sent.meta.get(ERROR_META) or "download failed", attempts)
        if response.status != 200:
            return self._failed(request, response.status, f"HTTP {response.status}", attempts)
        if not response.body:
            return self._failed(request, response.status, "an empty file", attempts)
        if not looks_like(kind, response.body):
            shown = (response.headers.get(b"Content-Type") or b"").decode("latin-1") or "no Content-Type"
            what = "a video" if kind == "video" else "an image"
            return self._failed(request, 200, f"not {what} ({shown}, {len(response.body)} bytes)", attempts)
        try:
            path = self.file_path(request, response=response, info=info, item=item)
            checksum = str(await ensure_awaitable(self.file_downloaded(response, request, info, item=item)))
        except Exception as exc:
            # Pillow refusing the image, the store refusing the file.
            return self._failed(request, 200, f"not stored: {type(exc).__name__}: {exc}", attempts)
        stats.inc_value("tmapi/media/downloaded")
        stats.inc_value(f"tmapi/media/downloaded/{kind}")
        stats.inc_value("tmapi/media/bytes", len(response.body))
        self.inc_stats("downloaded")
        return {"url": request.url, "path": path, "checksum": checksum, "status": "downloaded"}

    def _failed(self, request: Request, code: int | None, msg: str, attempts: int = 1) -> FileInfo:
        self.downloads.stats.inc_value("tmapi/media/failed")
        info: dict[str, Any] = {"url": request.url, "path": None, "checksum": None, "status": FAILED}
        info.update(code=code, msg=msg, attempts=attempts)
        return info  # type: ignore[return-value]

    def media_failed(self, failure: Any, request: Request, info: Any) -> NoReturn:
        # Only what MediaMiddleware did not turn into a failed entry (a bug,
        # or a request dropped by another component) ends here.
        if request.meta.pop(_HOLDS_META, False):
            self.downloads.in_flight.release()
        super().media_failed(failure, request, info)

    def item_completed(self, results: list[FileInfoOrError], item: Any, info: Any) -> Any:
        """Each entry gets its file's ``path`` and ``checksum``; a failed
        file keeps ``null`` and is a failure record."""
        for entry, (ok, result) in zip(self._entries(item), results, strict=True):
            if isinstance(result, Failure):
                self._failure_record(item, entry, None, f"{type(result.value).__name__}: {result.value}", 1)
                continue
            found: dict[str, Any] = dict(result)
            if ok and found["status"] != FAILED:
                entry["path"], entry["checksum"] = found["path"], found["checksum"]
                continue
            self._failure_record(item, entry, found.get("code"), str(found.get("msg")), int(found.get("attempts", 1)))
        return item

    def _failure_record(self, item: Any, entry: dict[str, Any], code: int | None, msg: str, attempts: int) -> None:
        record = failure_record(
            endpoint="media",
            params={"url": entry["url"], "kind": entry["kind"]},
            item_id=item["item_id"],
            code=code,
            msg=msg,
            attempts=attempts,
            source=item.get("source"),
            listing=item.get("listing"),
        )
        logger.warning("Failed: media %s of item %s (%s) -> %s", entry["kind"], item["item_id"], entry["url"], msg)
        to_feeds(self.crawler, record)  # to TMAPI_FAILURES_FILE


class MediaImagesPipeline(MediaFilesPipeline, ImagesPipeline):
    """Scrapy's ``ImagesPipeline`` (Pillow) for the images, when the user asks
    for thumbnails (``IMAGES_THUMBS``): each image is checked, stored as JPEG
    under ``full/`` and its thumbnails under ``thumbs/<name>/``."""

    def __init__(self, store_uri: str, *, crawler: Crawler):
        if not crawler.settings.getdict("IMAGES_THUMBS"):
            raise NotConfigured("no IMAGES_THUMBS")
        super().__init__(store_uri, crawler=crawler)
        self.kinds = IMAGE_KINDS


class MediaMiddleware:
    """A downloader middleware for media requests.

    * Each request, and each hop of its redirects (Scrapy's
      ``RedirectMiddleware`` follows them, ``MEDIA_ALLOW_REDIRECTS``), goes
      only to ``TMAPI_MEDIA_HOSTS`` and never inside the user's network; at
      :data:`MEDIA_MIDDLEWARE_PRIORITY` it sees each answer before
      RedirectMiddleware, and gives up after :data:`MAX_REDIRECTS`.
    * A media request is retried (``TMAPI_MEDIA_RETRY_TIMES``, with backoff)
      on a connection error, a timeout or an answer such as 503.
    * A media download that failed for good becomes a response flagged
      :data:`ERROR_FLAG`, so that the pipeline records the failure.
    """

    def __init__(self, crawler: Crawler):
        self.crawler = crawler
        self.downloads = downloads_of(crawler)
        self.config = self.downloads.config
        self.retry_exceptions = retry_exceptions(crawler.settings)
        self.rng = random.Random()
        # The API's own host and port too: the sandbox serves its media there.
        self.hosts = MediaHosts.parse(self.config.media_hosts).naming(self.config.base_url)
        NAMED_TARGETS.update(self.hosts.named())
        from twisted.internet import reactor  # the installed one

        install_public_only(reactor)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_request(self, request: Request) -> Response | None:
        if MEDIA_META not in request.meta:
            return None
        delay = request.meta.pop(BACKOFF_META, None)
        if delay:
            await sleep(delay)
        refusal = self.hosts.refusal(request.url)  # every hop of a redirect is checked
        if refusal is not None:
            return self._refuse(request, refusal)
        target = media_target(request.url)
        if target is not None:
            MEDIA_TARGETS[target] = MEDIA_TARGETS.get(target, 0) + 1
            request.meta[_TARGET_META] = target
        return None

    def _refuse(self, request: Request, why: str) -> Response:
        """A media URL outside TMAPI_MEDIA_HOSTS or inside the network: a
        failure in the record, never a download."""
        self.downloads.stats.inc_value("tmapi/media/refused")
        logger.warning("Refused the media URL %s: %s", request.url[:200], why)
        return self._give_up(request, f"refused: {why}")

    @staticmethod
    def _done(request: Request) -> tuple[str, int] | None:
        """The download of *request* is over: its target leaves MEDIA_TARGETS."""
        target = request.meta.pop(_TARGET_META, None)
        if target is not None:
            left = MEDIA_TARGETS.get(target, 0) - 1
            if left > 0:
                MEDIA_TARGETS[target] = left
            else:
                MEDIA_TARGETS.pop(target, None)
        return target

    def process_response(self, request: Request, response: Response) -> Request | Response:
        if MEDIA_META not in request.meta:
            return response
        self._done(request)
        if response.status in REDIRECT_STATUSES and b"Location" in response.headers:
            if request.meta.get("redirect_ttl", MAX_REDIRECTS) <= 0:
                return self._give_up(request, f"more than {MAX_REDIRECTS} redirects")
            return response  # RedirectMiddleware follows it; the next hop comes back here
        if response.status in RETRY_STATUSES:
            retry = self._retry(request, f"media_{response.status}")
            if retry is not None:
                return retry
        return response

    def process_exception(self, request: Request, exception: Exception) -> Request | Response | None:
        if MEDIA_META not in request.meta:
            return None
        target = self._done(request)
        inside = REFUSED.pop(target, None) if target is not None else None
        if target is not None and inside:
            addresses = ", ".join(sorted(set(inside)))
            return self._refuse(request, f"{target[0]} resolves only to addresses inside the network ({addresses})")
        if isinstance(exception, self.retry_exceptions):
            retry = self._retry(request, exception)
            if retry is not None:
                return retry
        if isinstance(exception, DownloadCancelledError):
            msg = f"over TMAPI_MEDIA_MAXSIZE={self.config.media_maxsize} bytes"
        else:
            msg = f"{type(exception).__name__}: {exception}".rstrip(": ")
        return self._give_up(request, msg)

    def _retry(self, request: Request, reason: str | Exception) -> Request | None:
        times = self.config.media_retry_times
        return retry_later(self.crawler, self.config, request, reason, times, "tmapi/media/retries", self.rng)

    @staticmethod
    def _give_up(request: Request, msg: str) -> Response:
        request.meta[ERROR_META] = msg
        return Response(request.url, status=200, request=request, flags=[ERROR_FLAG])
