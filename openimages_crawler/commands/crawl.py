"""``scrapy crawl``, with the errors and the exit status this project promises.

Scrapy's own command lets a start error surface as "Task exception was never
retrieved" and a traceback, and exits 0 after a stopped crawl. Here a usage
mistake is one line on stderr and exit 2, before anything is downloaded or
written; the exit status is 0 only when the crawl finished, and a stop says
how many rows are still pending (130 after SIGINT, 143 after SIGTERM).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from openimages_crawler.crawl.config import (
    CrawlConfig,
    check_store,
    isolate_shard_records,
    open_crawl_store,
    records_store,
)
from openimages_crawler.crawl.errors import ShardLocked
from openimages_crawler.crawl.feeds import results_files
from openimages_crawler.crawl.pipeline import STORE_UNWRITABLE
from openimages_crawler.crawl.processes import (
    die_with_supervisor,
    plan_processes,
    process_count,
    supervisor_pid,
)
from openimages_crawler.crawl.spider import OpenImagesSpider, scrapy_arguments
from openimages_crawler.crawl.stop import STOP_REQUESTED
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.job.prepare import selection_of
from openimages_crawler.dataset.selection import SelectionError, Shard
from openimages_crawler.exits import (
    EXIT_AFTER_SIGNAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    Exit,
    fail,
    last_error,
    results_unsent,
)
from openimages_crawler.monitor.dashboard import Dashboard
from openimages_crawler.monitor.extensions import CrawlProgress, RunReport
from openimages_crawler.monitor.logs import quiet_framework
from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.status import mark_exit
from openimages_crawler.monitor.summary import RunEnd, closing_summary
from openimages_crawler.redact import redacted_argv
from openimages_crawler.run.database import database_path, run_database
from openimages_crawler.run.export import default_output, run_export
from openimages_crawler.run.supervisor import Supervisor
from openimages_crawler.store.layout import LOCKS_DIR, METADATA_DIR, STAGING_DIR
from openimages_crawler.checkpoint.ledger import existing
from openimages_crawler.store.lock import exclusive
from openimages_crawler.store.layout import part_label

if TYPE_CHECKING:
    import argparse

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)
Extension = TypeVar("Extension")



class Command(ScrapyCrawlCommand):
    exports: tuple[tuple[str, ...], list[str]] = ((), [])  # -a export's formats, and the subsets crawled

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        quiet_framework(self.settings)  # before the crawler process logs its banner

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            super().run(args, opts)  # Scrapy's own usage errors
            return
        assert self.crawler_process is not None and self.settings is not None
        supervisor = supervisor_pid()
        if supervisor is not None:
            die_with_supervisor(supervisor)
        elif "_job" in opts.spargs:  # a Scrapyd job: it stops when its daemon is killed (a fleet reschedules it)
            die_with_supervisor(os.getppid())
        try:
            self.check(args[0], opts.spargs)
            processes = process_count(self.settings["OPENIMAGES_PROCESSES"])
        except UsageError as exc:
            self.exitcode = fail(str(exc), EXIT_USAGE)
            self.record_job_error(opts.spargs)
            return
        if processes > 1 and supervisor is None and args[0] == OpenImagesSpider.name:
            plan = plan_processes(self.settings, processes)
            if plan.count > 1:
                supervising = Supervisor(self.settings, args[0], opts.spargs, plan)
                ending = self.after_crawl(supervising.run(), supervising.database_ok)
                if supervising.final is not None:
                    self.summarize(supervising.final, ending, supervising.report_page,
                                   supervising.dashboard.address if supervising.dashboard else None)
                self.exitcode = ending.said()
                return
        records = records_store(self.settings).root
        existed = records.exists()
        crawler = self._create_crawler(args[0])
        started = self.crawler_process.crawl(crawler, **opts.spargs)
        errors: list[BaseException] = []
        if hasattr(started, "add_done_callback"):  # an asyncio task (the asyncio reactor)
            started.add_done_callback(lambda task: task.cancelled() or errors.extend(filter(None, [task.exception()])))
        else:  # a Deferred
            started.addErrback(lambda failure: errors.append(failure.value))
        received: list[int] = []
        self.record_signals(received)
        self.crawler_process.start()
        ran = supervisor is None and not errors and isinstance(crawler.spider, OpenImagesSpider)
        floor = self.settings.getint("OPENIMAGES_MIN_FREE_BYTES")
        database_ok = run_database(self.settings, floor) if ran else True  # before the closing summary
        ending = self.exit_status(crawler, errors, received)
        if errors and not any(isinstance(error, ShardLocked) for error in errors):
            tidy_failed_start(records, existed)
        if ran:
            ending = self.after_crawl(ending, database_ok)
            progress, run_report = crawl_extension(crawler, CrawlProgress), crawl_extension(crawler, RunReport)
            dashboard = crawl_extension(crawler, Dashboard)
            if progress is not None:
                self.summarize(progress.meter.latest, ending, run_report.page if run_report else None,
                               dashboard.address if dashboard else None)
        self.exitcode = ending.said()
        spider = crawler.spider
        if isinstance(spider, OpenImagesSpider) and hasattr(spider, "results_part"):
            mark_exit(spider.record_store, spider.results_part, self.exitcode, ending.message,
                      str(opts.spargs.get("_job", "")))
        elif not any(isinstance(error, ShardLocked) for error in errors):  # the holder keeps its record
            self.record_job_error(opts.spargs)

    def summarize(self, final: Counts, ending: Exit, report: str | None, dashboard: str | None) -> None:
        """Log the run's closing summary (before its error line, if any)."""
        assert self.settings is not None
        store = open_crawl_store(self.settings)
        files = results_files(self.settings)
        database = database_path(self.settings)
        logger.info("%s", closing_summary(RunEnd(
            counts=final, finished=ending.status == EXIT_OK, store=store.uri,
            results=[str(path) for path in existing(files["success"] + files["failure"])],
            command=" ".join(["scrapy", "crawl", *map(shlex.quote, redacted_argv(sys.argv[1:]))]),  # without "crawl"
            report=report,
            database=str(database) if database is not None else None, dashboard=dashboard)))

    def record_job_error(self, given: dict[str, Any]) -> None:
        """A Scrapyd job that could not start leaves its error in its shard's
        record: Scrapyd reports no exit status, and a fleet reads the store."""
        assert self.settings is not None
        if "_job" not in given or not self.exitcode:
            return
        try:
            shard = Shard.parse(str(given.get("shard") or "1/1"))
            store = open_crawl_store(self.settings)  # the run's record: where a fleet reads it
        except (SelectionError, UsageError):
            return
        mark_exit(store, part_label(shard.index, shard.count), self.exitcode, last_error(), str(given["_job"]))

    def check(self, spider_name: str, given: dict[str, Any]) -> None:
        """What can be checked before the crawl starts, without touching the store."""
        assert self.settings is not None
        if spider_name != OpenImagesSpider.name:
            return
        try:
            arguments = CrawlArguments.from_given(scrapy_arguments(dict(given))[1])
            selection_of(arguments)  # id lists too
        except ArgumentError as exc:
            raise UsageError(str(exc)) from None
        CrawlConfig.from_settings(self.settings)  # the settings' own checks
        store = open_crawl_store(self.settings)
        check_store(store)
        if arguments.exports and store.remote:
            raise UsageError("-a export writes label files beside the images, in a folder store: run "
                             "scrapy export on a folder copy of this store instead")
        self.exports = (arguments.exports, list(arguments.splits))
        if supervisor_pid() is None:  # a supervised process has its supervisor's settings
            isolate_shard_records(self.settings, arguments.shard)

    def after_crawl(self, ending: Exit, database_ok: bool) -> Exit:
        """What follows a crawl that ran (its database, OPENIMAGES_DATABASE, is
        updated by then): ``-a export``'s label files, once it finished (a
        stopped crawl exports on the rerun that finishes it)."""
        if ending.status != EXIT_OK:
            return ending
        assert self.settings is not None
        formats, subsets = self.exports
        if formats:
            store = records_store(self.settings).root
            if run_export(store, self.settings, formats, subsets, default_output(self.settings), None):
                return Exit(EXIT_INCOMPLETE, "the crawl finished but its labels could not all be exported (see the "
                            "log); run scrapy export to try again")
        if not database_ok:
            return Exit(EXIT_INCOMPLETE, "the crawl finished but its database could not be updated (see the log); "
                        "run scrapy db to try again")
        return ending

    def record_signals(self, received: list[int]) -> None:
        """Note which signal stopped the crawl (for the exit status); Scrapy's
        handler does the stopping."""
        process = self.crawler_process
        assert process is not None
        shutdown = process._signal_shutdown  # Scrapy installs it at start-up

        def noting(signum: int, frame: Any) -> None:
            received.append(signum)
            if len(received) == 1:  # a metadata download before the crawl gives up too; only once: Event.set
                STOP_REQUESTED.set()  # takes a lock, which a second signal landing inside it would wait on forever
            shutdown(signum, frame)

        process._signal_shutdown = noting  # type: ignore[method-assign]

    def exit_status(self, crawler: Crawler, errors: list[BaseException], received: list[int]) -> Exit:
        for error in errors:
            if received:  # stopped while preparing (a metadata download, say)
                return Exit(EXIT_AFTER_SIGNAL.get(received[0], EXIT_INCOMPLETE),
                            f"stopped by {signal.Signals(received[0]).name} before the crawl started: {error}")
            if isinstance(error, UsageError):
                return Exit(EXIT_USAGE, str(error))
            logger.debug("The crawl could not start", exc_info=error)
            return Exit(EXIT_USAGE, f"the crawl could not start: {type(error).__name__}: {error} "
                        "(--loglevel DEBUG shows where)")
        stats = crawler.stats
        assert stats is not None
        reason = stats.get_value("finish_reason")
        unreadable = stats.get_value("openimages/metadata_error")
        if unreadable is not None:
            return Exit(EXIT_INCOMPLETE, f"the metadata could not be read to its end ({unreadable}): the rows "
                        "after that point are still pending; fetch or fix the file and run the same command again")
        lost = stats.get_value("openimages/lock_lost")
        if lost is not None:
            return Exit(EXIT_INCOMPLETE, f"the crawl stopped: it {lost} (another crawl of this shard may have "
                        "started); the rows not recorded yet are still pending: run the same command again once "
                        "that one ends")
        unsent = stats.get_value("openimages/results_error")
        if unsent is not None:
            return results_unsent(unsent)
        if reason == "finished":
            return Exit(EXIT_OK)
        read = stats.get_value("openimages/rows_read", 0)
        total = getattr(crawler.spider, "rows_total", None)
        unread = f", and about {max(total - read, 0):,} rows not read yet," if total is not None else ""
        if reason == STORE_UNWRITABLE:
            pending = stats.get_value("openimages/unwritable", 0) + stats.get_value("openimages/interrupted", 0)
            return Exit(EXIT_INCOMPLETE, f"the store cannot be written ({stats.get_value('openimages/store_error')}): "
                        f"{pending:,} rows not stored{unread} are still pending; free space (or fix the "
                        "store) and run the same command again")
        cut = stats.get_value("openimages/interrupted", 0)
        by = f" by {signal.Signals(received[0]).name}" if received else ""
        status = EXIT_AFTER_SIGNAL.get(received[0], EXIT_INCOMPLETE) if received else EXIT_INCOMPLETE
        return Exit(status, f"the crawl was stopped{by} ({reason}): {cut:,} rows cut off in transfer{unread} "
                    "are still pending; run the same command again to finish")


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
