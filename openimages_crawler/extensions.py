"""Crawl extensions: a quick stop on Ctrl-C, and live progress.

Stop quickly on one Ctrl-C: Scrapy's graceful stop waits for every transfer
in progress, which on a slow host can take DOWNLOAD_TIMEOUT; after
OPENIMAGES_STOP_GRACE seconds the transfers still running are cut off. Their
rows get no result line and are simply done by the next run.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured, UsageError
from scrapy.utils.asyncio import create_looping_call

from .downloader import ConnectionLimitDownloader
from .failures import FAILURE_STAT_PREFIX
from .progress import Counts, ProgressDisplay, ProgressMeter

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


# Sent after every progress sample with ``counts``, ``rates`` and ``meter``
# (the dashboard and the end-of-run report listen).
progress_sampled = object()

_SAMPLE_SECONDS = 1.0


class CrawlProgress:
    """Live progress (on by default, ``OPENIMAGES_PROGRESS``): a bar on a
    terminal, a compact line every ``LOGSTATS_INTERVAL`` elsewhere. The
    figures also go to the stats under ``openimages/progress/``."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        mode = str(settings.get("OPENIMAGES_PROGRESS", "auto")).lower()
        if mode == "off":
            raise NotConfigured
        try:
            self.display = ProgressDisplay(mode, settings.getfloat("LOGSTATS_INTERVAL", 60.0))
        except ValueError as exc:
            raise UsageError(f"OPENIMAGES_PROGRESS: {exc}") from None
        self.crawler = crawler
        self.meter = ProgressMeter()
        self.started = time.monotonic()
        self.loop = create_looping_call(self.sample)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self) -> None:
        self.started = time.monotonic()
        self.loop.start(_SAMPLE_SECONDS, now=True)

    def spider_closed(self, reason: str) -> None:
        if self.loop.running:
            self.loop.stop()
        self.sample(final=True, finished=reason == "finished")

    def counts(self, finished: bool = False) -> Counts:
        """The crawl's figures now (a finished crawl's total is what it did)."""
        stats = self.crawler.stats.get_stats()
        failures = {
            key.removeprefix(FAILURE_STAT_PREFIX): value
            for key, value in stats.items()
            if key.startswith(FAILURE_STAT_PREFIX)
        }
        ok = stats.get("openimages/success", 0)
        failed = sum(failures.values())
        done = ok + failed + sum(
            stats.get(key, 0)
            for key in ("openimages/rows_skipped", "openimages/repaired/ok", "openimages/repaired/failed")
        )
        engine = self.crawler.engine
        downloader = engine.downloader if engine is not None else None
        return Counts(
            time=time.monotonic() - self.started,
            done=done,
            ok=ok,
            failed=failed,
            bytes_in=stats.get("downloader/response_bytes", 0),
            bytes_out=stats.get("openimages/bytes_written", 0),
            failures=failures,
            downloading=len(downloader.active) if downloader is not None else 0,
            working=stats.get("openimages/in_workers", 0),
            total=done if finished else getattr(self.crawler.spider, "rows_total", None),
        )

    def sample(self, final: bool = False, finished: bool = False) -> None:
        counts = self.counts(finished)
        self.meter.add(counts)
        rates = self.meter.rates()
        stats = self.crawler.stats
        for key, value in {
            "rows_done": counts.done,
            "rows_total": counts.total,
            "images_per_s": round(rates.images_per_s, 2),
            "mb_in_per_s": round(rates.mb_in_per_s, 2),
            "mb_out_per_s": round(rates.mb_out_per_s, 2),
            "eta_s": None if rates.eta_s is None else round(rates.eta_s),
            "downloading": counts.downloading,
            "in_workers": counts.working,
        }.items():
            stats.set_value(f"openimages/progress/{key}", value)
        self.display.show(self.meter, final=final)
        self.crawler.signals.send_catch_log(
            progress_sampled, counts=counts, rates=rates, meter=self.meter, final=final
        )
