"""Exit statuses of the project's commands (README "Exit status"), and the
one-line error that goes with a failing one: beside the FailureReason codes
(``reasons``), at the bottom of the layers, so that any run logic can end with
one. No Scrapy import."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # the crawl could not finish: rows are still pending
EXIT_USAGE = 2  # a usage mistake or a start error: nothing was crawled
EXIT_AFTER_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def fail(message: str, status: int) -> int:
    """One line on stderr, and the exit status."""
    sys.stderr.write(f"ERROR: {message}\n")
    sys.stderr.flush()
    return status


@dataclass(frozen=True)
class Exit:
    """A crawl's exit status and its one-line error, said once the crawl's
    closing summary is out (the error stays the last line)."""

    status: int
    message: str = ""

    def said(self) -> int:
        """Write the error line, if any; the status."""
        return fail(self.message, self.status) if self.message else self.status


def results_unsent(cause: object) -> Exit:
    """The exit of a run whose results parts could not be merged into the store's results files."""
    return Exit(EXIT_INCOMPLETE, f"the results could not be merged into the store ({cause}): it keeps the earlier "
                "results and this run's parts, which count as recorded; fix the cause and run the same command "
                "again to merge them")


def lock_lost(why: str) -> Exit:
    """The exit of a run whose bucket lease of its shard lapsed (``why``: "lost its lease …")."""
    return Exit(EXIT_INCOMPLETE, f"the crawl stopped: it {why} (another crawl of this shard may have started); the "
                "rows not recorded yet are still pending: run the same command again once that one ends")


def annotations_unwritten(errors: int) -> Exit:
    """The exit of a crawl that finished but could not write all its annotations (or their masks)."""
    return Exit(EXIT_INCOMPLETE, f"the crawl finished but {errors} of its annotation files or mask zips could not "
                "be written or read (see the log): fix the cause and run the same command again")


def metadata_unreadable(error: str) -> Exit:
    """The exit of a crawl whose metadata file broke off (a truncated ``.gz``)."""
    return Exit(EXIT_INCOMPLETE, f"the metadata could not be read to its end ({error}): the rows after that point "
                "are still pending; fetch or fix the file and run the same command again")
