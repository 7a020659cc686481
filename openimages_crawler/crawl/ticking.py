"""A base for extensions that do something every second while the spider is open."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.utils.asyncio import create_looping_call

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class Ticking:
    """An extension whose ``tick`` runs every ``interval`` seconds while the
    spider is open (first at once if ``tick_at_open``); ``closed`` runs after."""

    interval = 1.0
    tick_at_open = False

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.loop = create_looping_call(self.tick)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self) -> None:
        self.loop.start(self.interval, now=self.tick_at_open)

    def spider_closed(self, reason: str) -> None:
        if self.loop.running:
            self.loop.stop()
        self.closed(reason)

    def tick(self) -> None:
        raise NotImplementedError

    def closed(self, reason: str) -> None:
        """After the last tick."""
