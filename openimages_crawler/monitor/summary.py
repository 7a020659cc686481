"""The closing summary of a crawl: what it did, where everything is, what to
run next. Pure: from the run's final figures and what its command knows.
"""

from __future__ import annotations

from dataclasses import dataclass

from openimages_crawler.monitor.progress import (
    Counts,
    byte_size,
    duration,
    failure_breakdown,
)
from openimages_crawler.reasons import CONNECTION, HTTP_ERROR, TIMEOUT

# Failures a later retry may turn into successes (``-a retry_failed=transient``).
MAYBE_TRANSIENT = (TIMEOUT, CONNECTION, HTTP_ERROR)


@dataclass(frozen=True)
class RunEnd:
    """How a crawl ended, as its command saw it."""

    counts: Counts  # the run's final figures
    finished: bool  # every selected row is recorded (the exit status is 0)
    store: str
    results: list[str]  # the results files there are
    command: str  # the command line that ran (to run again)
    report: str | None = None  # the report page, when one was written
    database: str | None = None
    dashboard: str | None = None  # the web view's address while the crawl ran


def closing_summary(end: RunEnd) -> str:
    """A few lines: the rows by outcome, bytes and time; the results, report,
    database and web view; the next command worth running."""
    counts = end.counts
    already = counts.done - counts.images
    if end.finished and counts.images == 0:
        lines = [f"Nothing new: all {counts.done:,} selected rows were already recorded in {end.store} "
                 "by earlier runs; nothing was downloaded."]
    else:
        pending = "0 pending" if end.finished else (
            f"about {counts.total - counts.done:,} pending" if counts.total is not None and counts.total > counts.done
            else "the rest pending")
        omitted = f"{counts.omitted:,} left out, " if counts.omitted else ""
        lines = [f"{'Finished' if end.finished else 'Stopped'} after {duration(counts.time)}: {counts.done:,} rows "
                 f"accounted: {counts.ok:,} stored, {counts.failed:,} failed, {omitted}{already:,} already done "
                 f"before, {pending}"]
        if counts.failed:
            lines.append(f"  failed by reason: {failure_breakdown(counts.failures, limit=len(counts.failures))}")
        if counts.omitted:
            lines.append(f"  left out (not errors): {failure_breakdown(counts.left_out, limit=len(counts.left_out))}")
        lines.append(f"  data: {byte_size(counts.bytes_in)} downloaded, {byte_size(counts.bytes_out)} written")
    if end.results:
        lines.append(f"  results: {', '.join(end.results)}")
    if end.report:
        lines.append(f"  report: {end.report}")
    if end.database:
        lines.append(f"  database: {end.database}")
    lines.append(f"  dashboard: was at {end.dashboard} while the crawl ran" if end.dashboard else
                 "  dashboard: off (-s OPENIMAGES_DASHBOARD_PORT=0 serves one while a crawl runs)")
    lines.append(f"Next: {next_step(end)}")
    return "\n".join(lines)


def next_step(end: RunEnd) -> str:
    if not end.finished:
        return f"run the same command again to finish (what is recorded stays done): {end.command}"
    retryable = sum(end.counts.failures.get(reason, 0) for reason in MAYBE_TRANSIENT)
    if retryable and "retry_failed=" not in end.command:
        return (f"{retryable:,} failures may be transient ({', '.join(MAYBE_TRANSIENT)}): retry them later "
                f"with {end.command} -a retry_failed=transient")
    where = f"query {end.database} with DuckDB (README, The database)" if end.database else "read the results files"
    return f"train from the images in {end.store}; {where}, or export labels with scrapy export"
