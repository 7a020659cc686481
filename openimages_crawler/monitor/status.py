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

import heapq
import json
import logging
import os
import socket
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from functools import cache
from itertools import zip_longest
from types import UnionType
from typing import Any, TypedDict, TypeVar, Union, get_args, get_origin, get_type_hints, is_typeddict

from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.report import HostTally
from openimages_crawler.redact import redact, redacted_settings
from openimages_crawler.store.base import ObjectTooLarge, Store
from openimages_crawler.store.layout import STATUS_DIR

logger = logging.getLogger(__name__)

# A record is a few KB (OPENIMAGES_STATUS_HOSTS bounds its hosts); a larger one is not read.
MAX_RECORD_BYTES = 1024**2
_COUNT_FIELDS = {f.name for f in fields(Counts)}
# A record's entry summing the hosts it leaves out (OPENIMAGES_STATUS_HOSTS keeps the others).
OTHER_HOSTS = "(other hosts)"


class HostEntry(TypedDict, total=False):
    """A host's tally in a record."""

    ok: int
    failures: dict[str, int]  # FailureReason -> count
    hosts: int  # in the OTHER_HOSTS entry: how many hosts it sums


class ImageEntry(TypedDict):
    """One of the latest images in a record (the web view shows it)."""

    subset: str
    image_id: str
    key: str  # in the store


@dataclass
class OtherHosts(HostTally):
    """The hosts a record leaves out, summed, and how many they are."""

    hosts: int = 0


@dataclass
class PartStatus:
    """One process's record."""

    part: str  # the results part label (its shard, or a process's share of it)
    job: str = ""  # the scheduler's job id (Scrapyd's _job), if any
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=lambda: _now())
    updated: str = ""
    state: str = "running"  # running, then the close reason (finished, shutdown, ...)
    exit: int | None = None  # the command's exit status, once known
    error: str = ""  # the command's one-line error, when it failed
    counts: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, HostEntry] = field(default_factory=dict)  # the leading hosts, the rest in OTHER_HOSTS
    stages: dict[str, float] = field(default_factory=dict)
    arguments: dict[str, Any] = field(default_factory=dict)  # the -a arguments, as given
    recent_failures: list[dict[str, str]] = field(default_factory=list)
    recent_images: list[ImageEntry] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{STATUS_DIR}/{self.part}.json"

    def figures(self) -> Counts:
        """The record's figures (none yet in the record ``mark_exit`` writes for a process that never counted)."""
        return Counts(**{"time": 0.0, **{name: value for name, value in self.counts.items() if name in _COUNT_FIELDS}})

    def host_tallies(self) -> dict[str, HostTally]:
        return {host: tally_of(host, entry) for host, entry in self.hosts.items()}

    def encode(self) -> bytes:
        """The record as written now (``updated`` set)."""
        self.updated = _now()
        record = asdict(self)
        record["arguments"], record["error"] = redacted_settings(self.arguments), redact(self.error)
        return json.dumps(record).encode()

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
                with self.store.writing(key) as out:  # its own staging: the crawl's goes at close
                    out.write(data)
            except OSError as exc:
                logger.warning("Cannot write the crawl's status in %s: %s", self.store.uri, exc)
            with self.changed:
                self.busy = False
                self.changed.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until what was sent is written (or could not be)."""
        with self.changed:
            self.changed.wait_for(lambda: not self.pending and not self.busy, timeout)


class HostRanking:
    """Every host's tally, and the ``limit`` hosts with most failures (ties:
    most requests) kept up to date as results come, in O(log limit) each: a
    record takes them, and the rest summed from running totals, without a look
    at every host (a crawl can meet hundreds of thousands, and its record is
    made on the event loop every few seconds)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tallies: dict[str, HostTally] = {}
        self.total = HostTally()  # every host's, summed
        self.leaders: set[str] = set()
        # The leaders by rank, lowest first; a leader's rank here may be older (lower) than its tally's.
        self.lowest: list[tuple[tuple[int, int], str]] = []

    def add(self, host: str, failure: str | None = None) -> None:
        """One result from ``host``: a success, or a failure for that reason."""
        tally = self.tallies.setdefault(host, HostTally())
        if failure is None:
            tally.ok += 1
            self.total.ok += 1
        else:
            tally.failures[failure] += 1
            self.total.failures[failure] += 1
        if host in self.leaders:
            return
        ranked = rank(tally)
        if len(self.leaders) < self.limit:
            self.leaders.add(host)
            heapq.heappush(self.lowest, (ranked, host))
        elif self.leaders and ranked > self.lowest_rank():
            _, replaced = heapq.heapreplace(self.lowest, (ranked, host))
            self.leaders.remove(replaced)
            self.leaders.add(host)

    def lowest_rank(self) -> tuple[int, int]:
        """The last leader's rank (outdated ranks met on the way are brought up to date)."""
        while True:
            ranked, host = self.lowest[0]
            current = rank(self.tallies[host])
            if ranked == current:
                return ranked
            heapq.heapreplace(self.lowest, (current, host))

    def entries(self) -> dict[str, HostEntry]:
        """The leaders as a record holds them, most failures first, then the other
        hosts summed under OTHER_HOSTS: O(limit log limit) at any host count."""
        others = OtherHosts(self.total.ok, Counter(self.total.failures), len(self.tallies) - len(self.leaders))
        entries: dict[str, HostEntry] = {}
        for host in sorted(sorted(self.leaders), key=lambda host: rank(self.tallies[host]), reverse=True):
            tally = self.tallies[host]
            others.ok -= tally.ok
            others.failures.subtract(tally.failures)
            entries[host] = host_entry(tally)
        if others.hosts:
            others.failures = +others.failures
            entries[OTHER_HOSTS] = host_entry(others)
        return entries


def rank(tally: HostTally) -> tuple[int, int]:
    """Where a host stands among others: most failures first, then most requests."""
    return tally.failed, tally.ok


def host_entry(tally: HostTally) -> HostEntry:
    """A tally as a record holds it."""
    entry: HostEntry = {"ok": tally.ok, "failures": dict(tally.failures)}
    if isinstance(tally, OtherHosts):
        entry["hosts"] = tally.hosts
    return entry


def tally_of(host: str, entry: HostEntry) -> HostTally:
    """A record's entry as a tally (OTHER_HOSTS keeps how many hosts it sums)."""
    ok, failures = entry.get("ok", 0), Counter(entry.get("failures", {}))
    return OtherHosts(ok, failures, entry.get("hosts", 0)) if host == OTHER_HOSTS else HostTally(ok, failures)


def set_counts(status: PartStatus, counts: Counts, hosts: HostRanking | dict[str, HostTally]) -> None:
    """The figures and hosts a record holds: a process's leading hosts and
    the rest summed, or a supervisor's sum of its processes' records (each
    bounded, so the sum is too)."""
    status.counts = asdict(counts)
    status.hosts = (hosts.entries() if isinstance(hosts, HostRanking)
                    else {host: host_entry(tally) for host, tally in hosts.items()})


def read_status(store: Store, part: str) -> PartStatus | None:
    """A part's record; ``None`` when missing (a process that has not written
    yet) or when it is not a record of this part with the expected types
    (skipped, with a debug line): anyone who can write to the store can write
    a record, and none may crash a supervisor, a watch or their web view."""
    key = f"{STATUS_DIR}/{part}.json"
    try:
        found = json.loads(store.read(key, MAX_RECORD_BYTES))  # bounded: planted to cost every reader its memory?
    except ObjectTooLarge as exc:
        logger.debug("Skipping the record %s in %s: %s", key, store.uri, exc)
        return None
    except OSError:
        return None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        logger.debug("Skipping the record %s in %s: %s", key, store.uri, exc)
        return None
    problem = record_problem(found, part)
    if problem:
        logger.debug("Skipping the record %s in %s: %s", key, store.uri, problem)
        return None
    known = {f.name for f in fields(PartStatus)}
    return PartStatus(**{name: value for name, value in found.items() if name in known})


def record_problem(found: object, part: str) -> str:
    """Why a value read from ``part``'s record is not one ('' when it is)."""
    if not isinstance(found, dict):
        return "not a JSON object"
    if found.get("part") != part:
        return f"it names part {found.get('part')!r}"
    hints = _hints(PartStatus)
    wrong = [name for name, value in found.items() if name in hints and not fits(value, hints[name])]
    if not fits(found.get("counts", {}), Counts):
        wrong.append("counts")
    return f"wrong type of {', '.join(sorted(set(wrong)))}" if wrong else ""


def fits(value: object, hint: Any) -> bool:
    """Whether a value read from JSON has the type ``hint`` names: str, int,
    float, None, Any, a union, list[...], dict[str, ...], a TypedDict (with
    its required keys) or a dataclass (the fields it has)."""
    if hint is Any:
        return True
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(name, str) and fits(item, args[1])
                                               for name, item in value.items())
    if is_typeddict(hint) or is_dataclass(hint):
        required = getattr(hint, "__required_keys__", frozenset())
        return isinstance(value, dict) and required <= value.keys() and all(
            fits(value[name], kind) for name, kind in _hints(hint).items() if name in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@cache
def _hints(kind: type) -> dict[str, Any]:
    return get_type_hints(kind)


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
    left_out: Counter[str] = Counter()
    for counts in parts:
        failures.update(counts.failures)
        left_out.update(counts.left_out)
    totals = [counts.total for counts in parts]
    return Counts(
        time=time,
        done=sum(c.done for c in parts),
        ok=sum(c.ok for c in parts),
        failed=sum(c.failed for c in parts),
        bytes_in=sum(c.bytes_in for c in parts),
        bytes_out=sum(c.bytes_out for c in parts),
        failures=dict(failures),
        left_out=dict(left_out),
        downloading=sum(c.downloading or 0 for c in parts),
        working=sum(c.working for c in parts),
        total=sum(t for t in totals if t is not None) if totals and None not in totals else None,
    )


def total_hosts(records: list[PartStatus]) -> dict[str, HostTally]:
    """The hosts of several records summed (their OTHER_HOSTS entries too,
    with how many hosts each left out)."""
    hosts: dict[str, HostTally] = {}
    for record in records:
        for host, tally in record.host_tallies().items():
            total = hosts.setdefault(host, tally)  # host_tallies makes new tallies: the first is the sum
            if total is not tally:
                total.ok += tally.ok
                total.failures.update(tally.failures)
                if isinstance(total, OtherHosts) and isinstance(tally, OtherHosts):
                    total.hosts += tally.hosts
    return hosts


def leading(hosts: dict[str, HostTally], limit: int) -> dict[str, HostTally]:
    """The ``limit`` hosts of a sum of records with most failures (then most
    requests), the rest summed under OTHER_HOSTS with how many they are: a
    supervisor's record is bounded like each of its processes'."""
    named = {host: tally for host, tally in hosts.items() if host != OTHER_HOSTS}
    kept = heapq.nlargest(limit, sorted(named), key=lambda host: rank(named[host]))  # ties: by name
    found = hosts.get(OTHER_HOSTS)
    others = OtherHosts(found.ok, Counter(found.failures), found.hosts) if isinstance(found, OtherHosts) \
        else OtherHosts()
    for host in named.keys() - set(kept):
        others.ok += named[host].ok
        others.failures.update(named[host].failures)
        others.hosts += 1
    return {**{host: named[host] for host in kept}, **({OTHER_HOSTS: others} if others.hosts else {})}


Entry = TypeVar("Entry")


def latest_entries(lists: list[list[Entry]]) -> list[Entry]:
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
