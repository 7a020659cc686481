"""``scrapy fleet``: one crawl as N shard jobs on Scrapyd nodes that share the store.

Scrapyd runs jobs but knows nothing of their outcome (a crashed, cancelled or
finished job is just "finished"), and a dead node simply stops answering. The
crawl itself already makes a shard safe to run again: the results files and
parts are its checkpoint, the store lock keeps two runs off one shard, and
each job keeps a record of its shard in the store (``monitor.status``) with
its exit status once its command has returned. So the fleet schedules shard
K of N as one job per shard, round-robin over the targets, watches the
records (on the shared store) and the targets' job lists, and schedules a
shard again on a node that answers when its job ended without exit 0 or its
node is gone. When every shard is done it merges the results parts, writes
one report and exits 0: one command, one exit status, like ``scrapy crawl``.

What the fleet knows lives in ``{store}/.fleet/fleet.json`` (rewritten
atomically), so another shell can follow it (``--watch``), show it
(``--status``) or stop it (``--cancel``).

``requests`` and ``scrapyd-client`` are imported only when the fleet needs
them: Scrapy imports every command of the project, also for the ``scrapy
crawl`` a Scrapyd node runs, and a node needs neither.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.conf import arglist_to_dict
from scrapy.utils.log import configure_logging

from openimages_crawler.commands.exits import (
    EXIT_AFTER_SIGNAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    fail,
)
from openimages_crawler.crawl.config import CrawlConfig
from openimages_crawler.crawl.feeds import subset_feed_paths
from openimages_crawler.crawl.processes import process_count
from openimages_crawler.crawl.spider import OpenImagesSpider, scrapy_arguments
from openimages_crawler.dataset.arguments import ArgumentError, CrawlArguments
from openimages_crawler.monitor import report
from openimages_crawler.monitor.progress import Counts, ProgressDisplay, ProgressMeter
from openimages_crawler.monitor.status import (
    PartStatus,
    read_status,
    total_counts,
    total_hosts,
    total_stages,
)
from openimages_crawler.store.base import writing_text
from openimages_crawler.store.ledger import recorded_rows, settle
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import exclusive
from openimages_crawler.store.parts import part_label
from openimages_crawler.store.results import FailureRow, SuccessRow

if TYPE_CHECKING:
    from requests.auth import AuthBase
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

FLEET_KEY = ".fleet/fleet.json"
WATCH_LOCK = ".fleet/watch.lock"
DEFAULT_PROJECT = "openimages_crawler"
POLL_S = 2.0  # between two looks at the targets and the records
DOWN_GRACE_S = 10.0  # a target silent this long is presumed gone...
STALE_S = 15.0  # ...once its job's record has not changed for this long (it is rewritten every ~2 s)
RESCHEDULES = 4  # per shard and watch: a shard failing more often has a cause a new node will not fix
HTTP_TIMEOUT = (3.0, 10.0)  # connect, read: a dead node must not stall the watch
PATH_ARGUMENTS = ("metadata", "ids", "exclude")  # read by every job, on its node

# A shard job's state in fleet.json.
SCHEDULED, DONE, FAILED, CANCELLED = "scheduled", "done", "failed", "cancelled"
# The fleet's state: running or incomplete (shards failed too often: a watch tries them again) is
# unfinished; finished, failed (a usage error stopped it) or cancelled is over.
RUNNING, INCOMPLETE, FINISHED = "running", "incomplete", "finished"
UNFINISHED = (RUNNING, INCOMPLETE)
# A job as its target lists it; ABSENT: not listed (lost in a restart, or dropped from the finished list).
PENDING, LISTED_RUNNING, ABSENT = "pending", "running", "absent"
ALIVE = (PENDING, LISTED_RUNNING)


# --- targets ---------------------------------------------------------------------


class TargetError(Exception):
    """A target could not do what was asked."""


class TargetDown(TargetError):
    """No answer (refused, timed out, not a Scrapyd): the node may be gone."""


class TargetRefused(TargetError):
    """An answer, with an error (Scrapyd's ``"status": "error"``, or bad credentials)."""


class ScrapydTarget:
    """One Scrapyd daemon, through its JSON API.

    Scrapyd answers errors with HTTP 200 and ``"status": "error"``, so every
    answer is checked; every call has a timeout, so a dead node costs the
    watch seconds, not forever.
    """

    def __init__(self, name: str, url: str, project: str, auth: AuthBase | None = None) -> None:
        self.name = name
        self.url = url if url.endswith("/") else url + "/"
        self.project = project
        self.auth = auth

    def __repr__(self) -> str:
        return f"{self.name} ({self.url})"

    def jobs(self) -> dict[str, str]:
        """Job id -> pending, running or finished, for the project."""
        answer = self._call("GET", "listjobs.json", params={"project": self.project})
        return {job["id"]: state for state in (PENDING, LISTED_RUNNING, "finished") for job in answer.get(state, [])}

    def spiders(self) -> list[str]:
        return list(self._call("GET", "listspiders.json", params={"project": self.project})["spiders"])

    def schedule(self, spider: str, jobid: str, arguments: dict[str, str], settings: dict[str, str]) -> None:
        data = [("project", self.project), ("spider", spider), ("jobid", jobid),
                *arguments.items(), *(("setting", f"{name}={value}") for name, value in settings.items())]
        self._call("POST", "schedule.json", data=data)

    def cancel(self, jobid: str) -> None:
        """SIGTERM, the graceful stop (Scrapyd's default SIGINT would do too,
        but TERM is what a dying daemon sends, so one path is tested)."""
        self._call("POST", "cancel.json", data={"project": self.project, "job": jobid, "signal": "TERM"})

    def log_url(self, spider: str, jobid: str) -> str:
        return urljoin(self.url, f"logs/{self.project}/{spider}/{jobid}.log")

    def _call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        import requests  # see the module's docstring

        try:
            response = requests.request(method, urljoin(self.url, endpoint), auth=self.auth,
                                        timeout=HTTP_TIMEOUT, **kwargs)
        except requests.Timeout:
            raise TargetDown(f"{self!r} does not answer (timed out)") from None
        except requests.RequestException as exc:
            raise TargetDown(f"{self!r} does not answer ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            raise TargetRefused(f"{self!r} refused the credentials: set username and password in "
                                f"[deploy:{self.name}] of scrapy.cfg, or in ~/.netrc")
        try:
            answer = response.json()
        except ValueError:
            raise TargetDown(f"{self!r} answered HTTP {response.status_code}, not Scrapyd's JSON") from None
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            message = answer.get("message", answer) if isinstance(answer, dict) else answer
            raise TargetRefused(f"{self!r}: {message}")
        return answer


def ask_all(targets: list[ScrapydTarget], call: Callable[[ScrapydTarget], T]) -> dict[str, T | TargetError]:
    """``call`` on every target at once, by name: a silent node costs one
    timeout, not one per node, and Scrapyd answers some calls slowly (it runs
    ``scrapy list`` for ``listspiders.json``)."""

    def answer(target: ScrapydTarget) -> T | TargetError:
        try:
            return call(target)
        except TargetError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(len(targets), 16) or 1) as pool:
        futures = {target.name: pool.submit(answer, target) for target in targets}
    return {name: future.result() for name, future in futures.items()}


def configured_targets() -> dict[str, dict[str, str]]:
    """``[deploy:NAME]`` sections of scrapy.cfg, as scrapyd-deploy reads them
    (environment variables expanded, bare ``[deploy]`` as the base)."""
    try:
        from scrapyd_client.utils import _get_targets
    except ImportError:
        raise UsageError("scrapy fleet needs scrapyd-client: pip install scrapyd-client") from None
    return {name: dict(target) for name, target in _get_targets().items()}


def target_auth(url: str, username: str | None, password: str | None) -> AuthBase | None:
    """scrapyd-client's rule: username/password from the section, else ~/.netrc."""
    from scrapyd_client.utils import get_auth

    return get_auth(url=url, username=username or "", password=password or "")


def pick_targets(configured: dict[str, dict[str, str]], wanted: str, project: str | None) -> list[ScrapydTarget]:
    """The targets ``--targets`` names (``all``: every one with a url)."""
    usable = {name: target for name, target in configured.items() if target.get("url")}
    if not usable:
        raise UsageError("scrapy.cfg has no Scrapyd target: add a section [deploy:NAME] with "
                         "url = http://HOST:6800/ for each node")
    names = sorted(usable) if wanted == "all" else [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in usable]
    if unknown or not names:
        raise UsageError(f"unknown Scrapyd target {', '.join(unknown) or repr(wanted)} "
                         f"(scrapy.cfg has: {', '.join(sorted(usable))})")
    if len(set(names)) != len(names):
        raise UsageError(f"--targets {wanted}: a target is named twice")
    return [ScrapydTarget(name, usable[name]["url"], project or usable[name].get("project") or DEFAULT_PROJECT,
                          target_auth(usable[name]["url"], usable[name].get("username"),
                                      usable[name].get("password")))
            for name in names]


# --- what the user gave ----------------------------------------------------------


def fleet_store(uri: str) -> Path:
    """IMAGES_STORE as the absolute folder every node mounts at the same path.

    A relative path would be resolved in each job's own working folder (a
    Scrapyd node's), and the fleet reads the jobs' records in the store.
    """
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        path = unquote(parts.path)
    elif parts.scheme == "":
        path = uri
    else:
        raise UsageError(f"IMAGES_STORE={uri!r}: a fleet needs a folder on a shared filesystem that every "
                         "node mounts at the same absolute path (a path or file:///path)")
    if not os.path.isabs(path):
        raise UsageError(f"IMAGES_STORE={uri!r} is relative: each node would resolve it in its own folder; "
                         "give the absolute path of a folder on a shared filesystem every node mounts there")
    return Path(path)


def check_arguments(given: dict[str, str]) -> None:
    """The crawl's own checks of ``-a``, here before any job exists, plus the
    fleet's: it assigns the shards, and jobs read the files on their nodes."""
    if "shard" in given:
        raise UsageError("-a shard: the fleet assigns the shards itself (--shards N)")
    reserved = sorted(name for name in given if name.startswith("_"))
    if reserved:
        raise UsageError(f"-a {reserved[0]}: arguments starting with _ are the scheduler's")
    for name in PATH_ARGUMENTS:
        if given.get(name) and not os.path.isabs(given[name]):
            raise UsageError(f"-a {name}={given[name]} is relative: jobs run in their node's folder; give "
                             "the absolute path of a file on the shared filesystem")
    try:
        CrawlArguments.from_given(scrapy_arguments(dict(given))[1])
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None


def check_settings(settings: BaseSettings) -> None:
    """The settings every job will read, checked once here (a mistake would
    otherwise stop N jobs one by one)."""
    CrawlConfig.from_settings(settings)
    process_count(settings["OPENIMAGES_PROCESSES"])


# --- the fleet's record ------------------------------------------------------------


@dataclass
class ShardJob:
    """The job that is (or was last) crawling one shard."""

    index: int  # K of shard K/N
    target: str
    jobid: str
    attempts: int = 1  # jobs scheduled for this shard so far
    state: str = SCHEDULED


@dataclass
class Fleet:
    """``{store}/.fleet/fleet.json``: what was asked and where each shard runs."""

    run: str  # the jobs' ids start with it
    spider: str
    shards: int
    arguments: dict[str, str]  # the jobs' -a (each also gets shard=K/N)
    settings: dict[str, str]  # the user's -s, IMAGES_STORE absolute (the jobs' and the watch's)
    targets: dict[str, dict[str, str]]  # name -> url, project
    jobs: list[ShardJob]
    started: str = field(default_factory=lambda: _now())
    state: str = RUNNING
    ended: str = ""

    @classmethod
    def from_json(cls, text: str) -> Fleet:
        found = json.loads(text)
        found["jobs"] = [ShardJob(**job) for job in found["jobs"]]
        return cls(**found)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def label(self, job: ShardJob) -> str:
        return part_label(job.index, self.shards)

    def shard(self, job: ShardJob) -> str:
        return f"{job.index}/{self.shards}"

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED and any(job.state != DONE for job in self.jobs)


def new_run_id() -> str:
    """Short, sortable, and unlikely to meet another fleet's on a shared Scrapyd."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def job_id(run: str, index: int, count: int, attempt: int) -> str:
    """``{run}-{K}of{N}``, then ``-r2``, ``-r3``... (the record of each attempt says which it is)."""
    base = f"{run}-{part_label(index, count)}"
    return base if attempt == 1 else f"{base}-r{attempt}"


def assign(count: int, targets: list[str]) -> list[str]:
    """The target of each shard: round-robin."""
    return [targets[index % len(targets)] for index in range(count)]


def read_fleet(root: Path) -> Fleet | None:
    try:
        text = (root / FLEET_KEY).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Fleet.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{root / FLEET_KEY} cannot be read ({exc}): move it away to start a new fleet") from None


def write_fleet(store: LocalStore, fleet: Fleet) -> None:
    """Atomically (a temporary file, then a rename): a reader never sees half of it."""
    with writing_text(store, FLEET_KEY) as out:
        out.write(fleet.to_json())


@contextmanager
def watching(root: Path, fleet: Fleet) -> Iterator[None]:
    """One watch per fleet: two would each schedule a dead node's shards again.
    An OS lock, released however the watch ends."""
    path = root / WATCH_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"fleet {fleet.run} is watched already (from another shell or machine); "
                             "`scrapy fleet --status` shows it") from None
        yield
    finally:
        os.close(fd)


# --- deciding, without HTTP ----------------------------------------------------------


class Verdict(Enum):
    WAIT = "wait"
    DONE = "done"
    USAGE_ERROR = "usage error"
    RESCHEDULE = "reschedule"
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Observation:
    """What the watch sees of one shard's job."""

    listing: str | None  # pending, running, finished or absent on its target; None: the target is silent
    down_for: float = 0.0  # seconds its target has been silent
    record: PartStatus | None = None  # the shard's record in the store, whichever job wrote it
    record_age: float = 0.0  # seconds since the record last changed, by the watch's clock

    def mine(self, job: ShardJob) -> PartStatus | None:
        """The record, if this job wrote it."""
        return self.record if self.record is not None and self.record.job == job.jobid else None


def decide(job: ShardJob, seen: Observation, limit: int) -> Verdict:
    """What to do about one shard; ``limit``: the attempts it may reach."""
    if job.state == DONE:
        return Verdict.DONE
    mine = seen.mine(job)
    if mine is not None and mine.exit == EXIT_OK:
        return Verdict.DONE
    # A first job's usage error is the same on every node. A later job's exit 2 is most
    # likely the shard's lock, still held by the job it replaces: try again.
    if mine is not None and mine.exit == EXIT_USAGE and job.attempts == 1:
        return Verdict.USAGE_ERROR
    if not job_over(seen, mine):
        return Verdict.WAIT
    if held_by_another(job, seen):
        return Verdict.WAIT
    return Verdict.RESCHEDULE if job.attempts < limit else Verdict.GIVE_UP


def job_over(seen: Observation, mine: PartStatus | None) -> bool:
    """Whether the job has ended, or its node is gone with it."""
    if seen.listing in ALIVE:
        return False
    if seen.listing is not None:
        return True  # finished (crashed, cancelled, done without exit 0), or unknown to its target
    if mine is not None and mine.exit is not None:
        return True  # its command returned (its node's death stops it: SIGTERM, exit 143)
    if seen.down_for < DOWN_GRACE_S:
        return False
    return mine is None or seen.record_age >= STALE_S


def held_by_another(job: ShardJob, seen: Observation) -> bool:
    """Another job of this shard (an earlier attempt, still stopping) keeps
    its record fresh: a new job would find the shard locked."""
    record = seen.record
    return record is not None and record.job != job.jobid and record.exit is None and seen.record_age < STALE_S


class Rotation:
    """Round-robin over the targets, skipping those that do not answer."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.turn = 0

    def pick(self, live: set[str]) -> str | None:
        for _ in self.names:
            name = self.names[self.turn % len(self.names)]
            self.turn += 1
            if name in live:
                return name
        return None


class Freshness:
    """How long each shard's record has stayed the same, by this process's
    clock (a node's clock may differ from ours, so its timestamps are compared
    only with themselves)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[tuple[str, str], float]] = {}

    def age(self, label: str, record: PartStatus | None, now: float) -> float:
        if record is None:
            self.seen.pop(label, None)
            return math.inf
        key = (record.job, record.updated)
        known = self.seen.get(label)
        if known is None or known[0] != key:
            self.seen[label] = (key, now)
            return 0.0
        return now - known[1]


def stray_jobs(fleet: Fleet, listing: dict[str, str]) -> list[str]:
    """Jobs of this fleet a target still holds that no shard counts on (one
    queued on a node that was presumed dead and came back, say)."""
    current = {job.jobid for job in fleet.jobs}
    return sorted(jobid for jobid, state in listing.items()
                  if state in ALIVE and jobid.startswith(f"{fleet.run}-") and jobid not in current)


# --- watching ------------------------------------------------------------------------


class Watch:
    """Follows a fleet until every shard is done: progress, rescheduling, the
    end (merge, report, one exit status)."""

    def __init__(self, fleet: Fleet, targets: dict[str, ScrapydTarget], store: LocalStore,
                 settings: BaseSettings) -> None:
        self.fleet = fleet
        self.targets = targets
        self.store = store
        self.settings = settings
        self.files = {"success": subset_feed_paths(settings, SuccessRow),
                      "failure": subset_feed_paths(settings, FailureRow)}
        self.display = ProgressDisplay(str(settings["OPENIMAGES_PROGRESS"]).lower(),
                                       settings.getfloat("LOGSTATS_INTERVAL"))
        self.meter = ProgressMeter()
        self.rotation = Rotation(list(targets))
        self.freshness = Freshness()
        self.silent_since: dict[str, float] = {}
        self.records: dict[int, PartStatus] = {}  # the latest record of each shard's current job
        self.cancelled: set[str] = set()  # strays already stopped
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.received: list[int] = []
        for job in fleet.jobs:  # a watch re-attached to an incomplete fleet tries its failed shards again
            if job.state == FAILED:
                job.state = SCHEDULED
        self.limits = {job.index: job.attempts + RESCHEDULES for job in fleet.jobs}
        for job in fleet.jobs:  # shards done before a re-attach still count in the sums
            found = read_status(store.root, fleet.label(job)) if job.state == DONE else None
            if found is not None and found.job == job.jobid:
                self.records[job.index] = found

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self.on_signal) for signum in EXIT_AFTER_SIGNAL}
        try:
            with watching(self.store.root, self.fleet):
                while True:
                    status = self.tick()
                    if status is not None:
                        return status
                    if self.stop.wait(POLL_S):
                        return self.detach()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        self.stop.set()

    def detach(self) -> int:
        """Stop watching; the jobs go on."""
        self.show(final=False)
        sys.stderr.write(f"Stopped watching fleet {self.fleet.run}; its jobs go on. Follow it again with "
                         "`scrapy fleet --watch`, or stop them with `scrapy fleet --cancel` (same IMAGES_STORE).\n")
        return EXIT_AFTER_SIGNAL[self.received[0]]

    def tick(self) -> int | None:
        """One look at everything; an exit status once the fleet has ended.
        Holds the fleet's lock: a ``--cancel`` meanwhile waits, then this
        watch sees it and schedules nothing again."""
        with exclusive(self.store.root, "fleet"):
            recorded = read_fleet(self.store.root)
            if recorded is None or recorded.run != self.fleet.run or recorded.state == CANCELLED:
                return fail(f"fleet {self.fleet.run} was cancelled (scrapy fleet --cancel): its rows not "
                            "recorded yet are still pending", EXIT_INCOMPLETE)
            return self.look()

    def look(self) -> int | None:
        listings = self.poll()
        now = time.monotonic()
        for job in self.fleet.jobs:
            if job.state in (DONE, FAILED):
                continue
            seen = self.observe(job, listings, now)
            verdict = decide(job, seen, self.limits[job.index])
            if verdict is Verdict.DONE:
                job.state = DONE
                write_fleet(self.store, self.fleet)
            elif verdict is Verdict.USAGE_ERROR:
                return self.stop_for_usage_error(job)
            elif verdict is Verdict.RESCHEDULE:
                self.reschedule(job, seen, set(listings))
            elif verdict is Verdict.GIVE_UP:
                job.state = FAILED
                write_fleet(self.store, self.fleet)
                logger.error("Shard %s: %d jobs did not finish it (the last %s); not scheduled again",
                             self.fleet.shard(job), job.attempts, ending(seen, job))
        self.show(final=False)
        if all(job.state == DONE for job in self.fleet.jobs):
            return self.finish()
        if all(job.state in (DONE, FAILED) for job in self.fleet.jobs):
            return self.give_up()
        return None

    def poll(self) -> dict[str, dict[str, str]]:
        """Each answering target's jobs; silent targets are timed, and jobs of
        this fleet that no shard counts on are stopped."""
        listings: dict[str, dict[str, str]] = {}
        now = time.monotonic()
        for name, answer in ask_all(list(self.targets.values()), lambda target: target.jobs()).items():
            target = self.targets[name]
            if isinstance(answer, TargetError):
                if name not in self.silent_since:
                    logger.warning("%s", answer)
                self.silent_since.setdefault(name, now)
                continue
            listings[name] = answer
            if self.silent_since.pop(name, None) is not None:
                logger.info("%r answers again", target)
            for jobid in stray_jobs(self.fleet, listings[name]):
                if jobid not in self.cancelled:
                    self.cancelled.add(jobid)
                    logger.warning("Stopping job %s on %r: its shard runs elsewhere now", jobid, target)
                    cancel_quietly(target, jobid)
        return listings

    def observe(self, job: ShardJob, listings: dict[str, dict[str, str]], now: float) -> Observation:
        record = read_status(self.store.root, self.fleet.label(job))
        listing = listings.get(job.target)
        seen = Observation(
            listing=None if listing is None else listing.get(job.jobid, ABSENT),
            down_for=now - self.silent_since.get(job.target, now),
            record=record,
            record_age=self.freshness.age(self.fleet.label(job), record, now),
        )
        mine = seen.mine(job)
        if mine is not None:
            self.records[job.index] = mine
        return seen

    def reschedule(self, job: ShardJob, seen: Observation, live: set[str]) -> None:
        """The shard again, as a new job on the next target that answers (its
        rows already recorded are not done again)."""
        name = self.rotation.pick(live)
        if name is None:
            return  # no target answers: try again at the next look
        attempt = job.attempts + 1
        jobid = job_id(self.fleet.run, job.index, self.fleet.shards, attempt)
        try:
            self.targets[name].schedule(self.fleet.spider, jobid, shard_arguments(self.fleet, job.index),
                                        job_settings(self.fleet))
        except TargetError as exc:
            logger.warning("Cannot schedule shard %s on %s: %s", self.fleet.shard(job), name, exc)
            return
        logger.warning("Shard %s: job %s on %s %s; scheduled again as %s on %s (attempt %d)",
                       self.fleet.shard(job), job.jobid, job.target, ending(seen, job), jobid, name, attempt)
        job.target, job.jobid, job.attempts = name, jobid, attempt
        self.records.pop(job.index, None)
        write_fleet(self.store, self.fleet)

    def show(self, final: bool) -> Counts:
        """The shards' figures summed, on the progress display."""
        counts = total_counts(list(self.records.values()), time.monotonic() - self.started)
        if len(self.records) < self.fleet.shards:
            counts = replace(counts, total=None)  # shards not heard from yet
        if final:
            counts = replace(counts, total=counts.done)
        self.meter.add(counts)
        self.display.show(self.meter, final=final)
        return counts

    def stop_for_usage_error(self, job: ShardJob) -> int:
        """Every node would fail the same way: stop the others too."""
        for other in self.fleet.jobs:
            if other is not job and other.state == SCHEDULED:
                cancel_quietly(self.targets[other.target], other.jobid)
                other.state = CANCELLED
        job.state = FAILED
        self.fleet.state, self.fleet.ended = FAILED, _now()
        write_fleet(self.store, self.fleet)
        target = self.targets[job.target]
        record = read_status(self.store.root, self.fleet.label(job))
        why = f": {record.error}" if record is not None and record.error else ""
        return fail(f"shard {self.fleet.shard(job)} (job {job.jobid} on {target!r}) stopped with a usage error "
                    f"(exit 2){why}; every job was stopped (its crawl log: "
                    f"{target.log_url(self.fleet.spider, job.jobid)})", EXIT_USAGE)

    def finish(self) -> int:
        """Every shard done: one set of results files, one report, exit 0."""
        final = self.show(final=True)
        settle(self.files, self.store, 1, 1)
        totals = recorded_rows(self.files)
        if self.settings.getbool("OPENIMAGES_REPORT"):
            self.write_report(final, totals)
        self.fleet.state, self.fleet.ended = FINISHED, _now()
        write_fleet(self.store, self.fleet)
        print(f"Fleet {self.fleet.run} finished: {self.fleet.shards} shards on {len(self.targets)} targets, "
              f"{final.done:,} rows done ({final.ok:,} stored, {final.failed:,} failed) in "
              f"{elapsed(self.fleet.started):.0f} s; the store holds "
              f"{', '.join(f'{count:,} {kind}' for kind, count in totals.items())}: {self.store.root}")
        return EXIT_OK

    def give_up(self) -> int:
        """Shards failed too often, the others are done: their rows are merged,
        the failed shards' unrecorded rows stay pending for the next watch."""
        self.show(final=False)
        settle(self.files, self.store, 1, 1)
        self.fleet.state = INCOMPLETE
        write_fleet(self.store, self.fleet)
        failed = [self.fleet.shard(job) for job in self.fleet.jobs if job.state == FAILED]
        return fail(f"shard{'s' if len(failed) > 1 else ''} {', '.join(failed)} of fleet {self.fleet.run} did not "
                    f"finish in {RESCHEDULES + 1} jobs; their rows not recorded yet are still pending: see the "
                    "jobs' logs, fix the cause and run `scrapy fleet --watch` to try again", EXIT_INCOMPLETE)

    def write_report(self, final: Counts, totals: dict[str, int]) -> None:
        records = list(self.records.values())
        seconds = elapsed(self.fleet.started)
        run = report.run_record(str(self.store.root), started=self.fleet.started, seconds=seconds,
                                reason="finished", arguments=self.fleet.arguments, processes=self.fleet.shards)
        report.write(self.store, report.build(
            final=final, history=self.meter.history + [final], hosts=total_hosts(records),
            stages={**total_stages(records), "wall_s": seconds}, run=run, store_totals=totals))


def shard_arguments(fleet: Fleet, index: int) -> dict[str, str]:
    return {**fleet.arguments, "shard": f"{index}/{fleet.shards}"}


def job_settings(fleet: Fleet) -> dict[str, str]:
    """The user's settings; the fleet writes the one report (each job would overwrite it)."""
    return {**fleet.settings, "OPENIMAGES_REPORT": "False"}


def ending(seen: Observation, job: ShardJob) -> str:
    """How a job ended, as far as the watch knows."""
    mine = seen.mine(job)
    if mine is not None and mine.exit is not None:
        return f"ended with exit status {mine.exit}"
    if seen.listing is None:
        return f"went silent with its node ({seen.down_for:.0f} s)"
    if seen.listing == ABSENT:
        return "is unknown to its node (restarted?)"
    return "ended without an exit status (killed?)"


def cancel_quietly(target: ScrapydTarget, jobid: str) -> bool:
    """Stop a job if its target answers; whether it did."""
    try:
        target.cancel(jobid)
    except TargetError as exc:
        logger.warning("Cannot stop job %s: %s", jobid, exc)
        return False
    return True


def elapsed(started: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the command -------------------------------------------------------------------


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False  # the crawling happens in the Scrapyd jobs
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return ("openimages [-a NAME=VALUE ...] [-s NAME=VALUE ...] --targets NAME[,NAME...]|all --shards N "
                "[--no-watch] [--project P] | --status | --cancel | --watch")

    def short_desc(self) -> str:
        return "Crawl in N shard jobs on Scrapyd nodes that share IMAGES_STORE, and watch them to the end"

    def long_desc(self) -> str:
        return ("Schedule shard K/N of the crawl as one job per shard, round-robin over the Scrapyd targets "
                "of scrapy.cfg ([deploy:NAME] sections), watch their progress, schedule a shard again on "
                "another node when its job or node dies, and merge the results and write one report at the "
                "end. IMAGES_STORE must be an absolute folder every node mounts at the same path. "
                "--status shows the fleet recorded in the store, --cancel stops its jobs, --watch follows it.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-a", dest="spargs", action="append", default=[], metavar="NAME=VALUE",
                            help="crawl argument, as for scrapy crawl (may be repeated; not shard)")
        parser.add_argument("--targets", default="all", metavar="NAME[,NAME...]",
                            help="Scrapyd targets of scrapy.cfg ([deploy:NAME]), or all (default)")
        parser.add_argument("--shards", type=int, metavar="N", help="jobs to split the crawl into "
                            "(default: one per target)")
        parser.add_argument("--project", help="the Scrapyd project (default: the target's project, "
                            f"else {DEFAULT_PROJECT})")
        parser.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                            help="follow the jobs to the end (the default); alone: re-attach to the "
                            "store's fleet. --no-watch returns once they are scheduled")
        actions = parser.add_mutually_exclusive_group()
        actions.add_argument("--status", action="store_true", help="show the store's fleet and exit")
        actions.add_argument("--cancel", action="store_true", help="stop every job of the store's fleet")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        try:
            opts.spargs = arglist_to_dict(opts.spargs)
        except ValueError:
            raise UsageError("Invalid -a value, use -a NAME=VALUE", print_help=False) from None

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        configure_logging(self.settings)  # no crawler process does it for this command
        try:
            self.exitcode = self.dispatch(args, opts)
        except UsageError as exc:
            self.exitcode = fail(str(exc), EXIT_USAGE)

    def dispatch(self, args: list[str], opts: argparse.Namespace) -> int:
        assert self.settings is not None
        if opts.status or opts.cancel or (opts.watch and not args):
            if args or opts.spargs:
                raise UsageError("--status, --cancel and --watch alone act on the store's fleet: "
                                 "give no spider or -a")
            store = LocalStore(str(fleet_store(str(self.settings["IMAGES_STORE"]))))
            fleet = read_fleet(store.root)
            if fleet is None:
                raise UsageError(f"no fleet recorded in {store.root} (IMAGES_STORE)")
            if opts.status:
                return show_status(fleet, recorded_targets(fleet), store.root)
            if opts.cancel:
                with exclusive(store.root, "fleet"):  # after a watch's current look
                    fleet = read_fleet(store.root) or fleet
                    return cancel_fleet(fleet, recorded_targets(fleet), store)
            return self.reattach(fleet, store, arglist_to_dict(opts.set))
        if len(args) != 1:
            raise UsageError("give the spider (scrapy fleet openimages ...), or --status, --cancel or --watch")
        return self.start(args[0], opts)

    def start(self, spider: str, opts: argparse.Namespace) -> int:
        assert self.settings is not None
        if spider != OpenImagesSpider.name:
            raise UsageError(f"scrapy fleet runs the {OpenImagesSpider.name} spider, not {spider!r}")
        root = fleet_store(str(self.settings["IMAGES_STORE"]))
        given_settings = arglist_to_dict(opts.set)
        settings = self.settings.copy()
        settings.set("IMAGES_STORE", str(root), priority="cmdline")
        check_arguments(opts.spargs)
        check_settings(settings)
        targets = pick_targets(configured_targets(), opts.targets, opts.project)
        shards = len(targets) if opts.shards is None else opts.shards
        if shards < 1:
            raise UsageError(f"--shards {shards}: give 1 or more")
        store = LocalStore(str(root))
        root.mkdir(parents=True, exist_ok=True)
        with exclusive(root, "fleet"):
            refuse_unfinished(read_fleet(root), root)
            check_targets(targets, spider)
            run = new_run_id()
            fleet = Fleet(
                run=run, spider=spider, shards=shards, arguments=dict(opts.spargs),
                settings={**given_settings, "IMAGES_STORE": str(root)},
                targets={t.name: {"url": t.url, "project": t.project} for t in targets},
                jobs=[ShardJob(index, name, job_id(run, index, shards, 1))
                      for index, name in enumerate(assign(shards, [t.name for t in targets]), start=1)],
            )
            write_fleet(store, fleet)
            schedule_all(fleet, {t.name: t for t in targets}, store)
        logger.info("Fleet %s: %d shards scheduled on %s", run, shards, ", ".join(map(repr, targets)))
        if opts.watch is False:
            print(f"Fleet {run}: {shards} jobs scheduled on {', '.join(t.name for t in targets)}. Follow them "
                  "with `scrapy fleet --watch` (it also schedules again the shards of nodes that die) or "
                  "`scrapy fleet --status`, with the same IMAGES_STORE.")
            return EXIT_OK
        return Watch(fleet, {t.name: t for t in targets}, store, settings).run()

    def reattach(self, fleet: Fleet, store: LocalStore, given_settings: dict[str, str]) -> int:
        assert self.settings is not None
        if fleet.state == FINISHED:
            print(f"Fleet {fleet.run} finished at {fleet.ended}: nothing to watch.")
            return EXIT_OK
        if fleet.state not in UNFINISHED:
            raise UsageError(f"fleet {fleet.run} was {fleet.state}: start a new one with scrapy fleet openimages ...")
        settings = self.settings.copy()
        # The jobs' settings (their FEEDS, for the merge), and this command's -s (its progress display).
        settings.setdict({**fleet.settings, **given_settings}, priority="cmdline")
        fleet.state = RUNNING
        return Watch(fleet, recorded_targets(fleet), store, settings).run()


def refuse_unfinished(fleet: Fleet | None, root: Path) -> None:
    if fleet is not None and fleet.unfinished:
        done = sum(job.state == DONE for job in fleet.jobs)
        raise UsageError(f"{root} already has fleet {fleet.run} ({fleet.state}, {done} of {fleet.shards} shards "
                         "done): follow it with `scrapy fleet --watch` or stop it with `scrapy fleet --cancel`")


def check_targets(targets: list[ScrapydTarget], spider: str) -> None:
    """Every target answers and has the project with the spider, before any job exists."""
    answers = ask_all(targets, lambda target: target.spiders())
    for target in targets:
        spiders = answers[target.name]
        if isinstance(spiders, TargetRefused):
            raise UsageError(f"{spiders} (deploy the project: scrapyd-deploy {target.name} -p {target.project})")
        if isinstance(spiders, TargetError):
            raise UsageError(str(spiders))
        if spider not in spiders:
            raise UsageError(f"{target!r}: project {target.project} has no spider {spider} "
                             f"(deploy it again: scrapyd-deploy {target.name} -p {target.project})")


def schedule_all(fleet: Fleet, targets: dict[str, ScrapydTarget], store: LocalStore) -> None:
    """The first job of every shard; on a failure the ones scheduled are stopped
    (a fleet starts whole or not at all)."""
    for job in fleet.jobs:
        try:
            targets[job.target].schedule(fleet.spider, job.jobid, shard_arguments(fleet, job.index),
                                         job_settings(fleet))
        except TargetError as exc:
            for scheduled in fleet.jobs[: job.index - 1]:
                cancel_quietly(targets[scheduled.target], scheduled.jobid)
            fleet.state, fleet.ended = FAILED, _now()
            write_fleet(store, fleet)
            raise UsageError(f"cannot schedule shard {fleet.shard(job)}: {exc}") from None


def recorded_targets(fleet: Fleet) -> dict[str, ScrapydTarget]:
    """The fleet's targets at their recorded urls, with scrapy.cfg's
    credentials (they are not written in the store)."""
    configured = configured_targets()
    targets = {}
    for name, recorded in fleet.targets.items():
        section = configured.get(name, {})
        targets[name] = ScrapydTarget(name, recorded["url"], recorded["project"],
                                      target_auth(recorded["url"], section.get("username"), section.get("password")))
    return targets


def status_rows(fleet: Fleet, listings: dict[str, dict[str, str] | None], root: Path) -> list[list[str]]:
    """One row per shard: shard, target, job, state, rows done, exit, attempts."""
    rows = []
    for job in fleet.jobs:
        record = read_status(root, fleet.label(job))
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


def show_status(fleet: Fleet, targets: dict[str, ScrapydTarget], root: Path) -> int:
    listings: dict[str, dict[str, str] | None] = {}
    for name, answer in ask_all(list(targets.values()), lambda target: target.jobs()).items():
        if isinstance(answer, TargetError):
            logger.warning("%s", answer)
        listings[name] = None if isinstance(answer, TargetError) else answer
    print(f"Fleet {fleet.run} of {fleet.spider} in {root}: {fleet.state}, started {fleet.started}"
          f"{f', ended {fleet.ended}' if fleet.ended else ''}; targets "
          f"{', '.join(f'{name} ({t.url})' for name, t in targets.items())}")
    header = ["shard", "target", "job", "state", "rows done", "exit", "attempts"]
    rows = [header, *status_rows(fleet, listings, root)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cancel_fleet(fleet: Fleet, targets: dict[str, ScrapydTarget], store: LocalStore) -> int:
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
    fleet.state, fleet.ended = CANCELLED, _now()
    write_fleet(store, fleet)
    if silent:
        return fail(f"fleet {fleet.run} cancelled, but {', '.join(silent)} did not answer: a job still running "
                    "there keeps its shard locked until it ends (a node's death stops its jobs)", EXIT_INCOMPLETE)
    print(f"Fleet {fleet.run} cancelled: {stopped} jobs stopped (SIGTERM). The rows recorded so far stay; "
          "a new fleet or crawl on this store goes on from them.")
    return EXIT_OK
