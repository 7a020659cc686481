"""The ImagesPipeline subclass that proves each image is the original and
stores it, resized, in the layout the README documents.

Downloads do not start here: the spider yields the image requests itself, so
they go through Scrapy's scheduler, where CONCURRENT_REQUESTS, back-pressure
(SCRAPER_SLOT_MAX_ACTIVE_SIZE) and a graceful stop apply; the stock media
pipeline's ``engine.download_async`` route bypasses all three (see
../shared notes), so ``get_media_requests`` is not used. Each finished
request reaches ``process_item`` as a ``FetchedImage`` carrying the row's
plan, and the MediaPipeline hooks run on it with Scrapy's signatures:
``media_failed``, ``media_downloaded`` (verification, decoding, resizing
and writing in a worker pool sized to the CPUs, off the event loop) and
``item_completed``, which turns the outcome into a results row. The store
comes from ``STORE_SCHEMES`` by the scheme of IMAGES_STORE (``self.store``),
the originals' place from ``file_path``; the resized files go to their
output sinks (``outputs/sinks.py``: files in the layout today).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.pipelines.images import ImagesPipeline
from scrapy.utils.defer import _schedule_coro

from openimages_crawler import reasons
from openimages_crawler.crawl import errors
from openimages_crawler.crawl.config import (
    CrawlConfig,
    open_crawl_store,
    originals_sink,
    output_sinks,
    records_store,
)
from openimages_crawler.crawl.items import (
    ALREADY_RECORDED,
    FetchedImage,
    Unrecorded,
    request_meta,
)
from openimages_crawler.checkpoint.pending import PendingRows
from openimages_crawler.dataset.annotation_index import SampleAnnotations
from openimages_crawler.imaging.boxes import placed_annotations
from openimages_crawler.imaging.pillow import ResizeSpec
from openimages_crawler.imaging.process import Expected, Outcome, process_image
from openimages_crawler.store import STORE_SCHEMES, Store
from openimages_crawler.checkpoint.results import FailureRow, SuccessRow, with_download
from openimages_crawler.outputs.containers import Annotations, ShardSink
from openimages_crawler.outputs.sinks import OutputSink

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
        self.store_settings = crawler.settings  # for _get_store, which FilesPipeline calls first
        super().__init__(store_uri, crawler=crawler)
        self.store: Store  # set by FilesPipeline through _get_store
        self.config = CrawlConfig.from_settings(crawler.settings)
        records = records_store(crawler.settings)
        self.sinks = output_sinks(self.config, self.store, records)
        self.originals = originals_sink(self.config, self.store, records)  # None: files
        self.shard_sinks = [sink for sink in [*self.sinks.values(), self.originals] if isinstance(sink, ShardSink)]
        self.pending: PendingRows[SuccessRow] = PendingRows()  # successes whose shards are still open
        self.outputs = {output.dir: output for output in self.config.outputs}
        self.labelled: SampleAnnotations | None = None  # what shard samples carry (the spider's)
        self.executor: ThreadPoolExecutor | None = None
        self.uploads: ThreadPoolExecutor | None = None  # a remote store's writes
        self.upload_threads = crawler.settings.getint("OPENIMAGES_STORE_CONCURRENCY")
        self.stats = crawler.stats

    @classmethod
    def _update_stores(cls, settings: BaseSettings) -> None:
        """Scrapy's S3/GCS/FTP classes are not in STORE_SCHEMES: nothing to configure."""

    def _get_store(self, uri: str) -> Store:  # type: ignore[override]
        return open_crawl_store(self.store_settings, self.STORE_SCHEMES, uri)

    def open_spider(self, spider: Spider | None = None) -> None:
        super().open_spider()
        self.store.open()
        if self.shard_sinks:
            self.labelled = getattr(self.crawler.spider, "sample_annotations", None)
        self.executor = ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="openimages-worker"
        )
        if self.store.remote:
            self.uploads = ThreadPoolExecutor(max_workers=max(1, self.upload_threads),
                                              thread_name_prefix="openimages-upload")

    def close_spider(self, spider: Spider | None = None) -> None:
        """After the last image: the open shards published (a stop's are smaller)
        and their rows recorded, before the feeds close."""
        for pool in (self.executor, self.uploads):
            if pool is not None:
                pool.shutdown(wait=True)
        for sink in [*self.sinks.values(), self.originals]:
            if sink is None:
                continue
            try:
                sink.close()
            except OSError as exc:
                logger.error("Cannot publish the last shards of %s: %s; their rows stay pending", sink, exc)
                self.stats.set_value("openimages/store_error", str(exc))
        self.record_published()
        if len(self.pending):
            logger.error("%d rows are in shards that could not be published: they stay pending", len(self.pending))
        self.store.close()

    def record_published(self) -> None:
        """The rows whose shards have all been published since the last call, recorded
        now (sent as Scrapy sends a scraped item: the results feeds and the report take it)."""
        for sink in self.shard_sinks:
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
        assert self.executor is not None
        loop = asyncio.get_running_loop()
        task = partial(self.store_image, response.body, item)
        self.stats.inc_value("openimages/time/download_s", response.meta.get("download_latency", 0.0))
        self.stats.inc_value("openimages/in_workers")  # a gauge for the progress display
        try:
            outcome, seconds, cpu = await loop.run_in_executor(self.executor, _timed, task)
        finally:
            self.stats.inc_value("openimages/in_workers", -1)
        self.stats.inc_value("openimages/time/worker_s", seconds)
        self.stats.inc_value("openimages/time/worker_cpu_s", cpu)
        if self.uploads is not None and outcome.ok:
            outcome = await loop.run_in_executor(self.uploads, self.save, response.body, item, outcome)
        return outcome

    def store_image(self, body: bytes, item: FetchedImage) -> Outcome:
        """In a worker: verify and encode, then save, unless the store is remote
        (its uploads then wait in threads of their own, not on the CPU workers)."""
        outcome = self.process(body, item)
        if outcome.ok and self.uploads is None:
            outcome = self.save(body, item, outcome)
        return outcome

    def process(self, body: bytes, item: FetchedImage) -> Outcome:
        """Verify and decode ``body``, and encode every output the plan says is missing."""
        plan, config = item.plan, self.config
        row = plan.row
        check_md5 = config.check_md5_if_exists or not plan.from_store
        expected = (
            Expected(size=row.size, md5=row.md5 if check_md5 else None)
            if plan.verified
            else Expected()  # not the original: only the decode check applies
        )
        specs = [self.outputs[folder].spec for folder in plan.outputs]
        return process_image(body, expected, specs, max_pixels=config.max_pixels,
                             max_decode_bytes=config.max_decode_bytes,
                             fast=config.fast_resize, rotation=row.rotation,
                             want_md5=plan.record_download)

    def save(self, body: bytes, item: FetchedImage, outcome: Outcome) -> Outcome:
        """Write the original (before the resized files, so an interrupted image
        can later be resized from it without a download), then every encoded output."""
        plan, config = item.plan, self.config
        encoded, outcome.encoded = outcome.encoded, []
        request = item.response.request if item.response is not None else None
        free = self.store.free_bytes()
        if free is not None and free < config.min_free_bytes + len(body) + sum(map(len, encoded)):
            return Outcome(reasons.IO_ERROR, f"{free:,} bytes free in the store, under "
                                             f"OPENIMAGES_MIN_FREE_BYTES ({config.min_free_bytes:,})")
        tickets: list[str | None] = []
        labelled: Annotations | None = None

        def placed(sink: OutputSink, spec: ResizeSpec | None) -> Annotations | None:
            if labelled is None or not isinstance(sink, ShardSink):
                return None
            return placed_annotations(labelled, outcome.geometry, spec)

        try:
            if self.labelled is not None:
                labelled = self.labelled.of(plan.row.subset, plan.row.image_id)
            if plan.keep_original and not plan.from_store:
                key = self.file_path(request, item=item)
                if self.originals is None:
                    self.store.write(key, body)
                else:
                    tickets.append(self.originals.write(plan.row, key.rpartition(".")[2], body,
                                                        outcome.original_size, placed(self.originals, None)))
                outcome.bytes_written += len(body)
            for folder, data, size in zip(plan.outputs, encoded, outcome.sizes, strict=True):
                sink, spec = self.sinks[folder], self.outputs[folder].spec
                tickets.append(sink.write(plan.row, spec.format, data, size, placed(sink, spec)))
                outcome.bytes_written += len(data)
            outcome.tickets = [ticket for ticket in tickets if ticket is not None]
        except OSError as exc:
            return Outcome(reasons.IO_ERROR, f"cannot write to the store: {exc}")
        return outcome

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
        if not ok and plan.from_store:
            logger.info(
                "Stored original of %s failed verification (%s: %s); downloading it again",
                row.image_id,
                outcome.reason,
                outcome.details,
            )
            self.stats.inc_value("openimages/store_fallback")
            request = item.response.request if item.response is not None else item.failure.request
            fetch = plan.fetch_instead()
            self.crawler.engine.crawl(request.replace(url=fetch.url, meta=request_meta(fetch)))
            return Unrecorded(row.image_id, "stored original rejected, downloading again")
        self.stats.inc_value("openimages/bytes_written", outcome.bytes_written)
        if plan.recorded:
            if not ok:
                logger.warning(
                    "%s is recorded as a success but could not be rebuilt: %s: %s",
                    row.image_id,
                    outcome.reason,
                    outcome.details,
                )
            self.stats.inc_value(f"openimages/repaired/{'ok' if ok else 'failed'}")
            return Unrecorded(row.image_id, ALREADY_RECORDED)
        fields = row.fields
        if plan.record_download:
            fields = with_download(fields, plan.url, outcome.size or None, outcome.md5)
        if ok:
            success = SuccessRow(fields, row.subset)
            if self.pending.add(success, outcome.tickets):
                return Unrecorded(row.image_id, "in a shard not published yet")
            return success
        assert outcome.reason is not None
        logger.debug("%s failed: %s: %s", row.image_id, outcome.reason, outcome.details)
        return FailureRow(fields, row.subset, outcome.reason, outcome.details)


    def stop_for_the_store(self, details: str) -> None:
        """Stop the crawl (once) the way a CLOSESPIDER limit does: no new rows,
        the ones in flight finish, results and report are written."""
        self.stats.inc_value("openimages/unwritable")
        if self.stats.get_value("openimages/store_error") is None:
            self.stats.set_value("openimages/store_error", details)
            logger.error("Cannot write to the store: %s. Stopping; the rows not written stay pending", details)
            _schedule_coro(self.crawler.engine.close_spider_async(reason=STORE_UNWRITABLE))


def _timed(task: Callable[[], Outcome]) -> tuple[Outcome, float, float]:
    """Run ``task`` in a worker and say how long it took, in wall and CPU time
    (the report's stage times; the CPU the event loop spends is the rest)."""
    started, cpu = time.perf_counter(), time.thread_time()
    outcome = task()
    return outcome, time.perf_counter() - started, time.thread_time() - cpu
