"""``--status`` and ``--cancel``: the store's fleet, from any shell."""

from __future__ import annotations

import logging

from openimages_crawler.exits import EXIT_INCOMPLETE, EXIT_OK, fail
from openimages_crawler.fleet.scrapyd import (
    ABSENT,
    ALIVE,
    ScrapydTarget,
    TargetError,
    ask_all,
)
from openimages_crawler.fleet.state import (
    CANCELLED,
    DONE,
    SCHEDULED,
    Fleet,
    timestamp,
    write_fleet,
)
from openimages_crawler.fleet.watch import cancel_quietly
from openimages_crawler.monitor.status import read_status
from openimages_crawler.store.base import Store

logger = logging.getLogger(__name__)


def status_rows(fleet: Fleet, listings: dict[str, dict[str, str] | None], store: Store) -> list[list[str]]:
    """One row per shard: shard, target, job, state, rows done, exit, attempts."""
    rows = []
    for job in fleet.jobs:
        record = read_status(store, fleet.label(job))
        mine = record if record is not None and record.job == job.jobid else None
        listing = listings.get(job.target)
        if job.state != SCHEDULED:
            state = job.state
        elif listing is None:
            state = "node silent"
        else:
            state = listing.get(job.jobid, ABSENT)
        done = "-"
        if mine is not None:
            figures = mine.figures()
            done = f"{figures.done:,}" + (f"/{figures.total:,}" if figures.total is not None else "")
        exit_status = "-" if mine is None or mine.exit is None else str(mine.exit)
        rows.append([fleet.shard(job), job.target, job.jobid, state, done, exit_status, str(job.attempts)])
    return rows


def show_status(fleet: Fleet, targets: dict[str, ScrapydTarget], store: Store) -> int:
    listings: dict[str, dict[str, str] | None] = {}
    for name, answer in ask_all(list(targets.values()), lambda target: target.jobs()).items():
        if isinstance(answer, TargetError):
            logger.warning("%s", answer)
        listings[name] = None if isinstance(answer, TargetError) else answer
    print(f"Fleet {fleet.run} of {fleet.spider} in {store.uri}: {fleet.state}, started {fleet.started}"
          f"{f', ended {fleet.ended}' if fleet.ended else ''}; targets "
          f"{', '.join(f'{name} ({t.url})' for name, t in targets.items())}")
    header = ["shard", "target", "job", "state", "rows done", "exit", "attempts"]
    rows = [header, *status_rows(fleet, listings, store)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cancel_fleet(fleet: Fleet, targets: dict[str, ScrapydTarget], store: Store) -> int:
    """SIGTERM to every job of the fleet its targets hold (the current ones and
    any stray); the rows recorded so far stay, a new crawl resumes from them."""
    if not fleet.unfinished:
        print(f"Fleet {fleet.run} is {fleet.state}: nothing to cancel.")
        return EXIT_OK
    silent = []
    stopped = 0
    for name, listing in ask_all(list(targets.values()), lambda target: target.jobs()).items():
        if isinstance(listing, TargetError):
            logger.warning("%s", listing)
            silent.append(name)
            continue
        for jobid, state in sorted(listing.items()):
            if state in ALIVE and jobid.startswith(f"{fleet.run}-"):
                stopped += cancel_quietly(targets[name], jobid)
    for job in fleet.jobs:
        if job.state != DONE:
            job.state = CANCELLED
    fleet.state, fleet.ended = CANCELLED, timestamp()
    write_fleet(store, fleet)
    if silent:
        return fail(f"fleet {fleet.run} cancelled, but {', '.join(silent)} did not answer: a job still running "
                    "there keeps its shard locked until it ends (a node's death stops its jobs)", EXIT_INCOMPLETE)
    print(f"Fleet {fleet.run} cancelled: {stopped} jobs stopped (SIGTERM). The rows recorded so far stay; "
          "a new fleet or crawl on this store goes on from them.")
    return EXIT_OK
