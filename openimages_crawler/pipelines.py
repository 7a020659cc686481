"""The ImagesPipeline subclass that proves each image is the original and
stores it, resized, in the layout the README documents.

Downloads do not start here: the spider yields the image requests itself, so
they go through Scrapy's scheduler, where CONCURRENT_REQUESTS, back-pressure
(SCRAPER_SLOT_MAX_ACTIVE_SIZE) and a graceful stop apply; the stock media
pipeline's ``engine.download_async`` route bypasses all three (see
../shared notes). This pipeline receives each finished download as a
``FetchedImage`` and runs the MediaPipeline hooks on it: ``media_failed``,
``media_downloaded`` (verification, decoding and resizing in a worker pool
sized to the CPUs, off the event loop) and ``item_completed``, which turns
the outcome into a results row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from scrapy.pipelines.images import ImagesPipeline

from . import failures
from .config import CrawlConfig
from .items import FailureRow, FetchedImage, SuccessRow, Unrecorded, with_download
from .processing import Expected, Outcome, OutputPlan, process_image
from .storage import AtomicWriter

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.pipelines.media import MediaPipeline
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)


class OpenImagesPipeline(ImagesPipeline):
    def __init__(self, store_uri: str, download_func: None = None, *, crawler: Crawler):
        super().__init__(store_uri, crawler=crawler)
        self.config = CrawlConfig.from_settings(crawler.settings)
        self.writer = AtomicWriter(self.config.layout.root)
        self.executor: ThreadPoolExecutor | None = None
        self.stats = crawler.stats

    def open_spider(self, spider: Spider | None = None) -> None:
        super().open_spider()
        self.writer.open()
        self.executor = ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="openimages-worker"
        )

    def close_spider(self, spider: Spider | None = None) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.writer.close()

    async def process_item(self, item: Any, spider: Spider | None = None) -> Any:
        if isinstance(item, FetchedImage):
            info = self.spiderinfo
            if item.failure is not None:
                outcome = self.media_failed(item.failure, item.failure.request, info)
            else:
                assert item.response is not None
                outcome = await self.media_downloaded(
                    item.response, item.response.request, info, item=item
                )
            item = self.item_completed(outcome, item, info)
        if isinstance(item, FailureRow):
            self.stats.inc_value(failures.FAILURE_STAT_PREFIX + item.reason)
        elif isinstance(item, SuccessRow):
            self.stats.inc_value("openimages/success")
        return item

    def media_failed(
        self, failure: Failure, request: Request | None, info: MediaPipeline.SpiderInfo
    ) -> Outcome | None:
        """The reason a download raised; ``None`` for an interrupted transfer."""
        if failure.check(failures.TransferInterrupted):
            return None
        retries = request.meta.get("retry_times", 0) if request is not None else 0
        reason, details = failures.exception_failure(failure, retries)
        return Outcome(reason, details)

    async def media_downloaded(
        self,
        response: Response,
        request: Request | None,
        info: MediaPipeline.SpiderInfo,
        *,
        item: Any = None,
    ) -> Outcome:
        status = failures.status_failure(response)
        if status is not None:
            return Outcome(*status)
        row = item.row
        from_store = item.from_store
        check_md5 = self.config.check_md5_if_exists or not from_store
        expected = (
            Expected(size=row.size, md5=row.md5 if check_md5 else None)
            if item.verified
            else Expected()  # not the original: only the decode check applies
        )
        assert self.executor is not None
        task = partial(
            process_image,
            response.body,
            expected,
            self.output_plan(item),
            self.writer,
            self.config.max_pixels,
        )
        self.stats.inc_value("openimages/time/download_s", response.meta.get("download_latency", 0.0))
        self.stats.inc_value("openimages/in_workers")  # a gauge for the progress display
        try:
            outcome, seconds = await asyncio.get_running_loop().run_in_executor(self.executor, _timed, task)
        finally:
            self.stats.inc_value("openimages/in_workers", -1)
        self.stats.inc_value("openimages/time/worker_s", seconds)
        return outcome

    def output_plan(self, item: FetchedImage) -> OutputPlan:
        """Originals are written unless they came from the store; each resized
        output only if it was missing (outputs resume independently)."""
        row, config = item.row, self.config
        original = None
        if config.save_originals and not item.from_store:
            original = config.layout.original_path(row.subset, row.image_id, row.url)
        missing = set(item.missing)
        resized = tuple(
            (path, output.spec)
            for output in config.outputs
            if (path := config.output_path(output, row.subset, row.image_id)) in missing
        )
        return OutputPlan(
            original=original,
            resized=resized,
            fast=config.fast_resize,
            rotation=row.rotation,
            record_md5=item.download_url is not None,
        )

    def item_completed(
        self, results: Outcome | None, item: Any, info: MediaPipeline.SpiderInfo
    ) -> SuccessRow | FailureRow | Unrecorded:
        row = item.row
        if results is None:
            self.stats.inc_value("openimages/interrupted")
            return Unrecorded(row.image_id, "download interrupted by the stop")
        if not results.ok and item.fallback is not None:
            logger.info(
                "Stored original of %s failed verification (%s: %s); downloading it again",
                row.image_id,
                results.reason,
                results.details,
            )
            self.stats.inc_value("openimages/store_fallback")
            self.crawler.engine.crawl(item.fallback)
            return Unrecorded(row.image_id, "stored original rejected, downloading again")
        self.stats.inc_value("openimages/bytes_written", results.bytes_written)
        if item.recorded:
            if not results.ok:
                logger.warning(
                    "%s is recorded as a success but could not be rebuilt: %s: %s",
                    row.image_id,
                    results.reason,
                    results.details,
                )
            self.stats.inc_value(f"openimages/repaired/{'ok' if results.ok else 'failed'}")
            return Unrecorded(row.image_id, "already recorded; outputs rebuilt")
        fields = row.fields
        if item.download_url is not None:
            fields = with_download(fields, item.download_url, results.size or None, results.md5)
        if results.ok:
            return SuccessRow(fields, row.subset)
        assert results.reason is not None
        logger.debug("%s failed: %s: %s", row.image_id, results.reason, results.details)
        return FailureRow(fields, row.subset, results.reason, results.details)


def _timed(task: Callable[[], Outcome]) -> tuple[Outcome, float]:
    """Run ``task`` in a worker and say how long it took (the report's stage times)."""
    started = time.perf_counter()
    return task(), time.perf_counter() - started
