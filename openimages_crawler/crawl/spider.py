"""The ``openimages`` spider: metadata rows in, image requests and results out.

Thin Scrapy glue over Scrapy-free steps: the ``-a`` arguments become a
``CrawlArguments``, ``job.prepare`` fetches the metadata and builds the
selection, and a ``RowPlanner`` decides what each row needs from the results
ledger and the store. Rows are streamed and turned into work lazily (the
documented back-out pattern), so memory does not grow with the row count.
Each row ends as exactly one results row across any number of runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import scrapy
from scrapy import signals
from scrapy.exceptions import UsageError
from scrapy.http import Request, Response
from scrapy.utils.defer import _schedule_coro, maybe_deferred_to_future
from twisted.internet import threads
from twisted.python.failure import Failure

from openimages_crawler.crawl.config import (
    CrawlConfig,
    check_store,
    open_crawl_store,
    originals_sink,
    output_sinks,
    records_store,
)
from openimages_crawler.crawl.errors import ShardLocked
from openimages_crawler.crawl.feeds import results_files
from openimages_crawler.crawl.items import (
    ALREADY_RECORDED,
    PLAN_KEY,
    FetchedImage,
    Unrecorded,
    request_meta,
)
from openimages_crawler.crawl.processes import process_shard, supervisor_pid
from openimages_crawler.crawl.stop import STOP_REQUESTED
from openimages_crawler.dataset.annotation_index import (
    AnnotationIndex,
    SampleAnnotations,
)
from openimages_crawler.dataset.annotations import ClassNames, CopyStopped
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.dataset.catalogue import ANNOTATION_FILES, DOWNLOAD_COLUMNS
from openimages_crawler.job.prepare import MetadataOptions, prepare, selection_of
from openimages_crawler.dataset.rows import MetadataError, validate_row
from openimages_crawler.dataset.selection import MetadataRecord, Selection
from openimages_crawler.dataset.source import ImageSource
from openimages_crawler.store import LocalStore
from openimages_crawler.outputs.annotations import AnnotationOutput
from openimages_crawler.store.base import Store
from openimages_crawler.outputs.database import write_pending
from openimages_crawler.store.layout import METADATA_DIR
from openimages_crawler.checkpoint.ledger import ResultsLedger
from openimages_crawler.store.lock import StoreLocked, exclusive
from openimages_crawler.store.objects import ObjectStore
from openimages_crawler.checkpoint import settle
from openimages_crawler.checkpoint.parts import recover_all
from openimages_crawler.store.layout import part_label
from openimages_crawler.checkpoint.planner import PlannedOutput, RowPlan, RowPlanner
from openimages_crawler.checkpoint.results import ResultRow

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
        self.rows_total: int | None = None  # rows the crawl will handle, estimated (progress)
        self.sample_annotations: SampleAnnotations | None = None  # labels and boxes for shard samples
        # Rows whose image was asked for and that have no results row yet: pending if the run stops.
        self.in_flight: dict[tuple[str, str], dict[str, str]] = {}

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> OpenImagesSpider:
        started = time.perf_counter()
        spider = super().from_crawler(crawler, *args, **kwargs)
        config = spider.config = CrawlConfig.from_settings(crawler.settings)
        spider.store = open_crawl_store(crawler.settings)
        spider.source = ImageSource(spider.arguments.source, config.cvdf_url, config.thumbnails_300k)
        try:
            selection = selection_of(spider.arguments)  # id lists: a usage error leaves no trace
        except ArgumentError as exc:
            raise UsageError(str(exc)) from None
        files = spider.results_files()
        if not files["success"] or not files["failure"]:
            raise UsageError(
                "FEEDS has no per-subset results feeds (URIs with %(subset)s for SuccessRow and FailureRow): "
                "they are the crawl's record and checkpoint (under Scrapyd, leave items_dir empty)")
        check_store(spider.store)
        selection.within = process_shard()  # a supervised process's share of the run
        share = selection.within
        spider.results_part = part_label(share.index, share.count) if share else part_label(*spider.shard)
        spider.supervisor = supervisor_pid()
        spider.lock = None
        spider.lost_lock = ""  # why the run's bucket lease was lost, if it was
        if spider.supervisor is None:  # a supervised process shares its run's lock
            spider.lock = spider.store.run_lock(spider.local_store.root, *spider.shard, on_lost=spider.lose_lock)
            try:
                spider.lock.acquire()
            except StoreLocked as exc:
                raise ShardLocked(str(exc)) from None
            except OSError as exc:  # the bucket answered the check, then failed
                raise UsageError(f"cannot take the shard's lock in {spider.store.uri}: {exc}") from None
        # Held until the engine has stopped: results and report are written by then.
        crawler.signals.connect(spider.finish, signal=signals.engine_stopped)
        crawler.signals.connect(spider.landed, signal=signals.item_scraped)
        try:
            spider.prepare(selection)
        except BaseException:
            spider.release()
            raise
        spider.prepare_seconds = time.perf_counter() - started  # metadata and selection work
        return spider

    def prepare(self, selection: Selection) -> None:
        """The dataset, what earlier runs recorded, and where annotations go."""
        config = self.config
        cache = Path(str(self.crawler.settings.get("OPENIMAGES_METADATA_DIR") or self.local_store.root / METADATA_DIR))
        options = MetadataOptions(
            cache=cache,
            url=config.metadata_url,
            verify=config.metadata_verify,
            keep_archives=config.keep_archives,
            max_row_bytes=config.max_row_bytes,
            stop=STOP_REQUESTED,
        )
        try:
            with exclusive(cache.parent, METADATA_DIR, STOP_REQUESTED):  # fetched once per cache
                self.dataset = prepare(self.arguments, options, selection)
                self.sample_annotations = self.index_annotations()
        except ArgumentError as exc:
            raise UsageError(str(exc)) from exc
        if self.supervisor is None:  # a supervisor pulls for its processes
            self.pull_results()
        self.planner = self.make_planner()
        self.annotations = self.annotation_output()

    def pull_results(self) -> None:
        """The store's results files and parts into the records folder (the ledger reads them there)."""
        try:
            settle.pull_results(self.store, self.local_store, self.result_patterns(), STOP_REQUESTED)
        except (OSError, StoreLocked) as exc:
            raise UsageError(f"cannot read the results from {self.store.uri}: {exc}") from None

    def result_patterns(self) -> list[str]:
        files = self.results_files()
        return files["success"] + files["failure"]

    @cached_property
    def local_store(self) -> LocalStore:
        """The local folder of the crawl's records (results, locks, status, metadata
        cache): the store itself, or an object store's work folder."""
        return records_store(self.crawler.settings)

    @property
    def record_store(self) -> Store:
        """Where this process keeps its record (``monitor.status``): the run's own
        record goes to the store, where a fleet reads it; a supervised process's
        stays in the work folder, for its supervisor."""
        return self.store if self.supervisor is None else self.local_store

    @property
    def result_header(self) -> list[str]:
        """The columns of the results files (failure files add FAILURE_COLUMNS)."""
        return self.dataset.header + (list(DOWNLOAD_COLUMNS) if self.source.records_download else [])

    def make_planner(self) -> RowPlanner:
        """What earlier runs recorded, read before the crawl, so a store that does
        not fit this metadata is a clear error (and a non-zero exit)."""
        files = self.results_files()
        try:
            with exclusive(self.local_store.root, "results"):
                recover_all(files["success"] + files["failure"])
                self.ledger = ResultsLedger.load(files, self.result_header, self.arguments.retry)
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc
        within = self.dataset.selection.within
        recorded = self.ledger.described(self.arguments.retry is not None)
        if recorded and (within is None or within.index == 1):  # the run's processes all read the same files
            logger.info("%s", recorded)
        config = self.config
        sinks = output_sinks(config, self.store, self.local_store)
        outputs = tuple(PlannedOutput(output.dir, sinks[output.dir], output.spec.format) for output in config.outputs)
        return RowPlanner(
            self.ledger, self.store, config.layout, outputs, self.source,
            save_originals=config.save_originals, check_md5_if_exists=config.check_md5_if_exists,
            originals=originals_sink(config, self.store, self.local_store),
        )

    def results_files(self) -> dict[str, list[str]]:
        return results_files(self.crawler.settings)

    def index_annotations(self) -> SampleAnnotations | None:
        """What the shard samples carry when annotations are written: each image's
        labels and boxes, looked up in the annotation files indexed by image."""
        config, dataset = self.config, self.dataset
        containers = {output.container for output in config.outputs} | {config.originals_container}
        if containers == {"files"} or not (dataset.annotation_files and self.arguments.write_annotations):
            return None
        assert dataset.class_names is not None
        label_names = self.label_names()
        try:
            indexes = {key: AnnotationIndex.of(path, STOP_REQUESTED) for key, path in dataset.annotation_files.items()}
            classes = ClassNames.load(dataset.class_names)
        except (MetadataError, OSError) as exc:
            raise ArgumentError(f"cannot index the annotations: {exc}") from exc
        except CopyStopped:
            raise ArgumentError("stopped while indexing the annotations") from None
        by_kind = {kind: {split: index for (k, split), index in indexes.items() if k == kind}
                   for kind in ANNOTATION_FILES}
        return SampleAnnotations(by_kind["boxes"], by_kind["labels"], classes, label_names)

    def label_names(self) -> frozenset[str] | None:
        """The classes the annotations keep: the requested ones, or all (``None``)."""
        dataset = self.dataset
        if dataset.class_filter is not None and not self.arguments.all_labels:
            return dataset.class_filter.label_names
        return None

    def annotation_output(self) -> AnnotationOutput | None:
        """Where the selection's annotation rows go; in a multi-process run the
        first process writes them for the whole run (the file is then the same
        as one process would write)."""
        dataset = self.dataset
        if not (dataset.annotation_files and self.arguments.write_annotations):
            return None
        within = dataset.selection.within
        if within is not None and within.index > self.shard[1]:
            return None
        remote = self.store if isinstance(self.store, ObjectStore) else None
        return AnnotationOutput(self.local_store, dataset.annotation_files, self.label_names(), remote,
                                dataset.class_names)

    def count_rows(self) -> None:
        """``rows_total`` for the progress display (in a thread)."""
        try:
            self.rows_total = self.dataset.estimate_rows()
        except Exception as exc:  # noqa: BLE001 - a broken .gz, say: progress goes without a total
            logger.debug("Cannot count the metadata rows: %s", exc)

    def plan_line(self) -> str:
        """What this crawl will do, in one line: source, selection, store, outputs, process."""
        arguments, config = self.arguments, self.config
        source = (f"Open Images V{arguments.version} {arguments.subset or 'all'}" if arguments.version
                  else str(arguments.metadata))
        given = {name: value for name, value in self.given.items()
                 if name not in ("version", "subset", "metadata") and not name.startswith("_")}
        within = self.dataset.selection.within
        share = f"; process {within.index} of {within.count}" if within is not None else "; 1 process"
        selection = ", ".join(f"{name}={value}" for name, value in sorted(given.items())) or "every row"
        return (f"Crawling {source} ({selection}) from {arguments.source} URLs into {self.store.uri}: "
                f"{', '.join(config.described_outputs())}{share}")

    async def start(self) -> AsyncIterator[Any]:
        stats = self.crawler.stats
        logger.info("%s", self.plan_line())
        stats.set_value("openimages/time/prepare_s", round(self.prepare_seconds, 2))
        threading.Thread(target=self.count_rows, name="openimages-count-rows", daemon=True).start()
        subset = self.arguments.subset
        handled = 0
        selection = self.dataset.selection
        for fields, problem, file_subset in self.readable_records():
            row_subset = subset or file_subset
            if self.annotations is not None:
                self.annotations.add(fields.get("Subset") or row_subset, fields.get("ImageID", ""))
            if not selection.in_share(fields.get("ImageID", "")):
                continue  # another process of this run crawls it
            handled += 1
            if handled % _YIELD_EVERY == 0:
                stats.set_value("openimages/rows_read", handled)
                await asyncio.sleep(0)
            work = self.planner.plan(validate_row(fields, problem, row_subset or None))
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
        if self.annotations is not None:
            errors = await maybe_deferred_to_future(threads.deferToThread(self.annotations.write))
            if errors:
                stats.inc_value("openimages/annotation_errors", errors)

    def readable_records(self) -> Iterator[MetadataRecord]:
        """The selected rows; a file that cannot be read to its end (a truncated
        ``.gz``) ends them after the rows before the damage, which are crawled,
        and the crawl's exit status says so (``openimages/metadata_error``)."""
        try:
            yield from self.dataset.records()
        except MetadataError as exc:
            logger.error("%s: the rows after it are not crawled; fetch or fix the file and run again", exc)
            self.crawler.stats.set_value("openimages/metadata_error", str(exc))

    @property
    def shard(self) -> tuple[int, int]:
        """The shard this crawl runs, as (K, N); an unsharded crawl is 1 of 1."""
        shard = self.arguments.shard
        return (shard.index, shard.count) if shard else (1, 1)

    def landed(self, item: Any) -> None:
        """A row's result reached the feeds: it is no longer in flight."""
        if isinstance(item, ResultRow):
            self.in_flight.pop((item.get("ImageID", ""), item.subset), None)
        elif isinstance(item, Unrecorded) and item.why == ALREADY_RECORDED:
            for key in [key for key in self.in_flight if key[0] == item.image_id]:
                del self.in_flight[key]

    def finish(self) -> None:
        """After the results are flushed: this crawl's parts are merged into the
        results files and a retried row that has a new result leaves its old
        failure row (the files are rewritten atomically), then the store is free
        for another crawl. A supervised process leaves that to its supervisor.
        The rows still in flight are this process's pending list (the database's
        ``pending`` rows)."""
        reconcile_failures = self.arguments.retry is not None or self.ledger.needs_reconcile
        try:
            write_pending(self.local_store.root, self.results_part, self.dataset.header,
                          [(fields, subset) for (_, subset), fields in self.in_flight.items()])
        except OSError as exc:
            logger.warning("Cannot write the list of pending rows: %s", exc)
        try:
            if self.supervisor is None and not self.lost_lock:  # a lost lock: another run may own the parts now
                self.settle_results(reconcile_failures)
        finally:
            self.release()

    def settle_results(self, reconcile_failures: bool) -> None:
        """This run's parts merged into the store's results files (the exit status says when they could not be)."""
        try:
            settle.settle_results(self.store, self.local_store, self.results_files(), *self.shard,
                                  reconcile_failures=reconcile_failures, min_free_bytes=self.config.min_free_bytes)
        except (OSError, StoreLocked) as exc:
            logger.error("Cannot settle the results in %s: %s", self.store.uri, exc)
            self.crawler.stats.set_value("openimages/results_error", str(exc))

    def lose_lock(self, message: str) -> None:
        """The bucket's lease of this shard was lost (from its renewing thread):
        stop, as for an unwritable store; the exit status says why."""
        self.lost_lock = message
        self.crawler.stats.set_value("openimages/lock_lost", message)
        from twisted.internet import reactor  # the one Scrapy installed

        reactor.callFromThread(lambda: _schedule_coro(self.crawler.engine.close_spider_async(reason="lock_lost")))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def image_request(self, plan: RowPlan) -> Request:
        """The request for a row's image: from its URL, or from its stored original."""
        url = self.store.request_uri(plan.original) if plan.from_store else plan.url
        return Request(url, callback=self.parse_image, errback=self.image_failed, dont_filter=True,
                       meta=request_meta(plan))

    def closed(self, reason: str) -> None:
        if self.annotations is not None:
            self.annotations.stopping.set()

    def parse_image(self, response: Response) -> Iterator[FetchedImage]:
        yield FetchedImage(response.meta[PLAN_KEY], response=response)

    def image_failed(self, failure: Failure) -> Iterator[FetchedImage]:
        yield FetchedImage(failure.request.meta[PLAN_KEY], failure=failure)
