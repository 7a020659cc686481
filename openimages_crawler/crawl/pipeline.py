"""The ImagesPipeline subclass that proves each image is the original and
stores it, resized, in the layout the README documents.

The spider yields the image requests itself, so they go through Scrapy's
scheduler, where CONCURRENT_REQUESTS, back-pressure and a graceful stop apply
(the stock ``engine.download_async`` route bypasses all three: ../shared
notes). Each finished request reaches ``process_item`` as a ``FetchedImage``
carrying the row's plan, and the MediaPipeline hooks run on it with Scrapy's
signatures: ``media_failed``, ``media_downloaded`` (``crawl.saving`` in a
worker pool sized to the CPUs) and ``item_completed``, which turns the outcome
into a results row. The store is the run's, from ``STORE_SCHEMES`` by the
scheme of IMAGES_STORE; the originals' key comes from ``file_path``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.pipelines.images import ImagesPipeline
from scrapy.utils.defer import _schedule_coro

from openimages_crawler import reasons
from openimages_crawler.checkpoint.pending import PendingRows
from openimages_crawler.checkpoint.results import (
    FailureRow,
    SuccessRow,
    with_download,
    with_recorded,
)
from openimages_crawler.crawl import errors
from openimages_crawler.crawl.items import (
    ALREADY_RECORDED,
    FetchedImage,
    Unrecorded,
    request_meta,
)
from openimages_crawler.crawl.politeness import opt_out
from openimages_crawler.crawl.run import CrawlRun
from openimages_crawler.crawl.saving import process, save, timed
from openimages_crawler.imaging.process import Outcome
from openimages_crawler.outputs.containers import PackSink
from openimages_crawler.store import STORE_SCHEMES, Store

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.pipelines.media import MediaPipeline
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

# The finish reason of a crawl stopped because the store cannot take more files.
STORE_UNWRITABLE = "store_unwritable"

# One (success, outcome) pair per request, in the shape of Scrapy's
# item_completed results (a failure is an Outcome with its reason, not a
# Failure); empty when the transfer was interrupted by a stop.
Results = list[tuple[bool, Outcome]]


class OpenImagesPipeline(ImagesPipeline):
    STORE_SCHEMES = STORE_SCHEMES  # type: ignore[assignment]  # the project's stores, not Scrapy's

    def __init__(self, store_uri: str, download_func: None = None, *, crawler: Crawler):
        self.run = CrawlRun.of(crawler)  # for _get_store, which FilesPipeline calls first
        super().__init__(store_uri, crawler=crawler)
        self.store: Store  # the run's, set by FilesPipeline through _get_store
        self.config = self.run.config
        self.containers = [sink for sink in [*self.run.sinks.values(), self.run.originals]
                           if isinstance(sink, PackSink)]
        self.pending: PendingRows[SuccessRow] = PendingRows()  # successes whose containers are still open
        self.executor: ThreadPoolExecutor | None = None
        self.uploads: ThreadPoolExecutor | None = None  # the store's own write threads
        self.stats = crawler.stats

    @classmethod
    def _update_stores(cls, settings: BaseSettings) -> None:
        """Scrapy's S3/GCS/FTP classes are not in STORE_SCHEMES: nothing to configure."""

    def _get_store(self, uri: str) -> Store:  # type: ignore[override]
        """The run's store (opened from IMAGES_STORE by its scheme, ``STORE_SCHEMES``)."""
        return self.run.store

    def open_spider(self, spider: Spider | None = None) -> None:
        super().open_spider()
        self.store.open()
        self.executor = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="openimages-worker")
        if self.store.write_threads:
            self.uploads = ThreadPoolExecutor(max_workers=self.store.write_threads,
                                              thread_name_prefix="openimages-upload")

    def close_spider(self, spider: Spider | None = None) -> None:
        """After the last image: the open packs published (a stop's are smaller)
        and their rows recorded, before the feeds close."""
        for pool in (self.executor, self.uploads):
            if pool is not None:
                pool.shutdown(wait=True)
        for sink in [*self.run.sinks.values(), self.run.originals]:
            if sink is None:
                continue
            try:
                sink.close()
            except OSError as exc:
                logger.error("Cannot publish the last packs of %s: %s; their rows stay pending", sink, exc)
                self.run.store_error = str(exc)
        self.record_published()
        if len(self.pending):
            logger.error("%d rows are in packs that could not be published: they stay pending", len(self.pending))
        self.store.close()

    def record_published(self) -> None:
        """The rows whose packs have all been published since the last call, recorded
        now (sent as Scrapy sends a scraped item: the results feeds and the report take it)."""
        for sink in self.containers:
            self.pending.publish(sink.released())
        for row in self.pending.take_ready():
            self.stats.inc_value("openimages/success")
            self.crawler.signals.send_catch_log(signal=signals.item_scraped, item=row, response=None,
                                                spider=self.crawler.spider)

    async def process_item(self, item: Any, spider: Spider | None = None) -> Any:
        if isinstance(item, FetchedImage):
            info = self.spiderinfo
            results: Results = []
            if item.failure is not None:
                outcome = self.media_failed(item.failure, item.failure.request, info)
            else:
                assert item.response is not None
                outcome = await self.media_downloaded(item.response, item.response.request, info, item=item)
            if outcome is not None:
                results.append((outcome.ok, outcome))
            item = self.item_completed(results, item, info)
        if isinstance(item, FailureRow):
            self.stats.inc_value(reasons.FAILURE_STAT_PREFIX + item.reason)
        elif isinstance(item, SuccessRow):
            self.stats.inc_value("openimages/success")
        return item

    def file_path(
        self,
        request: Request,
        response: Response | None = None,
        info: MediaPipeline.SpiderInfo | None = None,
        *,
        item: Any = None,
    ) -> str:
        """The original's key in the store."""
        return item.plan.original

    def media_failed(
        self, failure: Failure, request: Request | None, info: MediaPipeline.SpiderInfo
    ) -> Outcome | None:
        """The reason a download raised; ``None`` for an interrupted transfer."""
        if failure.check(errors.TransferInterrupted):
            return None
        retries = request.meta.get("retry_times", 0) if request is not None else 0
        return Outcome(*errors.exception_failure(failure, retries))

    async def media_downloaded(
        self,
        response: Response,
        request: Request | None,
        info: MediaPipeline.SpiderInfo,
        *,
        item: Any = None,
    ) -> Outcome:
        status = errors.status_failure(response)
        if status is not None:
            return Outcome(*status)
        robots = opt_out((value.decode("latin-1") for value in response.headers.getlist("X-Robots-Tag")),
                         self.config.disallowed)
        if robots is not None:
            return Outcome(reasons.OPTED_OUT, f"X-Robots-Tag: {robots[:200]}")
        assert self.executor is not None
        loop = asyncio.get_running_loop()
        task = partial(self.store_image, response.body, item)
        self.stats.inc_value("openimages/time/download_s", response.meta.get("download_latency", 0.0))
        self.stats.inc_value("openimages/in_workers")  # a gauge for the progress display
        try:
            outcome, seconds, cpu = await loop.run_in_executor(self.executor, timed, task)
        finally:
            self.stats.inc_value("openimages/in_workers", -1)
        self.stats.inc_value("openimages/time/worker_s", seconds)
        self.stats.inc_value("openimages/time/worker_cpu_s", cpu)
        if self.uploads is not None and outcome.ok:
            outcome = await loop.run_in_executor(self.uploads, self.save, response.body, item, outcome)
        return outcome

    def store_image(self, body: bytes, item: FetchedImage) -> Outcome:
        """In a worker: verify and encode, then save, unless the store has write
        threads of its own (its uploads then wait there, not on the CPU workers)."""
        outcome = process(self.config, body, item.plan)
        if outcome.ok and self.uploads is None:
            outcome = self.save(body, item, outcome)
        return outcome

    def save(self, body: bytes, item: FetchedImage, outcome: Outcome) -> Outcome:
        request = item.response.request if item.response is not None else None
        return save(self.run, body, item.plan, outcome, self.file_path(request, item=item))

    def item_completed(
        self, results: Results, item: Any, info: MediaPipeline.SpiderInfo
    ) -> SuccessRow | FailureRow | Unrecorded:
        plan = item.plan
        row = plan.row
        self.record_published()
        if not results:
            self.stats.inc_value("openimages/interrupted")
            return Unrecorded(row.image_id, "download interrupted by the stop")
        ok, outcome = results[0]
        if outcome.reason == reasons.IO_ERROR:  # never a verdict on the row: it stays pending
            self.stop_for_the_store(outcome.details)
            return Unrecorded(row.image_id, "the store cannot be written")
        if not ok and plan.from_store and outcome.reason != reasons.FILTERED:  # a filter is no verdict on the file
            logger.info("Stored original of %s failed verification (%s: %s); downloading it again",
                        row.image_id, outcome.reason, outcome.details)
            self.stats.inc_value("openimages/store_fallback")
            request = item.response.request if item.response is not None else item.failure.request
            fetch = plan.fetch_instead()
            self.crawler.engine.crawl(request.replace(url=fetch.url, meta=request_meta(fetch)))
            return Unrecorded(row.image_id, "stored original rejected, downloading again")
        self.stats.inc_value("openimages/bytes_written", outcome.bytes_written)
        if plan.recorded:
            if not ok:
                logger.warning("%s is recorded as a success but could not be rebuilt: %s: %s",
                               row.image_id, outcome.reason, outcome.details)
            self.stats.inc_value(f"openimages/repaired/{'ok' if ok else 'failed'}")
            return Unrecorded(row.image_id, ALREADY_RECORDED)
        fields = row.fields
        if plan.record_download:
            fields = with_download(fields, plan.url, outcome.size or None, outcome.md5)
        fields = with_recorded(fields, self.run.recorded_columns, outcome.upright if ok else None,
                               outcome.hashes if ok else None)
        if ok:
            success = SuccessRow(fields, row.subset)
            if self.pending.add(success, outcome.tickets):
                return Unrecorded(row.image_id, "in a pack not published yet")
            return success
        assert outcome.reason is not None
        logger.debug("%s failed: %s: %s", row.image_id, outcome.reason, outcome.details)
        return FailureRow(fields, row.subset, outcome.reason, outcome.details)

    def stop_for_the_store(self, details: str) -> None:
        """Stop the crawl (once) the way a CLOSESPIDER limit does: no new rows,
        the ones in flight finish, results and report are written."""
        self.stats.inc_value("openimages/unwritable")
        if not self.run.store_error:
            self.run.store_error = details
            logger.error("Cannot write to the store: %s. Stopping; the rows not written stay pending", details)
            _schedule_coro(self.crawler.engine.close_spider_async(reason=STORE_UNWRITABLE))
