"""Monitoring extensions: live progress and the end-of-run report."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import NotConfigured, UsageError

from openimages_crawler.crawl.config import open_crawl_store
from openimages_crawler.crawl.ticking import Ticking
from openimages_crawler.monitor import report
from openimages_crawler.monitor.progress import (
    Counts,
    ProgressDisplay,
    ProgressMeter,
    figures,
)
from openimages_crawler.monitor.report import HostTally
from openimages_crawler.reasons import FAILURE_STAT_PREFIX
from openimages_crawler.store.base import writing_text
from openimages_crawler.store.results import FailureRow, SuccessRow

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# Sent after every progress sample with ``counts``, ``rates``, ``meter``,
# ``final`` (the last one, at close) and ``reason`` (the close reason, with
# ``final``); the dashboard and the end-of-run report listen.
progress_sampled = object()

class CrawlProgress(Ticking):
    """Samples the crawl's figures every second into a ``ProgressMeter``, puts
    them in the stats under ``openimages/progress/`` and sends
    ``progress_sampled`` (for the dashboard and the report); shows them as a
    bar on a terminal or a compact line every ``LOGSTATS_INTERVAL``
    (``OPENIMAGES_PROGRESS``; ``off`` hides them, the sampling goes on)."""

    tick_at_open = True

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        settings = crawler.settings
        mode = str(settings["OPENIMAGES_PROGRESS"]).lower()
        try:
            self.display = ProgressDisplay(mode, settings.getfloat("LOGSTATS_INTERVAL"))
        except ValueError as exc:
            raise UsageError(f"OPENIMAGES_PROGRESS: {exc}") from None
        self.meter = ProgressMeter()
        self.started = time.monotonic()

    def spider_opened(self) -> None:
        self.started = time.monotonic()
        super().spider_opened()

    def tick(self) -> None:
        self.sample()

    def closed(self, reason: str) -> None:
        self.sample(final=True, reason=reason)

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
        total = getattr(self.crawler.spider, "rows_total", None)
        if finished or (total is not None and total < done):
            total = done  # an estimate can run low (a shard holding more than 1/N)
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
            total=total,
        )

    def sample(self, final: bool = False, reason: str = "") -> None:
        counts = self.counts(finished=reason == "finished")
        self.meter.add(counts)
        rates = self.meter.rates()
        stats = self.crawler.stats
        for key, value in figures(counts, rates).items():
            stats.set_value(f"openimages/progress/{key}", value)
        self.display.show(self.meter, final=final)
        self.crawler.signals.send_catch_log(
            progress_sampled, counts=counts, rates=rates, meter=self.meter, final=final, reason=reason
        )


class RunReport:
    """Writes ``{IMAGES_STORE}/report.json`` and ``report.html`` when the crawl
    ends (``OPENIMAGES_REPORT``): totals, failure reasons, throughput over
    time, bytes, per-host errors and time per stage."""

    def __init__(self, crawler: Crawler) -> None:
        if not crawler.settings.getbool("OPENIMAGES_REPORT"):
            raise NotConfigured
        self.crawler = crawler
        self.store = open_crawl_store(str(crawler.settings["IMAGES_STORE"]))
        self.hosts: dict[str, HostTally] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(extension.progress_sampled, signal=progress_sampled)
        return extension

    def item_scraped(self, item: object) -> None:
        if not isinstance(item, SuccessRow | FailureRow):
            return
        host = result_host(item)
        tally = self.hosts.setdefault(host, HostTally())
        if isinstance(item, FailureRow):
            tally.failures[item.reason] += 1
        else:
            tally.ok += 1

    def progress_sampled(self, counts: Counts, meter: ProgressMeter, final: bool, reason: str) -> None:
        if final:
            self.write(counts, meter, reason)

    def write(self, final: Counts, meter: ProgressMeter, reason: str) -> None:
        stats = self.crawler.stats.get_stats()
        spider = self.crawler.spider
        run = {
            "store": self.store.uri,
            "started": _iso(stats.get("start_time")),
            "finished": _iso(stats.get("finish_time")) or datetime.now(UTC).isoformat(),
            "seconds": round(final.time, 1),
            "finish_reason": reason,
            "arguments": dict(getattr(spider, "given", {})),
        }
        stages = {
            name: stats.get(f"openimages/time/{name}", 0.0)
            for name in ("prepare_s", "download_s", "worker_s")
        }
        stages["wall_s"] = final.time
        ledger = getattr(spider, "ledger", None)  # what earlier runs recorded, read at start
        store_totals = {
            "success rows": (len(ledger.succeeded) if ledger else 0) + final.ok,
            "failure rows": (len(ledger.failed) if ledger else 0) + final.failed,
        }
        figures = report.build(final=final, history=meter.history + [final], hosts=self.hosts,
                               stages=stages, run=run, store_totals=store_totals)
        try:
            for name, text in (("report.json", report.to_json(figures)), ("report.html", report.to_html(figures))):
                with writing_text(self.store, name) as out:
                    out.write(text)
        except OSError as exc:
            logger.error("Cannot write the report in %s: %s", self.store.uri, exc)
            return
        logger.info("Report: %s (and report.json)", f"{self.store.uri.rstrip('/')}/report.html")


def result_host(item: SuccessRow | FailureRow) -> str:
    """The host an image came from (the URL used, else OriginalURL)."""
    url = item.get("DownloadURL") or item.get("OriginalURL", "")
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else ""
