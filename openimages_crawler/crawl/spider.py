"""The ``openimages`` spider: metadata rows in, image requests and results out.

Thin Scrapy glue: the ``-a`` arguments become a ``CrawlArguments``, the run
object (``crawl.run``) prepares the dataset, takes the lock and builds the
``RowPlanner``, and the spider streams the selected rows, asking the planner
what each needs. Rows are turned into work lazily (the documented back-out
pattern), so memory does not grow with the row count. Each row ends as
exactly one results row across any number of runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy import signals
from scrapy.exceptions import UsageError
from scrapy.http import Request, Response
from scrapy.utils.defer import _schedule_coro, maybe_deferred_to_future
from twisted.internet import threads
from twisted.python.failure import Failure

from openimages_crawler.checkpoint.planner import RowPlan
from openimages_crawler.checkpoint.results import ResultRow
from openimages_crawler.crawl.items import (
    ALREADY_RECORDED,
    PLAN_KEY,
    FetchedImage,
    Unrecorded,
    request_meta,
)
from openimages_crawler.crawl.run import CrawlRun
from openimages_crawler.dataset.rows import MetadataError, validate_row
from openimages_crawler.dataset.selection import MetadataRecord
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments

logger = logging.getLogger(__name__)

# Rows handled between two returns to the event loop while skipping done rows.
_YIELD_EVERY = 256


def scrapy_arguments(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spider arguments for Scrapy (its own, and those a scheduler adds,
    such as Scrapyd's ``_job``), and the rest: the crawl's ``-a`` arguments."""
    for_scrapy = {name: value for name, value in kwargs.items()
                  if name in ("name", "start_urls") or name.startswith("_")}
    return for_scrapy, {name: value for name, value in kwargs.items() if name not in for_scrapy}


class OpenImagesSpider(scrapy.Spider):
    name = "openimages"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        scrapy_kwargs, given = scrapy_arguments(kwargs)
        super().__init__(*args, **scrapy_kwargs)
        try:
            self.arguments = CrawlArguments.from_given(given)
        except ArgumentError as exc:
            raise UsageError(str(exc)) from None
        self.given = given  # the -a arguments as given, for the report
        self.job = str(scrapy_kwargs.get("_job") or "")  # a scheduler's job id (Scrapyd's)
        # Rows whose image was asked for and that have no results row yet: pending if the run stops.
        self.in_flight: dict[tuple[str, str], dict[str, str]] = {}

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> OpenImagesSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.run = CrawlRun.of(crawler)
        spider.run.open(spider.arguments, spider.given, spider.job, spider.lose_lock)
        # Held until the engine has stopped: results and report are written by then.
        crawler.signals.connect(spider.finish, signal=signals.engine_stopped)
        crawler.signals.connect(spider.landed, signal=signals.item_scraped)
        return spider

    def count_rows(self) -> None:
        """The run's ``rows_total`` for the progress display (in a thread)."""
        try:
            self.run.rows_total = self.run.dataset.estimate_rows()
        except Exception as exc:  # noqa: BLE001 - a broken .gz, say: progress goes without a total
            logger.debug("Cannot count the metadata rows: %s", exc)

    def plan_line(self) -> str:
        """What this crawl will do, in one line: source, selection, store, outputs, process."""
        arguments, run = self.arguments, self.run
        source = (f"Open Images V{arguments.version} {arguments.subset or 'all'}" if arguments.version
                  else str(arguments.metadata))
        given = {name: value for name, value in self.given.items()
                 if name not in ("version", "subset", "metadata") and not name.startswith("_")}
        share = run.dataset.selection.share
        process = f"; process {share.index} of {share.count}" if share is not None else "; 1 process"
        selection = ", ".join(f"{name}={value}" for name, value in sorted(given.items())) or "every row"
        return (f"Crawling {source} ({selection}) from {arguments.source} URLs into {run.store.uri}: "
                f"{', '.join(run.config.described_outputs())}{process}")

    async def start(self) -> AsyncIterator[Any]:
        stats, run = self.crawler.stats, self.run
        logger.info("%s", self.plan_line())
        stats.set_value("openimages/time/prepare_s", round(run.prepare_seconds, 2))
        threading.Thread(target=self.count_rows, name="openimages-count-rows", daemon=True).start()
        subset = self.arguments.subset
        handled = 0
        selection = run.dataset.selection
        for fields, problem, file_subset in self.readable_records():
            row_subset = subset or file_subset
            if run.annotations is not None:
                run.annotations.add(fields.get("Subset") or row_subset, fields.get("ImageID", ""))
            if not selection.in_share(fields.get("ImageID", "")):
                continue  # another process of this run crawls it
            handled += 1
            if handled % _YIELD_EVERY == 0:
                stats.set_value("openimages/rows_read", handled)
                await asyncio.sleep(0)
            work = run.planner.plan(validate_row(fields, problem, row_subset or None))
            if work is None:
                stats.inc_value("openimages/rows_skipped")
                continue
            if isinstance(work, RowPlan):
                while self.crawler.engine.needs_backout():
                    await self.crawler.signals.wait_for(signals.scheduler_empty)
                self.in_flight[(work.row.image_id, work.row.subset)] = work.row.fields
                work = self.image_request(work)
            yield work
        stats.set_value("openimages/rows_read", handled)
        if run.annotations is not None:
            errors = await maybe_deferred_to_future(threads.deferToThread(run.annotations.write))
            if errors:
                stats.inc_value("openimages/annotation_errors", errors)

    def readable_records(self) -> Iterator[MetadataRecord]:
        """The selected rows; a file that cannot be read to its end (a truncated
        ``.gz``) ends them after the rows before the damage, which are crawled,
        and the crawl's exit status says so (the run's ``metadata_error``)."""
        try:
            yield from self.run.dataset.records()
        except MetadataError as exc:
            logger.error("%s: the rows after it are not crawled; fetch or fix the file and run again", exc)
            self.run.metadata_error = str(exc)

    def landed(self, item: Any) -> None:
        """A row's result reached the feeds: it is no longer in flight."""
        if isinstance(item, ResultRow):
            self.in_flight.pop((item.get("ImageID", ""), item.subset), None)
        elif isinstance(item, Unrecorded) and item.why == ALREADY_RECORDED:
            for key in [key for key in self.in_flight if key[0] == item.image_id]:
                del self.in_flight[key]

    def finish(self) -> None:
        """After the results are flushed (``CrawlRun.end``)."""
        self.run.end([(fields, subset) for (_, subset), fields in self.in_flight.items()])

    def lose_lock(self, message: str) -> None:
        """The bucket's lease of this shard was lost (from its renewing thread):
        stop, as for an unwritable store; the exit status says why."""
        self.run.lost_lock = message
        from twisted.internet import reactor  # the one Scrapy installed

        reactor.callFromThread(lambda: _schedule_coro(self.crawler.engine.close_spider_async(reason="lock_lost")))

    def image_request(self, plan: RowPlan) -> Request:
        """The request for a row's image: from its URL, or from its stored original."""
        url = self.run.store.request_uri(plan.original) if plan.from_store else plan.url
        return Request(url, callback=self.parse_image, errback=self.image_failed, dont_filter=True,
                       meta=request_meta(plan))

    def closed(self, reason: str) -> None:
        if self.run.annotations is not None:
            self.run.annotations.stopping.set()

    def parse_image(self, response: Response) -> Iterator[FetchedImage]:
        yield FetchedImage(response.meta[PLAN_KEY], response=response)

    def image_failed(self, failure: Failure) -> Iterator[FetchedImage]:
        yield FetchedImage(failure.request.meta[PLAN_KEY], failure=failure)
