"""What each crawl process tells the store about itself: ``{store}/.status/{part}.json``.

A process rewrites its record (atomically) every few seconds and when it
ends: its figures, its tallies per host, its time per stage, its latest
failures and images, and, once its command has returned, its exit status.
A supervisor (the multi-process crawl, ``scrapy fleet``) sums the records
of its processes for the progress display, the web view and the report:
they are read from the store, so it works the same for processes on other
machines. No Scrapy import.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from itertools import zip_longest
from typing import Any

from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.report import HostTally
from openimages_crawler.store.base import Store

logger = logging.getLogger(__name__)

STATUS_DIR = ".status"
_COUNT_FIELDS = {f.name for f in fields(Counts)}


@dataclass
class PartStatus:
    """One process's record."""

    part: str  # the results part label (its shard)
    job: str = ""  # the scheduler's job id (Scrapyd's _job), if any
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=lambda: _now())
    updated: str = ""
    state: str = "running"  # running, then the close reason (finished, shutdown, ...)
    exit: int | None = None  # the command's exit status, once known
    error: str = ""  # the command's one-line error, when it failed
    counts: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    arguments: dict[str, str] = field(default_factory=dict)
    recent_failures: list[dict[str, str]] = field(default_factory=list)
    recent_images: list[dict[str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{STATUS_DIR}/{self.part}.json"

    def figures(self) -> Counts:
        return Counts(**{name: value for name, value in self.counts.items() if name in _COUNT_FIELDS})

    def host_tallies(self) -> dict[str, HostTally]:
        return {host: HostTally(tally.get("ok", 0), Counter(tally.get("failures", {})))
                for host, tally in self.hosts.items()}

    def encode(self) -> bytes:
        """The record as written now (``updated`` set)."""
        self.updated = _now()
        return json.dumps(asdict(self)).encode()

    def write(self, store: Store) -> None:
        data = self.encode()
        with store.writing(self.key) as out:
            out.write(data)


class RecordSender:
    """Writes records to a store that may be slow to answer (an object store)
    from a thread of its own, the latest copy of each, one write at a time: the
    crawl never waits on it, and a record is never older than one write."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: dict[str, bytes] = {}
        self.busy = False
        self.changed = threading.Condition()
        self.thread: threading.Thread | None = None

    def send(self, record: PartStatus) -> None:
        with self.changed:
            self.pending[record.key] = record.encode()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="openimages-records", daemon=True)
                self.thread.start()
            self.changed.notify_all()

    def _run(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: bool(self.pending))
                key, data = self.pending.popitem()
                self.busy = True
            try:
                self.store.write(key, data)
            except OSError as exc:
                logger.warning("Cannot write the crawl's status in %s: %s", self.store.uri, exc)
            with self.changed:
                self.busy = False
                self.changed.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until what was sent is written (or could not be)."""
        with self.changed:
            self.changed.wait_for(lambda: not self.pending and not self.busy, timeout)


def set_counts(status: PartStatus, counts: Counts, hosts: dict[str, HostTally]) -> None:
    status.counts = asdict(counts)
    status.hosts = {host: {"ok": tally.ok, "failures": dict(tally.failures)} for host, tally in hosts.items()}


def read_status(store: Store, part: str) -> PartStatus | None:
    """A part's record (``None`` when missing or unreadable: a process that
    has not written yet)."""
    try:
        found = json.loads(store.read(f"{STATUS_DIR}/{part}.json"))
        known = {f.name for f in fields(PartStatus)}
        return PartStatus(**{name: value for name, value in found.items() if name in known})
    except (OSError, ValueError, TypeError):
        return None


def mark_exit(store: Store, part: str, status: int, error: str = "", job: str = "") -> None:
    """Add the exit status (and its error line) to a part's record: the job's
    done marker, which a scheduler that does not report exit statuses reads."""
    record = read_status(store, part)
    if record is None or (job and record.job != job):
        record = PartStatus(part=part, job=job, state="not started")
    record.exit, record.error = status, error
    try:
        record.write(store)
    except OSError as exc:
        logger.warning("Cannot write the exit status in %s: %s", store.uri, exc)


def total_counts(records: list[PartStatus], time: float) -> Counts:
    """The figures of several processes as one (``time``: the supervisor's clock)."""
    parts = [record.figures() for record in records]
    failures: Counter[str] = Counter()
    for counts in parts:
        failures.update(counts.failures)
    totals = [counts.total for counts in parts]
    return Counts(
        time=time,
        done=sum(c.done for c in parts),
        ok=sum(c.ok for c in parts),
        failed=sum(c.failed for c in parts),
        bytes_in=sum(c.bytes_in for c in parts),
        bytes_out=sum(c.bytes_out for c in parts),
        failures=dict(failures),
        downloading=sum(c.downloading or 0 for c in parts),
        working=sum(c.working for c in parts),
        total=sum(t for t in totals if t is not None) if totals and None not in totals else None,
    )


def total_hosts(records: list[PartStatus]) -> dict[str, HostTally]:
    hosts: dict[str, HostTally] = {}
    for record in records:
        for host, tally in record.host_tallies().items():
            sum_tally = hosts.setdefault(host, HostTally())
            sum_tally.ok += tally.ok
            sum_tally.failures.update(tally.failures)
    return hosts


def latest_entries(lists: list[list[dict[str, str]]]) -> list[dict[str, str]]:
    """Newest-first lists (recent failures or images) of several processes as
    one, newest of each first."""
    return [entry for entries in zip_longest(*lists) for entry in entries if entry]


def total_stages(records: list[PartStatus]) -> dict[str, float]:
    stages: Counter[str] = Counter()
    for record in records:
        stages.update(record.stages)
    return dict(stages)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
