"""A crawl in this process, as ``scrapy crawl`` runs it: the crawler started,
the signal that stopped it noted, and its end (``run.finish``) with the exit
status this project promises: 0 only when the crawl finished, 1 with the rows
still pending after a stop, 130/143 after SIGINT/SIGTERM, 2 for a start error."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from scrapy.exceptions import UsageError

from openimages_crawler.crawl.config import open_crawl_store, records_store
from openimages_crawler.crawl.errors import ShardLocked
from openimages_crawler.crawl.pipeline import STORE_UNWRITABLE
from openimages_crawler.crawl.run import CrawlRun
from openimages_crawler.crawl.stop import STOP_REQUESTED
from openimages_crawler.dataset.selection import SelectionError, Shard
from openimages_crawler.exits import (
    EXIT_AFTER_SIGNAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    Exit,
    annotations_unwritten,
)
from openimages_crawler.monitor.dashboard import Dashboard
from openimages_crawler.monitor.extensions import CrawlProgress, RunReport
from openimages_crawler.monitor.status import mark_exit
from openimages_crawler.run.finish import Extras, finish, summarize_crawl
from openimages_crawler.store.layout import LOCKS_DIR, METADATA_DIR, STAGING_DIR, part_label
from openimages_crawler.store.lock import exclusive

if TYPE_CHECKING:
    from scrapy.crawler import Crawler, CrawlerProcess
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)
Extension = TypeVar("Extension")


class ProcessCrawl:
    """One crawl in this process (a run of its own, or one process of a supervised run)."""

    def __init__(self, process: CrawlerProcess, crawler: Crawler, given: dict[str, Any], supervised: bool) -> None:
        self.process = process
        self.crawler = crawler
        self.settings = crawler.settings
        self.given = given
        self.supervised = supervised  # its supervisor settles the run and writes its database
        self.errors: list[BaseException] = []  # why the crawl could not start
        self.received: list[int] = []  # the signals that stopped it
        self.crawl_run: CrawlRun | None = None  # the crawl's run, once its spider opened it
        self.ran = False  # it crawled as a run of its own: its database, exports and summary follow

    def run(self, extras: Extras) -> Exit:
        records = records_store(self.settings).root
        existed = records.exists()
        started = self.process.crawl(self.crawler, **self.given)
        if hasattr(started, "add_done_callback"):  # an asyncio task (the asyncio reactor)
            started.add_done_callback(lambda task: task.cancelled() or self.errors.extend(
                filter(None, [task.exception()])))
        else:  # a Deferred
            started.addErrback(lambda failure: self.errors.append(failure.value))
        note_signals(self.process, self.received)
        self.process.start()
        self.crawl_run = CrawlRun.found(self.crawler)
        if self.errors and not self.locked():
            tidy_failed_start(records, existed)
        self.ran = not self.errors and self.crawl_run is not None and not self.supervised
        return finish(self, self.settings, Extras(True, extras.formats, extras.subsets) if self.ran else Extras())

    def locked(self) -> bool:
        """The crawl did not start because another holds its shard's lock."""
        return any(isinstance(error, ShardLocked) for error in self.errors)

    def settle(self) -> Exit | None:
        """Nothing left: the spider's run settled when its engine stopped (``CrawlRun.end``)."""
        return None

    def status(self) -> Exit:
        for error in self.errors:
            if self.received:  # stopped while preparing (a metadata download, say)
                return Exit(EXIT_AFTER_SIGNAL.get(self.received[0], EXIT_INCOMPLETE),
                            f"stopped by {signal.Signals(self.received[0]).name} before the crawl started: {error}")
            if isinstance(error, UsageError):
                return Exit(EXIT_USAGE, str(error))
            logger.debug("The crawl could not start", exc_info=error)
            return Exit(EXIT_USAGE, f"the crawl could not start: {type(error).__name__}: {error} "
                        "(--loglevel DEBUG shows where)")
        stats, run = self.crawler.stats, self.crawl_run
        assert stats is not None and run is not None  # the spider opened its run
        stopped = run.stop_reason()
        if stopped is not None:
            return stopped
        reason = stats.get_value("finish_reason")
        if reason == "finished":
            errors = stats.get_value("openimages/annotation_errors", 0)
            return annotations_unwritten(errors) if errors else Exit(EXIT_OK)
        read = stats.get_value("openimages/rows_read", 0)
        unread = f", and about {max(run.rows_total - read, 0):,} rows not read yet," if run.rows_total is not None \
            else ""
        if reason == STORE_UNWRITABLE:
            pending = stats.get_value("openimages/unwritable", 0) + stats.get_value("openimages/interrupted", 0)
            return Exit(EXIT_INCOMPLETE, f"the store cannot be written ({run.store_error}): {pending:,} rows not "
                        f"stored{unread} are still pending; free space (or fix the store) and run the same command "
                        "again")
        cut = stats.get_value("openimages/interrupted", 0)
        by = f" by {signal.Signals(self.received[0]).name}" if self.received else ""
        status = EXIT_AFTER_SIGNAL.get(self.received[0], EXIT_INCOMPLETE) if self.received else EXIT_INCOMPLETE
        return Exit(status, f"the crawl was stopped{by} ({reason}): {cut:,} rows cut off in transfer{unread} "
                    "are still pending; run the same command again to finish")

    def report(self, ending: Exit) -> str | None:
        """The page the RunReport extension wrote when the crawl closed."""
        report = crawl_extension(self.crawler, RunReport) if self.ran else None
        return report.page if report is not None else None

    def summarize(self, ending: Exit, page: str | None) -> None:
        progress = crawl_extension(self.crawler, CrawlProgress) if self.ran else None
        if progress is None:
            return
        dashboard = crawl_extension(self.crawler, Dashboard)
        summarize_crawl(self.settings, progress.meter.latest, ending, page,
                        dashboard.address if dashboard else None)

    def record(self, ending: Exit) -> None:
        """The exit in the process's record; a Scrapyd job that could not start
        leaves its error in its shard's record (Scrapyd reports no exit status,
        and a fleet reads the store), unless another run holds that shard."""
        job = str(self.given.get("_job", ""))
        run = self.crawl_run
        if run is not None and run.part and not self.errors:
            mark_exit(run.record_store, run.part, ending.status, ending.message, job)
        elif not self.locked():
            record_job_error(self.settings, self.given, ending)

    def release(self) -> None:
        """Nothing: the spider's run released its lock when its engine stopped."""


def note_signals(process: CrawlerProcess, received: list[int]) -> None:
    """Note which signal stopped the crawl (for the exit status); Scrapy's
    handler does the stopping."""
    shutdown = process._signal_shutdown  # Scrapy installs it at start-up

    def noting(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:  # a metadata download before the crawl gives up too; only once: Event.set
            STOP_REQUESTED.set()  # takes a lock, which a second signal landing inside it would wait on forever
        shutdown(signum, frame)

    process._signal_shutdown = noting  # type: ignore[method-assign]


def record_job_error(settings: BaseSettings, given: dict[str, Any], ending: Exit) -> None:
    """A Scrapyd job's start error in its shard's record, in the store."""
    if "_job" not in given or not ending.status:
        return
    try:
        shard = Shard.parse(str(given.get("shard") or "1/1"))
        store = open_crawl_store(settings)  # the run's record: where a fleet reads it
    except (SelectionError, UsageError):
        return
    mark_exit(store, part_label(shard.index, shard.count), ending.status, ending.message, str(given["_job"]))


def crawl_extension(crawler: Crawler, kind: type[Extension]) -> Extension | None:
    """The crawl's instance of an extension; ``None`` when it is off."""
    return next((extension for extension in crawler.extensions.middlewares if isinstance(extension, kind)), None)


def tidy_failed_start(records: Path, existed: bool) -> None:
    """A crawl that failed before its first request leaves nothing behind but
    a partial metadata download (kept: the next run resumes it). In a store
    folder this run created: its locks, its staging and every empty folder go,
    the folder itself too when nothing is left; in a store that was there: the
    empty folders it made in the metadata cache (under the cache's lock)."""
    if not existed:
        for scaffolding in (LOCKS_DIR, STAGING_DIR):
            shutil.rmtree(records / scaffolding, ignore_errors=True)
        _remove_empty_folders(records, keep_top=False)
        return
    cache = records / METADATA_DIR
    if cache.is_dir():
        with exclusive(records, METADATA_DIR):
            _remove_empty_folders(cache, keep_top=True)


def _remove_empty_folders(top: Path, keep_top: bool) -> None:
    for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        if keep_top and folder == str(top):
            continue
        try:
            os.rmdir(folder)  # only an empty one
        except OSError:
            pass
