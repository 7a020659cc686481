"""Stop quickly on one Ctrl-C.

Scrapy's graceful stop waits for every transfer in progress, which on a slow
host can take DOWNLOAD_TIMEOUT; after OPENIMAGES_STOP_GRACE seconds the
transfers still running are cut off. Their rows get no result line and are
simply done by the next run.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from openimages_crawler.crawl.downloader import ConnectionLimitDownloader
from openimages_crawler.crawl.ticking import Ticking

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# Set when the process is asked to stop (the crawl command's signal handler):
# blocking work before the crawl, such as a metadata download, gives up.
STOP_REQUESTED = threading.Event()


class QuickStop(Ticking):
    interval = 0.25

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.grace = crawler.settings.getfloat("OPENIMAGES_STOP_GRACE")
        self.stopping_polls = 0

    def tick(self) -> None:
        engine = self.crawler.engine
        if engine is None or engine.running:
            return
        self.stopping_polls += 1
        if self.stopping_polls * self.interval < self.grace:
            return
        downloader = engine.downloader
        if isinstance(downloader, ConnectionLimitDownloader) and downloader.transfers:
            count = downloader.interrupt_transfers()
            logger.info("Stop: interrupted %d transfers still running; their rows stay open", count)
