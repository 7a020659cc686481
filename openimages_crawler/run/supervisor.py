"""The multi-process crawl, as the user's ``scrapy crawl`` runs it.

Takes the store lock for the user's shard, starts the crawl processes
(``crawl.processes``), shows their summed progress (read from the records
they keep in the store), passes a stop signal on, and when they have ended
merges their results parts, writes one report and returns one exit status.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import replace
from typing import Any

from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings

from openimages_crawler.checkpoint import settle
from openimages_crawler.checkpoint.ledger import recorded_rows
from openimages_crawler.crawl.config import CrawlConfig, open_crawl_store, records_store, results_files
from openimages_crawler.crawl.processes import (
    Child,
    ProcessPlan,
    child_command,
    command_line_settings,
    join_relays,
    signal_children,
    start_children,
)
from openimages_crawler.crawl.spider import scrapy_arguments
from openimages_crawler.dataset.selection import Shard
from openimages_crawler.exits import (
    EXIT_AFTER_SIGNAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    Exit,
    lock_lost,
    results_unsent,
)
from openimages_crawler.job.arguments import CrawlArguments
from openimages_crawler.monitor import report
from openimages_crawler.monitor.dashboard import DashboardServer
from openimages_crawler.monitor.extensions import STATUS_INTERVAL_S, run_settings
from openimages_crawler.monitor.progress import Counts, ProgressDisplay, ProgressMeter
from openimages_crawler.monitor.status import (
    PartStatus,
    RecordSender,
    leading,
    read_status,
    set_counts,
    total_counts,
    total_hosts,
    total_stages,
)
from openimages_crawler.run.finish import Extras, finish, summarize_crawl
from openimages_crawler.store.layout import part_label
from openimages_crawler.store.lock import StoreLocked

logger = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, settings: BaseSettings, spider: str, given: dict[str, str], plan: ProcessPlan) -> None:
        self.settings = settings
        self.spider = spider
        self.given = dict(given)
        self.plan = plan
        self.config = config = CrawlConfig.from_settings(settings)
        self.store = store = open_crawl_store(settings)  # the images, the report
        self.local_store = records_store(settings)  # results, parts, locks, the processes' records
        self.shard = CrawlArguments.from_given(scrapy_arguments(dict(given))[1]).shard_numbers
        self.files = results_files(settings)
        self.patterns = self.files["success"] + self.files["failure"]  # what is synced with an object store (store.sync)
        self.display = ProgressDisplay(str(settings["OPENIMAGES_PROGRESS"]).lower(),
                                       settings.getfloat("LOGSTATS_INTERVAL"))
        self.meter = ProgressMeter()
        self.children: list[Child] = []
        self.received: list[int] = []
        self.started = self.recorded = time.monotonic()
        self.dashboard = DashboardServer.from_settings(settings, config, store)
        # The run's own record, as a single process of this shard keeps it (for a fleet's view).
        self.part_status = PartStatus(part=part_label(*self.shard), job=str(given.get("_job", "")),
                                      arguments=self.given)
        self.sender = RecordSender(store)  # the run's record, from a thread (a bucket may be slow)
        self.lost_lock = ""  # why the bucket's lease of the shard was lost, if it was
        self.final: Counts | None = None  # the run's figures, once its processes have ended
        self.unread: Exit | None = None  # the store's results could not be read: no process started
        self.settled = False  # the processes' parts are merged into the results
        self.previous: dict[int, Any] = {}  # the signal handlers the run replaced

    def commands(self) -> list[tuple[Shard, list[str]]]:
        """Each process's share and command line: shard K of N becomes shares
        K, K+N, ... of N×P (the same rows, hashed finer, taken after the
        run's offset and limit)."""
        index, count = self.shard
        processes = self.plan.count
        base = command_line_settings(self.settings)
        return [(Shard(index + count * number, count * processes),
                 child_command(self.spider, self.given, {**base, **extra}))
                for number, extra in enumerate(self.plan.settings)]

    def run(self, extras: Extras) -> Exit:
        """Start the processes, follow them to their end, and end the run (``run.finish``)."""
        if self.plan.note:
            logger.warning(self.plan.note)
        self.lock = self.store.run_lock(self.local_store.root, *self.shard, on_lost=self.lose_lock)
        try:
            self.lock.acquire()
        except (StoreLocked, OSError) as exc:
            return Exit(EXIT_USAGE, str(exc))
        if self.dashboard is not None:
            try:
                self.dashboard.listen()
            except UsageError as exc:  # a busy port: before any process starts
                self.lock.release()
                return Exit(EXIT_USAGE, str(exc))
        self.previous = {signum: signal.signal(signum, self.on_signal) for signum in EXIT_AFTER_SIGNAL}
        try:
            self.unread = self.pull()
            if self.unread is None:
                logger.info("Crawling in %d processes", self.plan.count)
                self.children = start_children(self.commands(), self.lock.inheritable(), self.display.write)
                self.watch()
                self.final = self.sample(final=True)
        except BaseException:
            self.release()
            raise
        return finish(self, self.settings, Extras(True, extras.formats, extras.subsets) if self.unread is None
                      else Extras())

    def settle(self) -> Exit | None:
        """The processes' results parts into the results files; an exit status
        when the run could not start or that fails."""
        if self.unread is not None:
            return self.unread
        if self.lost_lock:  # another run may own this shard's parts now
            return lock_lost(self.lost_lock)
        try:
            settle.settle_results(self.store, self.local_store, self.files, *self.shard,
                                  min_free_bytes=self.config.min_free_bytes)
        except (OSError, ValueError, StoreLocked) as exc:  # a full disk, a file damaged by hand, a bucket gone
            logger.debug("Cannot settle the results", exc_info=exc)
            return results_unsent(f"{type(exc).__name__}: {exc}")
        self.settled = True
        return None

    def report(self, ending: Exit) -> str | None:
        if not (self.settled and self.settings.getbool("OPENIMAGES_REPORT")):
            return None
        assert self.final is not None
        return self.write_report(self.final)

    def summarize(self, ending: Exit, page: str | None) -> None:
        if self.final is not None:
            summarize_crawl(self.settings, self.final, ending, page,
                            self.dashboard.address if self.dashboard else None)

    def record(self, ending: Exit) -> None:
        """The run's exit in its record (where a fleet reads it)."""
        if self.final is not None:
            self.part_status.exit, self.part_status.error = ending.status, ending.message
            self.write_record(final=True)

    def release(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.dashboard is not None:
            self.dashboard.stop()
        self.lock.release()

    def lose_lock(self, message: str) -> None:
        """The bucket's lease of this shard was lost (from its renewing thread): the processes stop."""
        self.lost_lock = message
        signal_children(self.children, signal.SIGTERM)

    def pull(self) -> Exit | None:
        """The store's results into the records folder, before the processes read them."""
        try:
            settle.pull_results(self.store, self.local_store, self.patterns)
        except (OSError, StoreLocked) as exc:
            return Exit(EXIT_USAGE, f"cannot read the results from {self.store.uri}: {exc}")
        return None

    def watch(self) -> None:
        """Sample every second on the reactor (which serves the web view)
        until every process has ended (noticed within a tenth of a second)."""
        from twisted.internet import reactor, task

        sampled = [0.0]

        def poll() -> None:
            if all(child.process.poll() is not None for child in self.children):
                loop.stop()
                reactor.stop()  # type: ignore[attr-defined]
                return
            if time.monotonic() - sampled[0] >= 1.0:
                sampled[0] = time.monotonic()
                self.tick()

        loop = task.LoopingCall(poll)
        reactor.callWhenRunning(loop.start, 0.1)  # type: ignore[attr-defined]
        reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
        join_relays(self.children)

    def on_signal(self, signum: int, frame: Any) -> None:
        """Pass a stop on to every process (a second Ctrl-C forces theirs too)."""
        self.received.append(signum)
        signal_children(self.children, signum)

    def records(self) -> list[PartStatus]:
        """The records the current processes keep in the store."""
        found = (read_status(self.local_store, child.part) for child in self.children)
        return [record for record, child in zip(found, self.children, strict=True)
                if record is not None and record.pid == child.process.pid]

    def sample(self, final: bool = False) -> Counts:
        records = self.records()
        counts = total_counts(records, time.monotonic() - self.started)
        if final and all(child.process.returncode == EXIT_OK for child in self.children):
            counts = replace(counts, total=counts.done)  # the estimate gives way to what was done
        self.meter.add(counts)
        self.display.show(self.meter, final=final)
        set_counts(self.part_status, counts, leading(total_hosts(records), self.config.status_hosts))
        self.part_status.stages = total_stages(records)
        self.part_status.state = ",".join(sorted({r.state for r in records})) if final else "running"
        if final or time.monotonic() - self.recorded >= STATUS_INTERVAL_S:
            self.write_record()
        if self.dashboard is not None:
            self.dashboard.show_records(counts, self.meter, records)
        return counts

    def write_record(self, final: bool = False) -> None:
        """The run's record, in the store (where a fleet reads it)."""
        self.recorded = time.monotonic()
        self.sender.send(self.part_status)
        if final:
            self.sender.flush()

    def tick(self) -> None:
        self.sample()
        if any(child.process.returncode == EXIT_USAGE for child in self.children):
            signal_children(self.children, signal.SIGTERM)  # the others would fail the same way

    def write_report(self, final: Counts) -> str | None:
        records = self.records()
        run = report.run_record(self.store.uri, started=self.part_status.started, seconds=final.time,
                                reason=self.part_status.state or "not started",
                                arguments=self.given, processes=self.plan.count,
                                settings=run_settings(self.settings, self.config))
        return report.write(self.store, self.config.min_free_bytes, report.build(
            final=final, history=self.meter.history + [final], hosts=total_hosts(records),
            stages={**total_stages(records), "wall_s": final.time}, run=run,
            store_totals=recorded_rows(self.files)))

    def status(self) -> Exit:
        final = self.final
        assert final is not None
        pending = ""
        if final.total is not None and final.total > final.done:
            pending = f" (about {final.total - final.done:,} rows)"
        if self.received:
            name = signal.Signals(self.received[0]).name
            return Exit(EXIT_AFTER_SIGNAL[self.received[0]], f"the crawl was stopped by {name}: the rows not "
                        f"recorded yet{pending} are still pending; run the same command again to finish")
        ended = [child for child in self.children if child.process.returncode != EXIT_OK]
        if not ended:
            return Exit(EXIT_OK)
        usage = next((child for child in ended if child.process.returncode == EXIT_USAGE), None)
        if usage is not None:
            return Exit(EXIT_USAGE, usage.error or f"process {usage.number} could not start")
        child = ended[0]
        code = child.process.returncode
        what = child.error or (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
        return Exit(EXIT_INCOMPLETE, f"process {child.number} of {len(self.children)}: {what}; its unfinished "
                    f"rows{pending} are still pending: run the same command again to finish")

