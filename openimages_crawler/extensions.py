"""Stop quickly on one Ctrl-C: Scrapy's graceful stop waits for every transfer
in progress, which on a slow host can take DOWNLOAD_TIMEOUT; after
OPENIMAGES_STOP_GRACE seconds the transfers still running are cut off. Their
rows get no result line and are simply done by the next run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.utils.asyncio import create_looping_call

from .downloader import ConnectionLimitDownloader

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.25


class QuickStop:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.grace = crawler.settings.getfloat("OPENIMAGES_STOP_GRACE", 3.0)
        self.stopping_polls = 0
        self.loop = create_looping_call(self.check)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self) -> None:
        self.loop.start(_POLL_SECONDS, now=False)

    def spider_closed(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def check(self) -> None:
        engine = self.crawler.engine
        if engine is None or engine.running:
            return
        self.stopping_polls += 1
        if self.stopping_polls * _POLL_SECONDS < self.grace:
            return
        downloader = engine.downloader
        if isinstance(downloader, ConnectionLimitDownloader) and downloader.transfers:
            count = downloader.interrupt_transfers()
            logger.info("Stop: interrupted %d transfers still running; their rows stay open", count)
