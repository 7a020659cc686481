"""The run object: one per crawl process (``CrawlRun.of(crawler)``), built once
from the settings and, when the spider opens it, the ``-a`` arguments.

It carries what the spider, the pipeline, the feeds and the extensions share:
the configuration, the store and the records folder, the results files, the
output sinks (one set, for the planner and the pipeline), the run's lock, the
prepared dataset with its annotations, and why the run stopped short, as
values the command reads for the exit status. No component reads another's
attributes.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import UsageError

from openimages_crawler.checkpoint import settle
from openimages_crawler.checkpoint.csvfiles import read_csv_header
from openimages_crawler.checkpoint.ledger import ResultsLedger
from openimages_crawler.checkpoint.parts import all_results, recover_all
from openimages_crawler.checkpoint.planner import PlannedOutput, RowPlanner
from openimages_crawler.crawl.config import (
    CrawlConfig,
    check_store,
    open_crawl_store,
    originals_sink,
    output_sinks,
    records_store,
    results_files,
)
from openimages_crawler.crawl.errors import ShardLocked
from openimages_crawler.crawl.politeness import crawl_user_agent
from openimages_crawler.crawl.processes import process_share, supervisor_pid
from openimages_crawler.crawl.stop import STOP_REQUESTED
from openimages_crawler.dataset.annotation_index import (
    AnnotationIndex,
    SampleAnnotations,
)
from openimages_crawler.dataset.annotations import ClassNames, CopyStopped
from openimages_crawler.dataset.catalogue import (
    ANNOTATION_KINDS,
    ATTRIBUTE_NAMES_FILE,
    DOWNLOAD_COLUMNS,
    FAILURE_COLUMNS,
    IMAGE_SIZE_COLUMNS,
)
from openimages_crawler.dataset.masks import StoredMasks
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.dataset.selection import Selection
from openimages_crawler.dataset.source import ImageSource
from openimages_crawler.exits import (
    Exit,
    lock_lost,
    metadata_unreadable,
    results_unsent,
)
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.job.prepare import (
    DatasetPlan,
    MetadataOptions,
    prepare,
    selection_of,
)
from openimages_crawler.outputs.annotations import AnnotationOutput
from openimages_crawler.outputs.containers import PackSink
from openimages_crawler.outputs.database import write_pending
from openimages_crawler.outputs.formats import FILES
from openimages_crawler.outputs.sinks import OutputSink
from openimages_crawler.store.base import RunLock, Store
from openimages_crawler.store.layout import METADATA_DIR, part_label
from openimages_crawler.store.lock import StoreLocked, exclusive

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

_RUNS: weakref.WeakKeyDictionary[Crawler, CrawlRun] = weakref.WeakKeyDictionary()


class CrawlRun:
    """A crawl process's run: what its components share, and its end."""

    def __init__(self, settings: BaseSettings) -> None:
        self.settings = settings
        self.config = CrawlConfig.from_settings(settings)
        self.store = open_crawl_store(settings)  # the images, the report, a fleet's records
        self.records = records_store(settings)  # results, parts, locks, the metadata cache
        self.files = results_files(settings)
        self.supervisor = supervisor_pid()  # a supervised process leaves the run's end to its supervisor
        self.lock: RunLock | None = None
        self.given: dict[str, Any] = {}  # the -a arguments as given, for the report
        self.job = ""  # a scheduler's job id (Scrapyd's _job), for the record
        self.part = ""  # this process's label in part files and records ("" until the spider opens the run)
        self.rows_total: int | None = None  # rows the crawl will handle, estimated (progress)
        self.prepare_seconds = 0.0
        self.recorded_columns: tuple[str, ...] = ()  # the results' own columns (columns_to_record)
        self.labelled: SampleAnnotations | None = None  # the labels and boxes container samples carry
        self.annotations: AnnotationOutput | None = None
        # Why the run stopped short, each said by the exit status (none: it ran to its end).
        self.metadata_error = ""  # the metadata could not be read to its end
        self.lost_lock = ""  # the bucket's lease of the shard lapsed
        self.results_error = ""  # the results could not be settled in the store
        self.store_error = ""  # the store could not take more files

    @classmethod
    def of(cls, crawler: Crawler) -> CrawlRun:
        """The crawler's run, made by whichever component asks first."""
        run = _RUNS.get(crawler)
        if run is None:
            run = _RUNS[crawler] = cls(crawler.settings)
        return run

    @classmethod
    def found(cls, crawler: Crawler) -> CrawlRun | None:
        """The crawler's run, if one was made (a crawl that failed at its start may have none)."""
        return _RUNS.get(crawler)

    @cached_property
    def sinks(self) -> dict[str, OutputSink]:
        """Each resized output's sink, by folder (the planner's and the pipeline's)."""
        return output_sinks(self.config, self.store, self.records)

    @cached_property
    def originals(self) -> PackSink | None:
        """The originals' container sink; ``None`` when they are files."""
        return originals_sink(self.config, self.store, self.records)

    @property
    def patterns(self) -> list[str]:
        return self.files["success"] + self.files["failure"]

    @property
    def shard(self) -> tuple[int, int]:
        """The shard this run crawls, as (K, N); an unsharded run is 1 of 1."""
        return self.arguments.shard_numbers

    @property
    def record_store(self) -> Store:
        """Where this process keeps its record (``monitor.status``): the run's own
        goes to the store, where a fleet reads it; a supervised process's stays
        in the records folder, for its supervisor."""
        return self.store if self.supervisor is None else self.records

    @property
    def input_header(self) -> list[str]:
        """The input's columns, and DOWNLOAD_COLUMNS where the image may come from elsewhere."""
        return self.dataset.header + (list(DOWNLOAD_COLUMNS) if self.source.records_download else [])

    @property
    def result_header(self) -> list[str]:
        """The columns of the results files (failure files add FAILURE_COLUMNS)."""
        return self.input_header + list(self.recorded_columns)

    def columns_to_record(self) -> tuple[str, ...]:
        """The results' own columns: the original's upright size and OPENIMAGES_HASHES;
        none in a store whose results files were written before they existed (they
        keep their columns: its rows are recorded without them, said once)."""
        wanted = (*IMAGE_SIZE_COLUMNS, *self.config.hashes)
        clash = [column for column in wanted if column in self.input_header]
        if clash:
            raise MetadataError(f"the metadata has the columns {', '.join(clash)}, which the results record "
                                "themselves: rename them in the metadata (or drop them from OPENIMAGES_HASHES)")
        for kind, patterns in self.files.items():
            for path in all_results(patterns):
                found = read_csv_header(path)
                if found and found == self.input_header + (list(FAILURE_COLUMNS) if kind == "failure" else []):
                    if self.config.hashes:
                        raise MetadataError(f"{path} predates the results' own columns: OPENIMAGES_HASHES cannot "
                                            "be recorded in this store; use another IMAGES_STORE, or drop it")
                    logger.warning("%s predates the columns %s: this store's results do not record them "
                                   "(a new store does)", path, ", ".join(wanted))
                    return ()
        return wanted

    def open(self, arguments: CrawlArguments, given: dict[str, Any], job: str,
             on_lost: Callable[[str], None]) -> None:
        """Before the crawl: the selection checked, this process's share, the
        run's lock (unless a supervisor holds it), the dataset prepared, the
        results read; a mistake is a ``UsageError``, the lock held by another
        run ``ShardLocked``."""
        started = time.perf_counter()
        self.arguments, self.given, self.job = arguments, given, job
        self.source = ImageSource(arguments.source, self.config.cvdf_url, self.config.thumbnails_300k)
        try:
            selection = selection_of(arguments)  # id lists: a usage error leaves no trace
        except ArgumentError as exc:
            raise UsageError(str(exc)) from None
        if not self.files["success"] or not self.files["failure"]:
            raise UsageError(
                "FEEDS has no per-subset results feeds (URIs with %(subset)s for SuccessRow and FailureRow): "
                "they are the crawl's record and checkpoint (under Scrapyd, leave items_dir empty)")
        check_store(self.store)
        selection.share = share = process_share()  # a supervised process's share of the run
        self.part = part_label(share.index, share.count) if share else part_label(*self.shard)
        if self.supervisor is None:  # a supervised process shares its run's lock
            self.take_lock(on_lost)
        try:
            self.prepare(selection)
        except BaseException:
            self.release()
            raise
        self.prepare_seconds = time.perf_counter() - started  # metadata and selection work

    def take_lock(self, on_lost: Callable[[str], None]) -> None:
        self.lock = self.store.run_lock(self.records.root, *self.shard, on_lost=on_lost)
        try:
            self.lock.acquire()
        except StoreLocked as exc:
            raise ShardLocked(str(exc)) from None
        except OSError as exc:  # the bucket answered the check, then failed
            raise UsageError(f"cannot take the shard's lock in {self.store.uri}: {exc}") from None

    def prepare(self, selection: Selection) -> None:
        """The dataset, what earlier runs recorded, and where annotations go."""
        config = self.config
        cache = Path(str(self.settings.get("OPENIMAGES_METADATA_DIR") or self.records.root / METADATA_DIR))
        options = MetadataOptions(cache=cache, url=config.metadata_url, verify=config.metadata_verify,
                                  keep_archives=config.keep_archives, max_row_bytes=config.max_row_bytes,
                                  stop=STOP_REQUESTED, user_agent=crawl_user_agent(self.settings))
        try:
            with exclusive(cache.parent, METADATA_DIR, STOP_REQUESTED):  # fetched once per cache
                self.dataset: DatasetPlan = prepare(self.arguments, options, selection)
                self.labelled = self.index_annotations()
        except ArgumentError as exc:
            raise UsageError(str(exc)) from exc
        if self.supervisor is None:  # a supervisor pulls for its processes
            try:
                settle.pull_results(self.store, self.records, self.patterns, STOP_REQUESTED)
            except (OSError, StoreLocked) as exc:
                raise UsageError(f"cannot read the results from {self.store.uri}: {exc}") from None
        self.planner = self.make_planner()
        self.annotations = self.annotation_output()

    def make_planner(self) -> RowPlanner:
        """What earlier runs recorded, read before the crawl, so a store that does
        not fit this metadata is a clear error (and a non-zero exit)."""
        try:
            with exclusive(self.records.root, "results"):
                recover_all(self.patterns)
                self.recorded_columns = self.columns_to_record()
                self.ledger = ResultsLedger.load(self.files, self.result_header, self.arguments.retry)
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc
        share = self.dataset.selection.share
        recorded = self.ledger.described(self.arguments.retry is not None)
        if recorded and (share is None or share.index == 1):  # the run's processes all read the same files
            logger.info("%s", recorded)
        config = self.config
        outputs = tuple(PlannedOutput(output.dir, self.sinks[output.dir], output.spec.format)
                        for output in config.outputs)
        return RowPlanner(self.ledger, self.store, config.layout, outputs, self.source,
                          save_originals=config.save_originals, check_md5_if_exists=config.check_md5_if_exists,
                          originals=self.originals, recorded_columns=self.recorded_columns)

    def index_annotations(self) -> SampleAnnotations | None:
        """What the outputs carry when annotations are written: each image's
        annotations of every kind written, looked up in their files indexed by
        image (for packs' samples, and for the masks of files outputs)."""
        config, dataset, kinds = self.config, self.dataset, self.arguments.kinds
        containers = {output.container for output in config.outputs} | {config.originals_container}
        if not dataset.annotation_files or not kinds or (containers == {FILES} and "masks" not in kinds):
            return None
        assert dataset.class_names is not None
        if containers == {FILES}:
            kinds = ("masks",)  # files outputs carry only masks (the other kinds stay in the files beside them)
        try:
            indexes = {kind: {split: AnnotationIndex.of(paths, STOP_REQUESTED, kind=ANNOTATION_KINDS[kind])
                              for (each, split), paths in dataset.annotation_files.items() if each == kind}
                       for kind in kinds}
            classes = ClassNames.load(dataset.class_names)
            attributes = {mid: name for path in dataset.extras if path.name == ATTRIBUTE_NAMES_FILE
                          for mid, name in ClassNames.load(path).names.items()}
        except (MetadataError, OSError) as exc:
            raise ArgumentError(f"cannot index the annotations: {exc}") from exc
        except CopyStopped:
            raise ArgumentError("stopped while indexing the annotations") from None
        masks = StoredMasks(self.store, config.layout, dataset.masks) if dataset.masks is not None else None
        return SampleAnnotations(indexes, classes, self.label_names(), masks, attributes)

    def label_names(self) -> frozenset[str] | None:
        """The classes the annotations keep: the requested ones, or all (``None``)."""
        if self.dataset.class_filter is not None and self.arguments.only_matching:
            return self.dataset.class_filter.label_names
        return None

    def annotation_output(self) -> AnnotationOutput | None:
        """Where the selection's annotation rows go; in a multi-process run the
        first process writes them for the whole run (the file is then the same
        as one process would write)."""
        dataset = self.dataset
        if not (dataset.annotation_files and self.arguments.write_annotations):
            return None
        share = dataset.selection.share
        if share is not None and share.index > self.shard[1]:
            return None
        written = {key: paths for key, paths in dataset.annotation_files.items() if key[0] in self.arguments.kinds}
        return AnnotationOutput(self.store, self.records, written, self.label_names(), dataset.class_names,
                                extras=dataset.extras, masks=dataset.masks, layout=self.config.layout)

    def end(self, in_flight: list[tuple[dict[str, str], str]]) -> None:
        """After the results are flushed: the rows still in flight become this
        process's pending list (the database's ``pending`` rows); this run's
        parts are merged into the store's results (a retried row that has a new
        result leaves its old failure row), unless a supervisor does it or the
        lock was lost (another run may own the parts now); the lock is released."""
        reconcile_failures = self.arguments.retry is not None or self.ledger.needs_reconcile
        if self.dataset.masks is not None:  # every image and the annotations are done with the zips
            self.dataset.masks.close()
        try:
            write_pending(self.records.root, self.part, self.dataset.header, in_flight)
        except OSError as exc:
            logger.warning("Cannot write the list of pending rows: %s", exc)
        try:
            if self.supervisor is None and not self.lost_lock:
                self.settle(reconcile_failures)
        finally:
            self.release()

    def settle(self, reconcile_failures: bool) -> None:
        """This run's parts merged into the store's results files (the exit status says when they could not be)."""
        try:
            settle.settle_results(self.store, self.records, self.files, *self.shard,
                                  reconcile_failures=reconcile_failures, min_free_bytes=self.config.min_free_bytes)
        except (OSError, StoreLocked) as exc:
            logger.error("Cannot settle the results in %s: %s", self.store.uri, exc)
            self.results_error = str(exc)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def stop_reason(self) -> Exit | None:
        """The exit of a run that stopped short for a reason of its own, else ``None``."""
        if self.metadata_error:
            return metadata_unreadable(self.metadata_error)
        if self.lost_lock:
            return lock_lost(self.lost_lock)
        if self.results_error:
            return results_unsent(self.results_error)
        return None
