"""Monitoring extensions: live progress and the end-of-run report."""

from __future__ import annotations

import logging
import resource
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import UsageError

from openimages_crawler.checkpoint.ledger import recorded_rows
from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.crawl.config import CrawlConfig
from openimages_crawler.crawl.run import CrawlRun
from openimages_crawler.crawl.ticking import Ticking
from openimages_crawler.monitor import report
from openimages_crawler.monitor.progress import (
    Counts,
    ProgressDisplay,
    ProgressMeter,
    figures,
)
from openimages_crawler.monitor.status import HostRanking, ImageEntry, PartStatus, RecordSender, set_counts
from openimages_crawler.outputs.formats import FILES
from openimages_crawler.reasons import FAILURE_STAT_PREFIX, POLICY_REASONS

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

# Sent after every progress sample with ``counts``, ``rates``, ``meter``,
# ``final`` (the last one, at close) and ``reason`` (the close reason, with
# ``final``); the dashboard and the end-of-run report listen.
progress_sampled = object()

# Seconds between two writes of a process's record in the store (monitor.status).
STATUS_INTERVAL_S = 2.0
# Latest failures kept for the web view.
RECENT_FAILURES = 20

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
        left_out = {reason: failures.pop(reason) for reason in POLICY_REASONS if reason in failures}
        ok = stats.get("openimages/success", 0)
        failed = sum(failures.values())
        done = ok + failed + sum(left_out.values()) + sum(
            stats.get(key, 0)
            for key in ("openimages/rows_skipped", "openimages/repaired/ok", "openimages/repaired/failed")
        )
        engine = self.crawler.engine
        downloader = engine.downloader if engine is not None else None
        total = CrawlRun.of(self.crawler).rows_total
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
            left_out=left_out,
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
    """Keeps this process's record in the store (``monitor.status``: figures,
    hosts, stages, every few seconds and at the end) and, for a crawl that is
    its own run (not a process of a supervised one), writes
    ``{IMAGES_STORE}/report.json`` and ``report.html`` when it ends
    (``OPENIMAGES_REPORT``): totals, failure reasons, throughput over time,
    bytes, per-host errors, time per stage and the store's totals."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.enabled = crawler.settings.getbool("OPENIMAGES_REPORT")
        self.run = CrawlRun.of(crawler)
        self.store = self.run.store  # the report goes there
        self.sender: RecordSender | None = None  # the records, from a thread (a bucket may be slow)
        self.config = self.run.config
        self.hosts = HostRanking(self.config.status_hosts)
        self.failures: deque[dict[str, str]] = deque(maxlen=RECENT_FAILURES)
        self.images: deque[ImageEntry] = deque(
            maxlen=max(crawler.settings.getint("OPENIMAGES_DASHBOARD_IMAGES"), 1))
        self.status: PartStatus | None = None
        self.written = 0.0
        self.page: str | None = None  # report.html, once written
        self.loop_cpu_opened = time.thread_time()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(extension.progress_sampled, signal=progress_sampled)
        return extension

    def item_scraped(self, item: object) -> None:
        if not isinstance(item, SuccessRow | FailureRow):
            return
        host = result_host(item)
        if isinstance(item, FailureRow) and item.reason in POLICY_REASONS:
            return  # not a host's failure: the crawl chose to leave the image out
        if isinstance(item, FailureRow):
            self.hosts.add(host, item.reason)
            self.failures.appendleft(failure_entry(item))
        else:
            self.hosts.add(host)
            key = thumbnail_key(self.config, item.subset, item["ImageID"])
            if key is not None:
                self.images.appendleft({"subset": item.subset, "image_id": item["ImageID"], "key": key})

    def progress_sampled(self, counts: Counts, meter: ProgressMeter, final: bool, reason: str) -> None:
        run = self.run
        if not run.part:
            return  # not started
        if self.status is None:
            self.status = PartStatus(part=run.part, job=run.job, arguments=dict(run.given))
        now = time.monotonic()
        if final or now - self.written >= STATUS_INTERVAL_S:
            self.written = now
            self.write_status(counts, reason if final else "running", final)
        if final and self.enabled and run.supervisor is None:
            self.write_report(counts, meter, reason)

    def write_status(self, counts: Counts, state: str, final: bool) -> None:
        assert self.status is not None
        status = self.status
        set_counts(status, counts, self.hosts)
        status.state = state
        status.stages = self.stages()
        status.recent_failures = list(self.failures)
        status.recent_images = list(self.images)
        self.sender = self.sender or RecordSender(self.run.record_store)
        self.sender.send(status)
        if final:
            self.sender.flush()  # before the command adds its exit status

    def spider_opened(self) -> None:
        self.loop_cpu_opened = time.thread_time()  # signal handlers run on the event loop's thread

    def stages(self) -> dict[str, float]:
        """Time per stage: ``process_cpu_s`` is all this process's CPU (start-up
        included), ``event_loop_cpu_s`` the event loop's thread's since the
        spider opened (called on that thread)."""
        stats = self.crawler.stats.get_stats()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {**{name: stats.get(f"openimages/time/{name}", 0.0)
                   for name in ("prepare_s", "download_s", "worker_s", "worker_cpu_s")},
                "process_cpu_s": usage.ru_utime + usage.ru_stime,
                "event_loop_cpu_s": time.thread_time() - self.loop_cpu_opened}

    def write_report(self, final: Counts, meter: ProgressMeter, reason: str) -> None:
        stats = self.crawler.stats.get_stats()
        run = report.run_record(
            self.store.uri, started=_iso(stats.get("start_time")), seconds=final.time, reason=reason,
            arguments=dict(self.run.given), settings=run_settings(self.crawler.settings, self.config))
        files = self.run.files
        self.page = report.write(self.store, self.config.min_free_bytes, report.build(
            final=final, history=meter.history + [final], hosts=self.hosts.tallies,
            stages={**self.stages(), "wall_s": final.time}, run=run, store_totals=recorded_rows(files)))


def run_settings(settings: BaseSettings, config: CrawlConfig) -> dict[str, Any]:
    """The settings a report states beside its figures: what was stored and
    the limits the throughput was reached under (the whole run's, shared
    among its processes)."""
    return {
        "outputs": ", ".join(config.described_outputs()),
        **{name: settings[name] for name in (
            "CONCURRENT_REQUESTS", "CONCURRENT_REQUESTS_PER_DOMAIN", "DOWNLOAD_TIMEOUT", "RETRY_TIMES",
            "DOWNLOAD_MAXSIZE", "OPENIMAGES_MAX_PIXELS")},
        "OPENIMAGES_WORKERS": config.workers,
    }


def thumbnail_key(config: CrawlConfig, subset: str, image_id: str) -> str | None:
    """The key of an image's first resized output (no work: a name); none when
    only originals are kept or every output is in a container (no file per image)."""
    output = next((output for output in config.outputs if output.container == FILES), None)
    if output is None:
        return None
    return config.layout.image_key(subset, output.dir, image_id, output.spec.format)


def failure_entry(item: FailureRow) -> dict[str, str]:
    """A failure as the web view lists it."""
    return {
        "image_id": item.get("ImageID", ""),
        "reason": item.reason,
        "details": item.get("FailureDetails", ""),
        "url": item.get("DownloadURL") or item.get("OriginalURL", ""),
        "host": result_host(item),
    }


def result_host(item: SuccessRow | FailureRow) -> str:
    """The host an image came from (the URL used, else OriginalURL)."""
    url = item.get("DownloadURL") or item.get("OriginalURL", "")
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _iso(value: object) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else ""
