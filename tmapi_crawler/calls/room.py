"""API calls wait while what their answers make cannot be taken yet: the
records waiting for the store's writer, the records waiting for their
files.  Each such bound is a :class:`Room` that its owner adds to the crawl
(:func:`add_room`: the catalog store, the media downloads), and every API
call waits for every room in one place, :class:`RoomMiddleware`, before the
store answers it and before the gate lets it go: a crawl whose writer or
files are behind slows down instead of filling memory with records."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.statscollectors import StatsCollector

_ROOMS: WeakKeyDictionary[Crawler, list[Room]] = WeakKeyDictionary()


class Room:
    """Calls wait while *full* says so; each wait is counted under
    *waits_stat*.  The owner calls :meth:`check` when what fills it went
    down."""

    def __init__(self, full: Callable[[], bool], stats: StatsCollector, waits_stat: str):
        self.full = full
        self.stats = stats
        self.waits_stat = waits_stat
        self._event: asyncio.Event | None = None

    async def wait(self) -> None:
        """Returns once there is room."""
        while self.full():
            if self._event is None:
                self._event = asyncio.Event()
            self.stats.inc_value(self.waits_stat)
            await self._event.wait()

    def check(self) -> None:
        """Wake the waiting calls if there is room now (each looks again)."""
        if self._event is not None and not self.full():
            self._event.set()
            self._event = None


def add_room(crawler: Crawler, room: Room) -> None:
    """Every API call of *crawler* waits for *room* from now on."""
    _ROOMS.setdefault(crawler, []).append(room)


class RoomMiddleware:
    """A downloader middleware (the add-on's, before the store's and the
    gate): an API call waits until every room of the crawl has room."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_request(self, request: Request) -> Response | None:
        if "tmapi" in request.meta:
            for room in _ROOMS.get(self.crawler, ()):
                await room.wait()
        return None
