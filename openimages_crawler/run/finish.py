"""The end of every kind of run, written once: a crawl process's
(``run.crawl``), a supervised run's (``run.supervisor``) and a fleet watch's
(``fleet.watch``). Each says what differs (an ``Ending``); ``finish`` puts the
steps in one order and returns the exit."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass, field
from typing import Protocol

from scrapy.settings import BaseSettings

from openimages_crawler.checkpoint.ledger import existing
from openimages_crawler.crawl.config import open_crawl_store, records_store, results_files
from openimages_crawler.exits import EXIT_INCOMPLETE, EXIT_OK, Exit
from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.summary import RunEnd, closing_summary
from openimages_crawler.redact import redacted_argv
from openimages_crawler.run.database import database_path, run_database
from openimages_crawler.run.export import default_output, run_export

logger = logging.getLogger(__name__)


class Ending(Protocol):
    """What differs between the kinds of run at their end."""

    def settle(self) -> Exit | None:
        """The run's results parts merged into the store's results; the exit when they could not be."""

    def status(self) -> Exit:
        """How the run went."""

    def report(self, ending: Exit) -> str | None:
        """``report.json`` and ``report.html`` written (OPENIMAGES_REPORT); the page's path."""

    def summarize(self, ending: Exit, page: str | None) -> None:
        """The closing summary (before the exit's error line)."""

    def record(self, ending: Exit) -> None:
        """The exit in the run's record, where a fleet (or the user) reads it."""

    def release(self) -> None:
        """The run's lock given up."""


@dataclass(frozen=True)
class Extras:
    """What follows a finished crawl: its database (OPENIMAGES_DATABASE) and ``-a export``'s labels."""

    database: bool = False
    formats: tuple[str, ...] = ()
    subsets: list[str] = field(default_factory=list)


def finish(end: Ending, settings: BaseSettings, extras: Extras = Extras()) -> Exit:
    """The one end of a run: settle, update the database, judge, report and
    release the run's lock; then export, summarize and record the exit."""
    try:
        ending = end.settle()
        database_ok = run_database(settings, settings.getint("OPENIMAGES_MIN_FREE_BYTES")) if extras.database else True
        ending = ending or end.status()
        page = end.report(ending)
    finally:
        end.release()
    ending = with_extras(ending, settings, extras, database_ok)
    end.summarize(ending, page)
    end.record(ending)
    return ending


def with_extras(ending: Exit, settings: BaseSettings, extras: Extras, database_ok: bool) -> Exit:
    """``-a export``'s label files, once the crawl finished (a stopped crawl
    exports on the rerun that finishes it); the exit says when they, or the
    database, could not be written."""
    if ending.status != EXIT_OK:
        return ending
    if extras.formats:
        if run_export(records_store(settings).root, settings, extras.formats, extras.subsets, default_output(settings), None):
            return Exit(EXIT_INCOMPLETE, "the crawl finished but its labels could not all be exported (see the "
                        "log); run scrapy export to try again")
    if not database_ok:
        return Exit(EXIT_INCOMPLETE, "the crawl finished but its database could not be updated (see the log); "
                    "run scrapy db to try again")
    return ending


def summarize_crawl(settings: BaseSettings, final: Counts, ending: Exit, page: str | None,
                    dashboard: str | None) -> None:
    """A crawl's closing summary: its figures, where things are, the command to run again."""
    files = results_files(settings)
    database = database_path(settings)
    logger.info("%s", closing_summary(RunEnd(
        counts=final, finished=ending.status == EXIT_OK, store=open_crawl_store(settings).uri,
        results=[str(path) for path in existing(files["success"] + files["failure"])],
        command=" ".join(["scrapy", "crawl", *map(shlex.quote, redacted_argv(sys.argv[1:]))]),  # without "crawl"
        report=page, database=str(database) if database is not None else None, dashboard=dashboard)))
