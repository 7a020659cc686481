"""``scrapy resize``'s run (the command parses its options): a tree of images
resized on every core by ``imaging.tree`` workers in a process pool, a few jobs
per process at a time, with the crawl's progress display."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from openimages_crawler.imaging.tree import (
    JobResult,
    ResizeJob,
    ResizeOptions,
    count_images,
    find_jobs,
    init_worker,
    run_in_worker,
)
from openimages_crawler.monitor.progress import Counts, ProgressDisplay, ProgressMeter
from openimages_crawler.reasons import CORRUPT, IO_ERROR
from openimages_crawler.store.layout import STAGING_DIR
from openimages_crawler.store.local import remove_dead_staging

if TYPE_CHECKING:
    from _csv import _writer as CsvWriter

logger = logging.getLogger(__name__)

_JOBS_PER_WORKER = 4  # jobs queued per process: enough to keep it busy, few in memory


class TreeResize:
    """One run of the command: feeds the pool a few jobs per process, counts,
    shows progress, and survives a worker that dies (out of memory, say)."""

    def __init__(self, in_dir: Path, out_dir: Path, options: ResizeOptions, processes: int,
                 display: ProgressDisplay, failure_log: Path | None) -> None:
        self.in_dir, self.out_dir, self.options = in_dir, out_dir, options
        self.processes = processes
        self.display = display
        self.failure_log = failure_log
        self.writer: CsvWriter | None = None
        self.meter = ProgressMeter()
        self.started = time.monotonic()
        self.total: int | None = None
        self.tally: Counter[str] = Counter()
        self.bytes_in = self.bytes_out = 0
        self.others = 0  # files that are not images, left alone
        self.pool: ProcessPoolExecutor | None = None
        self.pending: dict[Future[JobResult], tuple[ResizeJob, ProcessPoolExecutor]] = {}

    def start(self) -> None:
        spec = self.options.spec
        logger.info("Resizing %s into %s: %s %d px, %s, %s, %d processes", self.in_dir, self.out_dir,
                    spec.mode, spec.size, spec.format, spec.resample, self.processes)
        with ExitStack() as stack:
            if self.failure_log is not None:
                self.failure_log.parent.mkdir(parents=True, exist_ok=True)
                self.writer = csv.writer(stack.enter_context(open(self.failure_log, "w", newline="", encoding="utf-8")))
                self.writer.writerow(["Path", "FailureReason", "FailureDetails"])
            stack.callback(self._stop_pool)
            self.pool = self._new_pool()
            # Counting starts once the workers exist (no fork while it runs).
            threading.Thread(target=self._count, daemon=True).start()
            last_show = 0.0
            for job in find_jobs(self.in_dir, self.out_dir, spec.format, onerror=self._unreadable):
                if not isinstance(job, ResizeJob):
                    self.others += 1
                    continue
                self._submit(job)
                while len(self.pending) >= self.processes * _JOBS_PER_WORKER:
                    self._collect(timeout=None)
                if time.monotonic() - last_show >= 1.0:
                    last_show = time.monotonic()
                    self._show()
            while self.pending:
                self._collect(timeout=1.0)
        remove_dead_staging(self.out_dir)  # the workers' staging folders
        try:
            (self.out_dir / STAGING_DIR).rmdir()
        except OSError:
            pass
        self.total = self.tally.total()
        self._show(final=True)
        failed = self.tally.total() - self.tally["ok"] - self.tally["skipped"]
        logger.info(
            "Resized %d, skipped %d (already there), failed %d, other files left alone %d%s",
            self.tally["ok"], self.tally["skipped"], failed, self.others,
            f"; failures listed in {self.failure_log}" if failed and self.failure_log else "",
        )

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=init_worker, initargs=(self.out_dir, self.options))

    def _submit(self, job: ResizeJob) -> None:
        assert self.pool is not None
        try:
            future = self.pool.submit(run_in_worker, job)
        except BrokenProcessPool:  # a worker died since the last collect
            self._replace_pool()
            future = self.pool.submit(run_in_worker, job)
        self.pending[future] = (job, self.pool)

    def _replace_pool(self) -> None:
        assert self.pool is not None
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def _stop_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _count(self) -> None:
        self.total = count_images(self.in_dir, self.out_dir)

    def _collect(self, timeout: float | None) -> None:
        finished, _ = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        replace = False
        for future in finished:
            job, pool = self.pending.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                result = lost_job_result(job)
                replace = replace or pool is self.pool
            self._record(result)
        if replace:  # the jobs in flight fail; the others go on in a new pool
            self._replace_pool()
        self._show()

    def _unreadable(self, error: OSError) -> None:
        self._record(JobResult(str(error.filename or error), IO_ERROR, f"cannot list the folder: {error}"))

    def _record(self, result: JobResult) -> None:
        self.tally[result.status] += 1
        self.bytes_in += result.bytes_in
        self.bytes_out += result.bytes_out
        if result.status not in ("ok", "skipped"):
            logger.warning("Cannot resize %s: %s: %s", result.source, result.status, result.details)
            if self.writer is not None:
                self.writer.writerow([result.source, result.status, result.details])

    def _show(self, final: bool = False) -> None:
        failures = {k: v for k, v in self.tally.items() if k not in ("ok", "skipped")}
        self.meter.add(Counts(
            time=time.monotonic() - self.started,
            done=self.tally.total(),
            ok=self.tally["ok"],
            failed=sum(failures.values()),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            failures=failures,
            downloading=None,
            working=len(self.pending),
            total=None if self.total is None else max(self.total, self.tally.total()),
        ))
        self.display.show(self.meter, final=final)


def lost_job_result(job: ResizeJob) -> JobResult:
    """A job whose result was lost with its pool: done when its output is there
    (written whole, then renamed, before the pool broke), else failed."""
    try:
        written = job.target.stat().st_size
    except OSError:
        written = 0
    if written:
        return JobResult(str(job.source), "ok", bytes_out=written)
    return JobResult(str(job.source), CORRUPT, "a worker process died while this file was being resized (out of memory?)")
