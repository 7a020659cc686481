"""The watch: follows a fleet's jobs until every shard is done, schedules a
shard again when its job or node dies, and ends the fleet (merge, report, one
exit status)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from openimages_crawler.checkpoint import settle
from openimages_crawler.checkpoint.ledger import recorded_rows
from openimages_crawler.crawl.config import records_store, results_files
from openimages_crawler.exits import (
    EXIT_AFTER_SIGNAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    Exit,
    fail,
    results_unsent,
)
from openimages_crawler.fleet.decisions import (
    Freshness,
    Observation,
    Rotation,
    Verdict,
    decide,
    ending,
    stray_jobs,
)
from openimages_crawler.fleet.scrapyd import ABSENT, ScrapydTarget, TargetError, ask_all
from openimages_crawler.fleet.state import (
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    INCOMPLETE,
    SCHEDULED,
    Fleet,
    ShardJob,
    job_id,
    read_fleet,
    timestamp,
    watching,
    write_fleet,
)
from openimages_crawler.monitor import report
from openimages_crawler.monitor.dashboard import DashboardServer
from openimages_crawler.monitor.progress import Counts, ProgressDisplay, ProgressMeter
from openimages_crawler.monitor.status import (
    PartStatus,
    read_status,
    total_counts,
    total_hosts,
    total_stages,
)
from openimages_crawler.run.finish import finish
from openimages_crawler.store.base import Store
from openimages_crawler.store.lock import StoreLocked

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

POLL_S = 2.0  # between two looks at the targets and the records
RESCHEDULES = 4  # per shard and watch: a shard failing more often has a cause a new node will not fix


class Watch:
    """Follows a fleet until every shard is done: progress, rescheduling, the
    end (merge, report, one exit status)."""

    def __init__(self, fleet: Fleet, targets: dict[str, ScrapydTarget], store: Store,
                 settings: BaseSettings) -> None:
        self.fleet = fleet
        self.targets = targets
        self.store = store  # the fleet's record, the shards' records, the report
        self.local = records_store(settings)  # the results files (an object store's work folder)
        self.settings = settings
        self.min_free_bytes = settings.getint("OPENIMAGES_MIN_FREE_BYTES")
        self.files = results_files(settings)
        self.display = ProgressDisplay(str(settings["OPENIMAGES_PROGRESS"]).lower(),
                                       settings.getfloat("LOGSTATS_INTERVAL"))
        self.meter = ProgressMeter()
        self.rotation = Rotation(list(targets))
        self.freshness = Freshness()
        self.silent_since: dict[str, float] = {}
        self.records: dict[int, PartStatus] = {}  # the latest record of each shard's current job
        self.cancelled: set[str] = set()  # strays already stopped
        self.started = time.monotonic()
        self.dashboard = DashboardServer.from_settings(settings, store=store)
        self.stop = threading.Event()
        self.received: list[int] = []
        self.final = Counts(0.0)  # the fleet's figures at its end
        self.gave_up = False  # shards failed too often
        self.totals: dict[str, int] = {}  # the store's rows once settled
        for job in fleet.jobs:  # a watch re-attached to an incomplete fleet tries its failed shards again
            if job.state == FAILED:
                job.state = SCHEDULED
        self.limits = {job.index: job.attempts + RESCHEDULES for job in fleet.jobs}
        for job in fleet.jobs:  # shards done before a re-attach still count in the sums
            found = read_status(store, fleet.label(job)) if job.state == DONE else None
            if found is not None and found.job == job.jobid:
                self.records[job.index] = found

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self.on_signal) for signum in EXIT_AFTER_SIGNAL}
        try:
            with watching(self.store, self.fleet):
                if self.dashboard is not None:
                    return self.serve_and_watch(self.dashboard)
                while True:
                    status = self.tick()
                    if status is not None:
                        return status
                    if self.stop.wait(POLL_S):
                        return self.detach()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def serve_and_watch(self, dashboard: DashboardServer) -> int:
        """The same looks, on the reactor that serves the web view
        (``OPENIMAGES_DASHBOARD_PORT``): the sums of every node's jobs."""
        from twisted.internet import reactor, task

        dashboard.listen()
        ended: list[int | BaseException] = []

        def look() -> None:
            status = self.detach() if self.stop.is_set() else self.tick()
            if status is not None:
                ended.append(status)
                loop.stop()

        def failed(failure: Any) -> None:
            ended.append(failure.value)

        loop = task.LoopingCall(look)
        reactor.callWhenRunning(  # type: ignore[attr-defined]
            lambda: loop.start(POLL_S).addErrback(failed).addBoth(lambda _: reactor.stop()))  # type: ignore[attr-defined]
        try:
            reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
        finally:
            dashboard.stop()
        if isinstance(ended[0], BaseException):
            raise ended[0]
        return ended[0]

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
        with self.store.exclusive("fleet"):
            recorded = read_fleet(self.store)
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
        record = read_status(self.store, self.fleet.label(job))
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
        if self.dashboard is not None:
            self.dashboard.show_records(counts, self.meter, list(self.records.values()))
        return counts

    def stop_for_usage_error(self, job: ShardJob) -> int:
        """Every node would fail the same way: stop the others too."""
        for other in self.fleet.jobs:
            if other is not job and other.state == SCHEDULED:
                cancel_quietly(self.targets[other.target], other.jobid)
                other.state = CANCELLED
        job.state = FAILED
        self.fleet.state, self.fleet.ended = FAILED, timestamp()
        write_fleet(self.store, self.fleet)
        target = self.targets[job.target]
        record = read_status(self.store, self.fleet.label(job))
        why = f": {record.error}" if record is not None and record.error else ""
        return fail(f"shard {self.fleet.shard(job)} (job {job.jobid} on {target!r}) stopped with a usage error "
                    f"(exit 2){why}; every job was stopped (its crawl log: "
                    f"{target.log_url(self.fleet.spider, job.jobid)})", EXIT_USAGE)

    def finish(self) -> int:
        """Every shard done: one set of results files, one report, exit 0."""
        self.final, self.gave_up = self.show(final=True), False
        return finish(self, self.settings).said()

    def give_up(self) -> int:
        """Shards failed too often, the others are done: their rows are merged,
        the failed shards' unrecorded rows stay pending for the next watch."""
        self.final, self.gave_up = self.show(final=False), True
        return finish(self, self.settings).said()

    def settle(self) -> Exit | None:
        """Every shard's parts into the results files (their jobs merge their own;
        these are the parts of jobs that could not)."""
        try:
            settle.settle_results(self.store, self.local, self.files, 1, 1, whole=True,
                                  min_free_bytes=self.min_free_bytes)
        except (OSError, ValueError, StoreLocked) as exc:
            return results_unsent(f"{type(exc).__name__}: {exc}")
        self.totals = recorded_rows(self.files)
        return None

    def status(self) -> Exit:
        if not self.gave_up:
            return Exit(EXIT_OK)
        failed = [self.fleet.shard(job) for job in self.fleet.jobs if job.state == FAILED]
        return Exit(EXIT_INCOMPLETE, f"shard{'s' if len(failed) > 1 else ''} {', '.join(failed)} of fleet "
                    f"{self.fleet.run} did not finish in {RESCHEDULES + 1} jobs; their rows not recorded yet are "
                    "still pending: see the jobs' logs, fix the cause and run `scrapy fleet --watch` to try again")

    def report(self, ending: Exit) -> str | None:
        if ending.status != EXIT_OK or not self.settings.getbool("OPENIMAGES_REPORT"):
            return None
        return self.write_report(self.final, self.totals)

    def summarize(self, ending: Exit, page: str | None) -> None:
        if ending.status == EXIT_OK:
            final = self.final
            print(f"Fleet {self.fleet.run} finished: {self.fleet.shards} shards on {len(self.targets)} targets, "
                  f"{final.done:,} rows done ({final.ok:,} stored, {final.failed:,} failed) in "
                  f"{elapsed(self.fleet.started):.0f} s; the store holds "
                  f"{', '.join(f'{count:,} {kind}' for kind, count in self.totals.items())}: {self.store.uri}")

    def record(self, ending: Exit) -> None:
        """The fleet's state in its record, fleet.json."""
        if ending.status == EXIT_OK:
            self.fleet.state, self.fleet.ended = FINISHED, timestamp()
        else:
            self.fleet.state = INCOMPLETE
        write_fleet(self.store, self.fleet)

    def release(self) -> None:
        """Nothing: the watch's lock is held by ``watching`` around it."""

    def write_report(self, final: Counts, totals: dict[str, int]) -> str | None:
        records = list(self.records.values())
        seconds = elapsed(self.fleet.started)
        run = report.run_record(self.store.uri, started=self.fleet.started, seconds=seconds,
                                reason="finished", arguments=self.fleet.arguments, processes=self.fleet.shards,
                                settings=self.fleet.settings)
        return report.write(self.store, self.min_free_bytes, report.build(
            final=final, history=self.meter.history + [final], hosts=total_hosts(records),
            stages={**total_stages(records), "wall_s": seconds}, run=run, store_totals=totals))


def shard_arguments(fleet: Fleet, index: int) -> dict[str, str]:
    return {**fleet.arguments, "shard": f"{index}/{fleet.shards}"}


def job_settings(fleet: Fleet) -> dict[str, str]:
    """The user's settings; the fleet writes the one report (each job would
    overwrite it), and jobs serve no web view (two jobs on one node would
    want the same port)."""
    return {**fleet.settings, "OPENIMAGES_REPORT": "False", "OPENIMAGES_DASHBOARD_PORT": ""}


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
