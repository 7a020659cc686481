"""``scrapy resize``: resize a tree of images with the crawl's Pillow code, on
every core, with the crawl's progress display.

Parity with the downsampled-Open-Images resizer's options, as long options
where its short ones (-s, -a, -l) would clash with Scrapy's global options.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from ..imaging import OUTPUT_FORMATS, RESAMPLE_FILTERS, RESIZE_MODES, ResizeSpec
from ..progress import Counts, ProgressDisplay, ProgressMeter
from ..resizer import (
    JobResult,
    ResizeJob,
    count_images,
    find_jobs,
    init_worker,
    run_in_worker,
)
from ..storage import STAGING_DIR, remove_dead_staging

if TYPE_CHECKING:
    from _csv import _writer as CsvWriter

logger = logging.getLogger(__name__)

_JOBS_PER_WORKER = 4  # jobs queued per process: enough to keep it busy, few in memory


class Command(ScrapyCommand):
    requires_project = False
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return "-i IN_DIR -o OUT_DIR --size SIZE [options]"

    def short_desc(self) -> str:
        return "Resize a tree of images (e.g. an extracted CVDF tarball or a store's originals)"

    def long_desc(self) -> str:
        return (
            "Resize every image under IN_DIR into OUT_DIR, mirroring the folders, with the "
            "crawl's resize modes and decoder checks. Existing outputs are skipped, outputs are "
            "written atomically, unreadable files are reported (see --log) without stopping."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-i", "--input", dest="in_dir", required=True, help="folder of images")
        parser.add_argument("-o", "--output", dest="out_dir", required=True, help="folder for the outputs")
        parser.add_argument("--size", type=int, required=True, help="box size in pixels")
        parser.add_argument("--mode", default="ShrinkToFit", choices=RESIZE_MODES)
        parser.add_argument("--ext", default="jpg", choices=tuple(OUTPUT_FORMATS))
        parser.add_argument("--algorithm", default="lanczos", choices=tuple(RESAMPLE_FILTERS))
        parser.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (default 90)")
        parser.add_argument("-j", "--processes", type=int, default=0,
                            help="worker processes (default: one per CPU)")
        parser.add_argument("--log", dest="failure_log",
                            help="CSV of the files that could not be resized (path, reason, details)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        in_dir, out_dir = Path(opts.in_dir), Path(opts.out_dir)
        if not in_dir.is_dir():
            raise UsageError(f"-i {in_dir}: not a folder")
        if out_dir.resolve() == in_dir.resolve():
            raise UsageError("-o must be another folder than -i")
        try:
            spec = ResizeSpec(mode=opts.mode, size=opts.size, resample=opts.algorithm, format=opts.ext,
                              quality=opts.quality)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        processes = opts.processes or os.cpu_count() or 1
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(out_dir)  # left by a killed run
        display = ProgressDisplay(
            str(self.settings.get("OPENIMAGES_PROGRESS", "auto")).lower(),
            self.settings.getfloat("LOGSTATS_INTERVAL", 60.0),
            unit="files",
        )
        run = TreeResize(in_dir, out_dir, spec, processes, self.settings.getint("OPENIMAGES_MAX_PIXELS", 178956970),
                         display, Path(opts.failure_log) if opts.failure_log else None)
        run.start()
        self.exitcode = 0


class TreeResize:
    """One run of the command: feeds the pool, counts, shows progress."""

    def __init__(self, in_dir: Path, out_dir: Path, spec: ResizeSpec, processes: int, max_pixels: int,
                 display: ProgressDisplay, failure_log: Path | None) -> None:
        self.in_dir, self.out_dir, self.spec = in_dir, out_dir, spec
        self.processes, self.max_pixels = processes, max_pixels
        self.display = display
        self.failure_log = failure_log
        self.meter = ProgressMeter()
        self.started = time.monotonic()
        self.total: int | None = None
        self.tally: Counter[str] = Counter()
        self.bytes_in = self.bytes_out = 0
        self.others = 0  # files that are not images, left alone

    def start(self) -> None:
        threading.Thread(target=self._count, daemon=True).start()
        logger.info("Resizing %s into %s: %s %d px, %s, %s, %d processes", self.in_dir, self.out_dir,
                    self.spec.mode, self.spec.size, self.spec.format, self.spec.resample, self.processes)
        with ExitStack() as stack:
            writer = None
            if self.failure_log is not None:
                self.failure_log.parent.mkdir(parents=True, exist_ok=True)
                writer = csv.writer(stack.enter_context(open(self.failure_log, "w", newline="", encoding="utf-8")))
                writer.writerow(["Path", "FailureReason", "FailureDetails"])
            pool = stack.enter_context(ProcessPoolExecutor(
                self.processes, initializer=init_worker, initargs=(self.out_dir, self.spec, self.max_pixels)
            ))
            pending: set[Future[JobResult]] = set()
            last_show = 0.0
            for job in find_jobs(self.in_dir, self.out_dir, self.spec.format):
                if not isinstance(job, ResizeJob):
                    self.others += 1
                    continue
                pending.add(pool.submit(run_in_worker, job))
                while len(pending) >= self.processes * _JOBS_PER_WORKER:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    self._record(finished, writer)
                if time.monotonic() - last_show >= 1.0:
                    last_show = time.monotonic()
                    self._show(len(pending))
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                self._record(finished, writer)
                self._show(len(pending))
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

    def _count(self) -> None:
        self.total = count_images(self.in_dir, self.out_dir)

    def _record(self, finished: set[Future[JobResult]], writer: CsvWriter | None) -> None:
        for future in finished:
            result = future.result()
            self.tally[result.status] += 1
            self.bytes_in += result.bytes_in
            self.bytes_out += result.bytes_out
            if result.status not in ("ok", "skipped"):
                logger.warning("Cannot resize %s: %s: %s", result.source, result.status, result.details)
                if writer is not None:
                    writer.writerow([result.source, result.status, result.details])

    def _show(self, working: int = 0, final: bool = False) -> None:
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
            working=working,
            total=self.total,
        ))
        self.display.show(self.meter, final=final)
